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
  dataset  'k400' | 'k600' | 'k700' (classes 400 / 600 / 700).
  size     'B' | 'L' | 'H' (table 2).
  joint    train with ImageNet-1k mixed in (default True; section 1: joint training for K400, K600 and K700).
  image_weight  fraction of steps that draw an ImageNet batch (default 0.5, tiny 0.3; the paper does not give it).
  tubes    tube preset (default 'table3'; tiny: TINY_TUBES), 'charades', table 5 notation ('a+iv;d+v;e+iv;f+v':
           ';' between tubes, as ',' separates fields) or explicit kernel/stride[/offset] triples ('1x8x8/4x8x8':
           single-frame 8x8 patches from every 4th frame, the tokenisation of SViTT's video encoder).
  frames   clip length (default 64, table 1; table 3's token counts are for 32).
  dense    the dense-ViT baseline: one 4x16x16 tube, stride 4x16x16 (every tubelet).
  tiny     CPU-sized: 2-layer width-64 ViT, 16 frames of 32x32 with three small tubes (TINY_TUBES), batch 32,
           1500 steps, whole frames resized (no crops or RandAugment).
  batch    global batch (default 256, table 1).
  steps    training steps (default 300k, table 1).

Table 1 settings kept: Adam (decoupled weight decay 1e-3 for B, 1e-5 for L and H), cosine decay after 10k linear
warmup steps, base learning rate 5e-5 (1e-5 for L and H), RandAugment 2 layers at magnitude 10, random spatial
and temporal crops, 64 frames at 15 fps, batch 256, 300k steps; no mixup, dropout or label smoothing for Kinetics.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

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
  a = config_lib.parse_arg(arg, dataset="k600", size="B", joint=True, image_weight=0.5, tubes="table3",
                           frames=64, dense=False, tiny=False, batch=256, steps=300_000)
  if a.dataset not in NUM_CLASSES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(NUM_CLASSES)}.")
  large = a.size in ("L", "H")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = a.steps if not a.tiny else 1500
  c.log_every_steps = 100 if not a.tiny else 50
  c.checkpoint_every_steps = 5000 if not a.tiny else 300
  c.keep_checkpoints = 3
  c.init = config_lib.init_block()  # config.init.path: a workdir / checkpoint (or weights file) to start from

  # --- Input: each step draws one dataset's batch by weight (vlm/data/mixture.py), so images (1 frame) and
  # videos (`frames` frames) never share an array; `dataset` in the batch routes examples to their head.
  frames = a.frames if not a.tiny or a.frames != 64 else 16
  crop = 224 if not a.tiny else 32
  # The tiny run's videos need more steps than its images (motion, not colour): 30% image batches.
  image_weight = a.image_weight if not a.tiny or a.image_weight != 0.5 else 0.3
  c.input = ml_collections.ConfigDict()
  c.input.batch_size = a.batch if not a.tiny else 32
  c.input.shuffle_buffer = 4096 if not a.tiny else 512
  c.input.crop_size = crop
  c.input.host_split = "examples" if a.tiny else "files"
  builtin = dict(num_train=2048, num_test=512, num_images=2048, num_frames=16, sample_rate=16_000)
  # RandAugment (table 1: 2 layers, magnitude 10) and random crops for the real runs. The tiny run trains ~5 epochs,
  # too short for augmentation to pay, and its objects wander a torus: a crop would often cut the labelled object
  # out of the frame. It resizes the whole 64x64 frame to 32x32, in training and evaluation alike.
  if a.tiny:
    augment = f"decode()|resize({crop})"
  else:
    augment = f"random_resized_crop({crop})|flip()|randaugment(2, 10.0)"
  video_classes = 12 if a.tiny else NUM_CLASSES[a.dataset]
  image_classes = 15 if a.tiny else 1000
  video_name = "videos" if a.tiny else "kinetics"
  image_name = "images" if a.tiny else "imagenet"
  video_label = f"label(num_classes={video_classes}, dataset='{video_name}')"
  image_label = f"label(num_classes={image_classes}, dataset='{image_name}')"
  video_pp = (f"sample_clip({frames}, fps={15.0 if not a.tiny else None})|{augment}|normalize(-1, 1)"
              f"|{video_label}|keep('video', 'label')")
  image_pp = f"sample_clip(1)|{augment}|normalize(-1, 1)|{image_label}|keep('video', 'label')"
  video_data = (dict(name="builtin", split="train", options=builtin) if a.tiny
                else dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord"))
  image_data = (dict(name="builtin", split="train_images", options=builtin) if a.tiny
                else dict(name="records", split="train", files="IMAGENET/train-*.tfrecord"))
  c.input.mixture = ml_collections.ConfigDict()
  c.input.mixture[video_name] = dict(name=video_name, weight=1.0 - image_weight if a.joint else 1.0,
                                     data=video_data, num_frames=frames, pp=video_pp, num_classes=video_classes)
  if a.joint:
    c.input.mixture[image_name] = dict(name=image_name, weight=image_weight, data=image_data, num_frames=1,
                                       pp=image_pp, num_classes=image_classes)
  c.input.num_frames = frames  # the video shape `dummy_batch` and the benchmarks use

  # --- Model (tables 2 and 3).
  c.model = ml_collections.ConfigDict()
  c.model.name = "tubevit"
  c.model.variant = a.size
  c.model.tiny = a.tiny
  c.model.base_kernel = (8, 8, 8) if not a.tiny else (4, 8, 8)
  if a.dense:
    c.model.tubes = [dict(kernel=(4, 16, 16), stride=(4, 16, 16), offset=(0, 0, 0))]
  else:
    c.model.tubes = [dict(t) for t in TINY_TUBES] if a.tiny and a.tubes == "table3" else a.tubes
  c.model.posemb = "sincos"
  # CLS pooling as the ViT the paper builds on; the tiny model pools by average, which learns faster from scratch.
  c.model.pool = "cls" if not a.tiny else "gap"
  c.model.dropout_rate = 0.0
  c.model.attention_dropout_rate = 0.0
  c.model.remat = False
  c.model.dtype = "float32"

  # --- Objective: one softmax head per dataset (section 1).
  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.heads = {name: int(m.num_classes) for name, m in c.input.mixture.items()}
  c.task.label_smoothing = 0.0
  c.task.multilabel = False

  # --- Optimisation (table 1).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.lr = (1e-5 if large else 5e-5) if not a.tiny else 1e-3
  c.optim.weight_decay = (1e-5 if large else 1e-3) if not a.tiny else 1e-4
  c.optim.grad_clip_norm = config_dict.placeholder(float)
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=10_000 if not a.tiny else 50, end_lr=0.0)

  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  c.sharding = "dp" if a.size == "B" or a.tiny else "fsdp"
  c.sharding_rules = None

  # --- Evaluation: multi-view on the videos (4 clips x 3 crops at full size), single view on the images.
  c.evals = ml_collections.ConfigDict()
  clips, crops = (4, 3) if not a.tiny else (2, 1)
  # Views of the short side resized to 256 (the tiny run: the whole frame resized to 32, as in its training).
  eval_short_side = 256 if not a.tiny else crop
  view_crop = (f"three_crop({crop}, resize_smallest={eval_short_side})" if not a.tiny
               else f"center_crop({crop}, resize_smallest={eval_short_side})")
  c.evals[video_name] = dict(
      type="classification", head=video_name, every_steps=None if a.tiny else 20_000,
      shuffle_frames=True,
      input=dict(data=dict(video_data, split="test" if a.tiny else "validation"), batch_size=64,
                 num_frames=frames, num_clips=clips, num_crops=crops,
                 pp=(f"sample_multiclip({clips}, {frames}, fps={15.0 if not a.tiny else None})|{view_crop}"
                     f"|normalize(-1, 1)|{video_label}|keep('video', 'label')")))
  if a.joint:
    c.evals[image_name] = dict(
        type="classification", head=image_name, every_steps=None if a.tiny else 20_000, shuffle_frames=False,
        input=dict(data=dict(image_data, split="test_images" if a.tiny else "validation"), batch_size=64,
                   num_frames=1,
                   pp=f"sample_clip(1, random=False)|center_crop({crop}, resize_smallest={eval_short_side})"
                      f"|normalize(-1, 1)|{image_label}"
                      "|keep('video', 'label')"))
  # What the user set in the config arg wins over the tiny defaults above (e.g. `tiny,steps=500000`).
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  return c
