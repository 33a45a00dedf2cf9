r"""TubeViT fine-tuned on Charades (multi-label) or Something-Something v2 from the K600 + ImageNet model (TubeViT
supplement section 1 and table 1; Charades' interpolated tubes: section 2).

  python -m vlm.main --config=configs/tubevit/finetune.py:dataset=charades,size=B --workdir=gs://BUCKET/tv_charades \
    --config.init.path=gs://BUCKET/tubevit_b \
    --config.input.data.files='gs://BUCKET/charades/train-*.tfrecord' --distributed

Tiny run on one CPU: the tiny joint run's backbone fine-tuned on the built-in dataset's videos (12 classes):

  python -m vlm.main --config=configs/tubevit/kinetics.py:tiny --workdir=/tmp/tubevit_tiny
  python -m vlm.main --config=configs/tubevit/finetune.py:tiny --workdir=/tmp/tubevit_ft_tiny \
    --config.init.path=/tmp/tubevit_tiny

`init.path` is the joint K600 + ImageNet run of configs/tubevit/kinetics.py: its backbone is loaded, the new
dataset gets a fresh head (`config.init.assignment_map` keeps every `head_*` fresh). Arguments (`FILE:ARG`):
dataset ('charades' | 'ssv2'); size ('B' | 'L' | 'H'); batch; steps; frames; tiny (the model, data and
evaluation of configs/tubevit/kinetics.py:tiny on its videos alone; explicit batch, steps and frames kept).

Table 1 settings:
  charades  Adam, batch 64, lr 1e-3, cosine after 10k warmup steps, 300k steps, 128 frames at 6 fps, RandAugment
            2 x 10, dropout 0.2, label smoothing 0.1, no mixup; 157 classes, multi-label (sigmoid loss, mAP as in
            table 4); tubes interpolated to 1x16x16 / 16x16x16 / 32x8x8 / 4x32x32 (section 2, preset 'charades').
  ssv2      Adam, batch 256, lr 2e-5, 32 frames at 24 fps, RandAugment 2 x 10, mixup 0.3 (read as Beta(0.3, 0.3)),
            dropout 0.3, label smoothing 0.3; 174 classes; table 3's tubes. No horizontal flips: SSv2's labels name
            directions ("pushing something from left to right"), a choice of ours the paper does not state.
  Weight decay 1e-3 for B, 1e-5 for L and H (table 1, all datasets).
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

DATASETS = {
    # classes, frames, fps, batch, lr, dropout, smoothing, mixup alpha, tubes
    "charades": dict(classes=157, frames=128, fps=6.0, batch=64, lr=1e-3, dropout=0.2, smoothing=0.1, mixup=0.0,
                     tubes="charades"),
    "ssv2": dict(classes=174, frames=32, fps=24.0, batch=256, lr=2e-5, dropout=0.3, smoothing=0.3, mixup=0.3,
                 tubes="table3"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, dataset="charades", size="B", batch=0, steps=300_000, frames=0, tiny=False)
  if a.dataset not in DATASETS:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(DATASETS)}.")
  d = DATASETS[a.dataset]
  multilabel = a.dataset == "charades"
  frames, crop = a.frames or d["frames"], 224
  c = config_lib.experiment(total_steps=a.steps)
  # config.init.path: the joint K600 + ImageNet run; its backbone loads as it is and the heads of the new
  # dataset start fresh.
  c.init.assignment_map = ((r"head_.*", None),)

  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord")
  c.input.batch_size = a.batch or d["batch"]
  c.input.shuffle_buffer = 4096
  c.input.num_frames = frames
  c.input.crop_size = crop
  c.input.host_split = "files"
  flip = "" if a.dataset == "ssv2" else "|flip()"
  # Charades: every action of the clip (multi-hot); SSv2: one class, one-hot so that mixup can mix the targets.
  target = (f"multihot({d['classes']}, smoothing={d['smoothing']})" if multilabel
            else f"onehot({d['classes']}, smoothing={d['smoothing']})")
  c.input.pp = (f"sample_clip({frames}, fps={d['fps']})|random_resized_crop({crop}){flip}|randaugment(2, 10.0)"
                f"|normalize(-1, 1)|{target}|keep('video', 'labels')")
  c.input.batch_pp = f"mixup(alpha={d['mixup']}, keys=('video',))" if d["mixup"] else ""

  c.model = ml_collections.ConfigDict()
  c.model.name = "tubevit"
  c.model.variant = a.size
  c.model.base_kernel = (8, 8, 8)
  c.model.tubes = d["tubes"]
  c.model.posemb = "sincos"
  c.model.pool = "cls"
  c.model.dropout_rate = d["dropout"]
  c.model.attention_dropout_rate = 0.0
  c.model.remat = a.size != "B"
  c.model.dtype = "float32"

  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.heads = {a.dataset: d["classes"]}
  c.task.label_smoothing = 0.0  # already in the soft targets made by the pp (smoothing=...)
  c.task.multilabel = multilabel
  c.task.head_dropout = d["dropout"]

  large = a.size in ("L", "H")
  c.optim = config_lib.optimizer("adamw", d["lr"], weight_decay=1e-5 if large else 1e-3, warmup_steps=10_000,
                                 end_lr=0.0)
  config_lib.parallelism(c, sharding="fsdp" if large else "dp")

  # Multi-view evaluation: 4 clips x 3 crops of the short side resized to 256; Charades scored by mAP (table 4).
  eval_target, eval_key = ((f"multihot({d['classes']})", "labels") if multilabel
                           else (f"label(num_classes={d['classes']})", "label"))
  c.evals = ml_collections.ConfigDict()
  c.evals[a.dataset] = dict(
      type="classification", head=a.dataset, every_steps=20_000, shuffle_frames=True,
      average="probs" if multilabel else "logits",
      input=dict(data=dict(c.input.data, split="validation", files=f"{a.dataset.upper()}/validation-*.tfrecord"),
                 batch_size=64, num_frames=frames, num_clips=4, num_crops=3,
                 pp=(f"sample_multiclip(4, {frames}, fps={d['fps']})|three_crop({crop}, resize_smallest=256)"
                     f"|normalize(-1, 1)|{eval_target}|keep('video', '{eval_key}')")))
  if a.tiny:
    # The tiny joint run's model and video data (configs/tubevit/kinetics.py:tiny, with the frames given here),
    # one head for its 12 classes.
    base_arg = "tiny" + (f",frames={a.frames}" if "frames" in a.explicit else "")
    base = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"kinetics.py:{base_arg}"))
    videos = base.input.mixture.videos
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 300, 50, 300
    c.input.data = videos.data.to_dict()
    c.input.shuffle_buffer, c.input.host_split = 512, "examples"
    if "batch" not in a.explicit:
      c.input.batch_size = 32
    c.input.num_frames, c.input.crop_size = int(videos.num_frames), int(base.input.crop_size)
    c.input.pp, c.input.batch_pp = videos.pp, ""
    c.model = base.model.to_dict()
    c.task.heads = {"videos": int(videos.num_classes)}
    c.task.multilabel, c.task.head_dropout = False, 0.0
    c.optim.lr, c.optim.weight_decay, c.optim.schedule.warmup_steps = 1e-3, 1e-4, 50
    c.sharding = "dp"
    c.evals = ml_collections.ConfigDict({"videos": base.evals.videos.to_dict()})
  config_lib.apply_args(c, a, steps="total_steps")
  return c
