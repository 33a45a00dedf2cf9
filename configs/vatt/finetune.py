r"""VATT video fine-tuning for action recognition (VATT appendix B.5), on the shared classification path.

Full run (a VATT pre-training checkpoint; Kinetics written as records with `python -m vlm.data.write`):

  python -m vlm.main --config=configs/vatt/finetune.py:dataset=k400,variant=BBS --workdir=gs://BUCKET/vatt_k400 \
    --config.init.path=gs://BUCKET/vatt_bbs --distributed

Tiny run on one CPU (built-in dataset, 12 shape x direction classes; init from the tiny pre-training run if
given with --config.init.path=/tmp/vlm_vatt_tiny):

  python -m vlm.main --config=configs/vatt/finetune.py:tiny --workdir=/tmp/vatt_finetune_tiny

Arguments: dataset 'k400' | 'k600' | 'k700' | 'mit' (Moments in Time, 339 classes); variant 'BBS' | 'MBS' |
'LBS' | 'MA' (the pre-training variant; only its video tower is used); tiny; batch (64); steps (100k).

B.5 settings kept: SGD momentum 0.9, learning rate 0.005, 2.5k warmup steps, half-period cosine to 0, batch 64,
100k steps, label smoothing 0.1; 32 frames with temporal stride 2 at 25 fps, 320 x 320 crops with the
pre-training augmentation; the 8+14+14 positional buckets resampled to 8+20+20 when the checkpoint is loaded,
then fine-tuned; no DropToken; evaluation on 4 uniformly spaced clips x 3 crops with logits averaged.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vlm import config_lib

NUM_CLASSES = {"k400": 400, "k600": 600, "k700": 700, "mit": 339}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, dataset="k400", variant="BBS", tiny=False, batch=64, steps=100_000)
  if a.dataset not in NUM_CLASSES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(NUM_CLASSES)}.")
  classes = 12 if a.tiny else NUM_CLASSES[a.dataset]
  frames, crop = (32, 320) if not a.tiny else (8, 32)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = a.steps if not a.tiny else 1000
  c.log_every_steps = 100 if not a.tiny else 50
  c.checkpoint_every_steps = 5000 if not a.tiny else 300
  c.keep_checkpoints = 3
  # config.init.path: a VATT pre-training workdir. Its video tower ('video', and the shared 'backbone' of the
  # modality-agnostic model) becomes the classifier's backbone; the head starts fresh (zeros). Positional tables
  # with another bucket count are resampled (vlm/models/vatt.py `load`).
  c.init = config_lib.init_block()
  c.init.assignment_map = ((r"backbone/(.*)", r"\1"), (r"head_.*", None))

  c.input = ml_collections.ConfigDict()
  c.input.data = (dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord") if not a.tiny
                  else dict(name="builtin", split="train",
                            options=dict(num_train=2048, num_test=512, num_images=64, num_frames=16,
                                         sample_rate=16_000)))
  c.input.batch_size = a.batch if not a.tiny else 32
  c.input.shuffle_buffer = 4096 if not a.tiny else 512
  c.input.num_frames = frames
  c.input.crop_size = crop
  c.input.host_split = "examples" if a.tiny else "files"
  label = f"label(num_classes={classes}, dataset='{a.dataset if not a.tiny else 'videos'}')"
  sampling = f"sample_clip({frames}, stride=2, fps=25.0)" if not a.tiny else f"sample_clip({frames})"
  augment = (f"random_resized_crop({crop}, area=(0.08, 1.0), aspect=(0.5, 2.0))|flip()|color_jitter()"
             if not a.tiny else f"decode()|resize({crop})")  # tiny: whole 64x64 frames resized (see tubevit)
  c.input.pp = f"{sampling}|{augment}|normalize(-1, 1)|{label}|keep('video', 'label')"

  c.model = ml_collections.ConfigDict()
  c.model.name = "vatt"
  c.model.variant = a.variant
  c.model.tiny = a.tiny
  c.model.video_patch_size = (4, 16, 16) if not a.tiny else (2, 8, 8)
  # 8+20+20 buckets at 320 (B.5); a pre-training checkpoint's 8+14+14 tables are resampled when loaded.
  c.model.video_pos_buckets = (frames // 4, crop // 16, crop // 16) if not a.tiny else (4, 4, 4)
  c.model.droptoken_rate = 0.0
  c.model.dropout_rate = 0.1 if not a.tiny else 0.0
  c.model.attention_dropout_rate = 0.1 if not a.tiny else 0.0
  c.model.dtype = "float32"

  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.heads = {"videos" if a.tiny else a.dataset: classes}
  c.task.label_smoothing = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"
  c.optim.lr = 0.005 if not a.tiny else 0.05
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.0
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=2500 if not a.tiny else 100, end_lr=0.0, period="half")

  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  c.sharding = "dp"
  c.sharding_rules = None

  c.evals = ml_collections.ConfigDict()
  clips, crops = (4, 3) if not a.tiny else (2, 1)
  view = f"three_crop({crop})" if not a.tiny else f"center_crop({crop}, resize_smallest={crop})"
  eval_sampling = (f"sample_multiclip({clips}, {frames}, stride=2, fps=25.0)" if not a.tiny
                   else f"sample_multiclip({clips}, {frames})")
  c.evals.classification = dict(
      type="classification", every_steps=None if a.tiny else 10_000, shuffle_frames=a.tiny,
      input=dict(data=dict(split="validation" if not a.tiny else "test"), batch_size=64 if not a.tiny else 64,
                 num_clips=clips, num_crops=crops,
                 pp=f"{eval_sampling}|{view}|normalize(-1, 1)|{label}|keep('video', 'label')"))
  # What the user set in the config arg wins over the tiny defaults above (e.g. `tiny,steps=500000`).
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  return c
