r"""VATT video fine-tuning for action recognition (VATT appendix B.5), on the shared classification path.

Full run (a VATT pre-training checkpoint; Kinetics written as records with `python -m vlm.data.write`):

  python -m vlm.main --config=configs/vatt/finetune.py:dataset=k400,variant=BBS --workdir=gs://BUCKET/vatt_k400 \
    --config.init.path=gs://BUCKET/vatt_bbs --distributed

Tiny run on one CPU (built-in dataset, 12 shape x direction classes; init from the tiny pre-training run if
given with --config.init.path=/tmp/vlm_vatt_tiny):

  python -m vlm.main --config=configs/vatt/finetune.py:tiny --workdir=/tmp/vatt_finetune_tiny

Arguments: dataset 'k400' | 'k600' | 'k700' | 'mit' (Moments in Time, 339 classes); variant 'BBS' | 'MBS' |
'LBS' | 'MA' (the pre-training variant; only its video tower is used); tiny (the built-in dataset and the
variant's tiny form; explicit steps / batch kept); batch (64); steps (100k).

B.5 settings kept: SGD momentum 0.9, learning rate 0.005, 2.5k warmup steps, half-period cosine to 0, batch 64,
100k steps, label smoothing 0.1; 32 frames with temporal stride 2 at 25 fps, 320 x 320 crops with the
pre-training augmentation; the 8+14+14 positional buckets resampled to 8+20+20 when the checkpoint is loaded,
then fine-tuned; no DropToken; evaluation on 4 uniformly spaced clips x 3 crops with logits averaged.
"""
from __future__ import annotations

import ml_collections

from vlm import config_lib

NUM_CLASSES = {"k400": 400, "k600": 600, "k700": 700, "mit": 339}


def _label(classes: int, dataset: str) -> str:
  return f"label(num_classes={classes}, dataset='{dataset}')"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, dataset="k400", variant="BBS", tiny=False, batch=64, steps=100_000)
  if a.dataset not in NUM_CLASSES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(NUM_CLASSES)}.")
  classes, frames, crop = NUM_CLASSES[a.dataset], 32, 320
  c = config_lib.experiment(total_steps=a.steps)
  # config.init.path: a VATT pre-training workdir. Its video tower ('video', and the shared 'backbone' of the
  # modality-agnostic model) becomes the classifier's backbone; the head starts fresh (zeros). Positional tables
  # with another bucket count are resampled (vlm/models/vatt.py `load`).
  c.init.assignment_map = ((r"backbone/(.*)", r"\1"), (r"head_.*", None))

  # --- Input (B.5): 32 frames with temporal stride 2 at 25 fps, 320 crops with the pre-training augmentation.
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord")
  c.input.batch_size = a.batch
  c.input.shuffle_buffer = 4096
  c.input.num_frames = frames
  c.input.crop_size = crop
  c.input.host_split = "files"
  c.input.pp = (f"sample_clip({frames}, stride=2, fps=25.0)"
                f"|random_resized_crop({crop}, area=(0.08, 1.0), aspect=(0.5, 2.0))|flip()|color_jitter()"
                f"|normalize(-1, 1)|{_label(classes, a.dataset)}|keep('video', 'label')")

  # --- Model: the pre-training variant's video tower (fields of vlm.models.vatt.VideoBackbone).
  c.model = ml_collections.ConfigDict()
  c.model.name = "vatt"
  c.model.variant = a.variant
  c.model.video_patch_size = (4, 16, 16)
  # 8+20+20 buckets at 320 (B.5); a pre-training checkpoint's 8+14+14 tables are resampled when loaded.
  c.model.video_pos_buckets = (frames // 4, crop // 16, crop // 16)
  c.model.droptoken_rate = 0.0  # no DropToken when fine-tuning
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  c.model.dtype = "float32"

  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.heads = {a.dataset: classes}
  c.task.label_smoothing = 0.1

  # --- Optimisation (B.5): SGD momentum 0.9, lr 0.005, 2.5k warmup steps, half-period cosine to 0.
  c.optim = config_lib.optimizer("sgd", 0.005, momentum=0.9, warmup_steps=2500, end_lr=0.0,
                                 schedule_options=dict(period="half"))
  config_lib.parallelism(c)

  # --- Evaluation: 4 uniformly spaced clips x 3 crops, logits averaged.
  c.evals = ml_collections.ConfigDict()
  c.evals.classification = dict(
      type="classification", every_steps=10_000, shuffle_frames=False,
      input=dict(data=dict(split="validation"), batch_size=64, num_clips=4, num_crops=3,
                 pp=(f"sample_multiclip(4, {frames}, stride=2, fps=25.0)|three_crop({crop})|normalize(-1, 1)"
                     f"|{_label(classes, a.dataset)}|keep('video', 'label')")))

  if a.tiny:  # the built-in dataset's 12 shape x direction classes, from the tiny pre-training run if given
    classes, frames, crop = 12, 8, 32
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 1000, 50, 300
    c.input.data = dict(name="builtin", split="train",
                        options=dict(num_train=2048, num_test=512, num_images=64, num_frames=16, sample_rate=16_000))
    c.input.batch_size, c.input.shuffle_buffer, c.input.host_split = 32, 512, "examples"
    c.input.num_frames, c.input.crop_size = frames, crop
    # Whole 64x64 frames resized (a crop would cut the moving object out; see configs/tubevit).
    c.input.pp = (f"sample_clip({frames})|decode()|resize({crop})|normalize(-1, 1)|{_label(classes, 'videos')}"
                  "|keep('video', 'label')")
    c.model.variant = "MA-tiny" if a.variant.startswith("MA") else "tiny"
    c.model.video_patch_size, c.model.video_pos_buckets = (2, 8, 8), (4, 4, 4)
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.task.heads = {"videos": classes}
    c.optim.lr, c.optim.schedule.warmup_steps = 0.05, 100
    # 2 clips x 1 centre crop of the whole frame, and the shuffled-frame probe (does the model read motion?).
    c.evals.classification.update(every_steps=None, shuffle_frames=True)
    c.evals.classification.input.update(
        data=dict(split="test"), num_clips=2, num_crops=1,
        pp=(f"sample_multiclip(2, {frames})|center_crop({crop}, resize_smallest={crop})|normalize(-1, 1)"
            f"|{_label(classes, 'videos')}|keep('video', 'label')"))

  # What the user set in the config arg wins over the tiny values above (e.g. `tiny,steps=500000`).
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  return c
