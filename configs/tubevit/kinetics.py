r"""TubeViT on Kinetics, trained jointly with ImageNet (TubeViT supplement section 1, tables 1-3).

Full run (TPU pod; Kinetics and ImageNet written as records with `python -m vlm.data.write`):

  python -m vlm.main --config=configs/tubevit/kinetics.py:dataset=k600,size=B --workdir=gs://BUCKET/tubevit_b \
    --config.input.mixture.kinetics.data.files='gs://BUCKET/k600/train-*.tfrecord' \
    --config.input.mixture.imagenet.data.files='gs://BUCKET/imagenet/train-*.tfrecord' --distributed

Tiny run on one CPU (built-in dataset: its videos (12 shape x direction classes) and its images (15 colour x shape
classes) mixed, one head each; evaluation on both test splits with a shuffled-frame probe on the videos):

  python -m vlm.main --config=configs/tubevit/kinetics.py:tiny --workdir=/tmp/tubevit_tiny

Baseline for the benchmarks (a dense ViT: one 4x16x16 tubelet tube with stride 4x16x16, every token kept):

  python -m vlm.tools.bench --config=configs/tubevit/kinetics.py:size=B,batch=2,frames=32 \
    --baseline=configs/tubevit/kinetics.py:size=B,batch=2,frames=32,dense

Arguments (`FILE:ARG`, comma separated):
  size     'B' | 'L' | 'H' (table 2; config.model.variant); the first positional token (`kinetics.py:B`).
  dataset  'k400' | 'k600' | 'k700' (classes 400 / 600 / 700).
  joint    train with ImageNet-1k mixed in (default True; section 1: joint training for K400, K600 and K700).
  image_weight  fraction of steps that draw an ImageNet batch (default 0.5, tiny 0.3; the paper does not give it).
  tubes    tube preset (default 'table3'; tiny: TINY_TUBES), 'charades', table 5 notation ('a+iv;d+v;e+iv;f+v':
           ';' between tubes, as ',' separates fields) or explicit kernel/stride[/offset] triples ('1x8x8/4x8x8':
           single-frame 8x8 patches from every 4th frame, the tokenisation of SViTT's video encoder).
  frames   clip length (default 64, table 1; table 3's token counts are for 32).
  dense    the dense-ViT baseline: one 4x16x16 tube, stride 4x16x16 (every tubelet).
  tiny     CPU-sized: model.variant 'tiny' (2-layer width-64 ViT), 16 frames of 32x32 with three small tubes
           (TINY_TUBES), batch 32, 1500 steps, whole frames resized (no crops or RandAugment). Arguments given
           explicitly (frames, tubes, image_weight, batch, steps) keep their values.
  batch    global batch (default 256, table 1).
  steps    training steps (default 300k, table 1).

Table 1 settings kept: Adam (decoupled weight decay 1e-3 for B, 1e-5 for L and H), cosine decay after 10k linear
warmup steps, base learning rate 5e-5 (1e-5 for L and H), RandAugment 2 layers at magnitude 10, random spatial
and temporal crops, 64 frames at 15 fps, batch 256, 300k steps; no mixup, dropout or label smoothing for Kinetics.
"""
from __future__ import annotations

import ml_collections

from vlm import config_lib

NUM_CLASSES = {"k400": 400, "k600": 600, "k700": 700}

# Tiny tubes for 16 x 32 x 32 CPU clips: three shapes, strides >= kernels as in table 3, but covering the small
# frames (table 3 halved would see 4x4-pixel windows every 16 pixels: too little of a 32-pixel frame to follow the
# built-in dataset's slowly moving shapes): 64 + 48 + 32 = 144 tokens per clip, 16 per image (only 1x8x8 fits).
TINY_TUBES = (
    dict(kernel=(4, 8, 8), stride=(4, 8, 8), offset=(0, 0, 0)),
    dict(kernel=(8, 4, 4), stride=(4, 8, 8), offset=(0, 2, 2)),
    dict(kernel=(1, 8, 8), stride=(8, 8, 8), offset=(0, 0, 0)),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, size="B", dataset="k600", joint=True, image_weight=0.5, tubes="table3",
                           frames=64, dense=False, tiny=False, batch=256, steps=300_000)
  if a.dataset not in NUM_CLASSES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(NUM_CLASSES)}.")
  large = a.size in ("L", "H")
  c = config_lib.experiment(total_steps=a.steps)  # config.init.path: a workdir / checkpoint to start from

  # --- Model (tables 2 and 3).
  c.model = ml_collections.ConfigDict()
  c.model.name = "tubevit"
  c.model.variant = a.size
  c.model.base_kernel = (8, 8, 8)
  tubes = a.tubes  # c.model.tubes, set below: a string or a list of tubes (a ConfigDict field keeps one type)
  c.model.posemb = "sincos"
  c.model.pool = "cls"  # as the ViT the paper builds on
  c.model.dropout_rate = 0.0
  c.model.attention_dropout_rate = 0.0
  c.model.remat = False
  c.model.dtype = "float32"

  # --- Optimisation (table 1): Adam with decoupled weight decay, cosine after 10k linear warmup steps.
  c.optim = config_lib.optimizer("adamw", 1e-5 if large else 5e-5, weight_decay=1e-5 if large else 1e-3,
                                 warmup_steps=10_000, end_lr=0.0)
  config_lib.parallelism(c, sharding="fsdp" if large else "dp")

  # --- The run's data: Kinetics and ImageNet records, 64 frames at 15 fps, 224 crops with RandAugment (table 1:
  # 2 layers, magnitude 10); evaluation on 4 clips x 3 crops of the short side resized to 256.
  frames, crop, image_weight, fps = a.frames, 224, a.image_weight, 15.0
  video_name, video_classes, image_name, image_classes = "kinetics", NUM_CLASSES[a.dataset], "imagenet", 1000
  video_data = dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord")
  image_data = dict(name="records", split="train", files="IMAGENET/train-*.tfrecord")
  video_test, image_test = "validation", "validation"
  augment = f"random_resized_crop({crop})|flip()|randaugment(2, 10.0)"
  clips, crops, short_side, every_steps = 4, 3, 256, 20_000
  view = f"three_crop({crop}, resize_smallest={short_side})"
  c.input = ml_collections.ConfigDict()
  c.input.batch_size = a.batch
  c.input.shuffle_buffer = 4096
  c.input.host_split = "files"

  if a.tiny:  # CPU-sized: the built-in dataset's videos (12 shape x direction classes) and images (15 classes)
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 1500, 50, 300
    c.model.variant = "tiny"
    c.model.base_kernel = (4, 8, 8)
    if "tubes" not in a.explicit:
      tubes = [dict(t) for t in TINY_TUBES]
    c.model.pool = "gap"  # learns faster from scratch than CLS
    c.optim.lr, c.optim.weight_decay, c.optim.schedule.warmup_steps = 1e-3, 1e-4, 50
    c.sharding = "dp"
    c.input.batch_size, c.input.shuffle_buffer, c.input.host_split = 32, 512, "examples"
    frames = a.frames if "frames" in a.explicit else 16
    # The videos need more steps than the images (motion, not colour): 30% image batches.
    image_weight = a.image_weight if "image_weight" in a.explicit else 0.3
    crop, fps = 32, None
    video_name, video_classes, image_name, image_classes = "videos", 12, "images", 15
    builtin = dict(num_train=2048, num_test=512, num_images=2048, num_frames=16, sample_rate=16_000)
    video_data = dict(name="builtin", split="train", options=builtin)
    image_data = dict(name="builtin", split="train_images", options=builtin)
    video_test, image_test = "test", "test_images"
    # ~5 epochs are too short for augmentation to pay, and the objects wander a torus: a crop would often cut
    # the labelled object out of the frame. The whole 64x64 frame is resized to 32x32, in training and
    # evaluation alike.
    augment = f"decode()|resize({crop})"
    clips, crops, short_side, every_steps = 2, 1, crop, None
    view = f"center_crop({crop}, resize_smallest={short_side})"
  if a.dense:  # the dense-ViT baseline: one 4x16x16 tube with stride 4x16x16, every token kept
    tubes = [dict(kernel=(4, 16, 16), stride=(4, 16, 16), offset=(0, 0, 0))]
  c.model.tubes = tubes

  # --- Input: each step draws one dataset's batch by weight (vlm/data/mixture.py), so images (1 frame) and
  # videos (`frames` frames) never share an array; `dataset` in the batch routes examples to their head.
  video_label = f"label(num_classes={video_classes}, dataset='{video_name}')"
  image_label = f"label(num_classes={image_classes}, dataset='{image_name}')"
  c.input.crop_size = crop
  c.input.mixture = ml_collections.ConfigDict()
  c.input.mixture[video_name] = dict(
      name=video_name, weight=1.0 - image_weight if a.joint else 1.0, data=video_data, num_frames=frames,
      pp=f"sample_clip({frames}, fps={fps})|{augment}|normalize(-1, 1)|{video_label}|keep('video', 'label')",
      num_classes=video_classes)
  if a.joint:
    c.input.mixture[image_name] = dict(
        name=image_name, weight=image_weight, data=image_data, num_frames=1,
        pp=f"sample_clip(1)|{augment}|normalize(-1, 1)|{image_label}|keep('video', 'label')",
        num_classes=image_classes)
  c.input.num_frames = frames  # the video shape `dummy_batch` and the benchmarks use

  # --- Objective: one softmax head per dataset (section 1); no label smoothing for Kinetics (table 1).
  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.heads = {name: int(m.num_classes) for name, m in c.input.mixture.items()}
  c.task.label_smoothing = 0.0
  c.task.multilabel = False

  # --- Evaluation: multi-view on the videos with the shuffled-frame probe, single view on the images.
  c.evals = ml_collections.ConfigDict()
  c.evals[video_name] = dict(
      type="classification", head=video_name, every_steps=every_steps, shuffle_frames=True,
      input=dict(data=dict(video_data, split=video_test), batch_size=64, num_frames=frames, num_clips=clips,
                 num_crops=crops,
                 pp=(f"sample_multiclip({clips}, {frames}, fps={fps})|{view}|normalize(-1, 1)|{video_label}"
                     "|keep('video', 'label')")))
  if a.joint:
    c.evals[image_name] = dict(
        type="classification", head=image_name, every_steps=every_steps, shuffle_frames=False,
        input=dict(data=dict(image_data, split=image_test), batch_size=64, num_frames=1,
                   pp=(f"sample_clip(1, random=False)|center_crop({crop}, resize_smallest={short_side})"
                       f"|normalize(-1, 1)|{image_label}|keep('video', 'label')")))
  # What the user set in the config arg wins over the tiny values above (e.g. `tiny,steps=300000`).
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  return c
