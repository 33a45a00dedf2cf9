r"""HierVL on Charades-Ego action recognition (mAP over 157 classes): zero-shot and fine-tuned (supplement 3.2).

Zero-shot (f_v and f_n as pre-trained; every class name is a text prompt, vlm/evals/zero_shot.py):

  python -m vlm.main --config=configs/hiervl/charades_ego.py:sa,zeroshot --mode=eval \
    --workdir=gs://BUCKET/hiervl_charades_zs --config.init.path=gs://BUCKET/hiervl_sa

Fine-tuned (f_v and f_n trained on clip / class-name pairs with the release's NormSoftmax loss, EgoNCE with the
diagonal as the only positive):

  python -m vlm.main --config=configs/hiervl/charades_ego.py:sa --workdir=gs://BUCKET/hiervl_charades_ft \
    --config.init.path=gs://BUCKET/hiervl_sa --distributed

Tiny, from the tiny pre-training (the built-in dataset's 12 classes, 'circle moving left', ...):

  python -m vlm.main --config=configs/hiervl/charades_ego.py:tiny,zeroshot --mode=eval \
    --workdir=/tmp/hiervl_charades_zs --config.init.path=/tmp/hiervl_sa
  python -m vlm.main --config=configs/hiervl/charades_ego.py:tiny --workdir=/tmp/hiervl_charades_ft \
    --config.init.path=/tmp/hiervl_sa

Arguments: variant (the pre-training's: 'sa' | 'avg' | 'egovlp' | ..., so its checkpoint loads; default 'sa'),
zeroshot (evaluation only, `--mode=eval`), frames (16 as the release's configs/ft/charades.json; tiny 4: the
checkpoint's temporal table is resized, config.init.options.time_resize), tiny, steps, seed.

Supplement 3.2: batch 32, AdamW at 3e-5, five epochs of Charades-Ego's 3,085 first-person training videos (their
action segments are the training clips: about 34k, so five epochs are ~5,400 steps at batch 32).
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

NUM_CLASSES = 157
TRAIN_SEGMENTS = 34_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="sa", zeroshot=False, frames=16, tiny=False, steps=0, seed=0)
  base = f"{a.variant}" + (",tiny" if a.tiny else "") + f",seed={a.seed}"
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  frames, classes, text_len = a.frames, NUM_CLASSES, c.input.max_text_len
  batch, steps, lr = 32, 5 * TRAIN_SEGMENTS // 32, 3e-5
  crop = c.input.crop_size
  augment = f"random_resized_crop({crop}, area=(0.5, 1.0))"
  view = f"center_crop({crop}, resize_smallest={crop})"
  train_data = dict(name="records", split="train", files="CHARADES_EGO/train-*.tfrecord")
  test_data = dict(name="records", split="test", files="CHARADES_EGO/test-*.tfrecord")
  if a.tiny:  # the built-in dataset (its test split as the tiny pre-training's)
    frames = a.frames if "frames" in a.explicit else c.input.num_frames
    classes, batch, steps, lr = 12, 32, 300, 1e-4
    augment = view = f"decode()|resize({crop})"
    train_data, test_data = dict(c.input.data), dict(c.input.data, split="test")
  c.input.num_frames = frames
  c.total_steps = 0 if a.zeroshot else (a.steps or steps)
  c.log_every_steps, c.checkpoint_every_steps = 50, max(c.total_steps // 4, 50)

  # One stream: each training clip with its class name as the caption (no parent steps, no noun / verb tags).
  del c.input.mixture, c.input.mixture_schedule
  c.input.data, c.input.batch_size = train_data, batch
  label_text = "sample_captions(1, random=True, key='label_text')|tokenize({}, bos=True, eos=True, inkey='label_text')"
  c.input.pp = (f"sample_segments({frames})|{augment}|normalize(-1, 1)|{label_text.format(text_len)}"
                "|keep('video', 'text', 'text_mask')")
  c.task.positives = "diagonal"  # the release's NormSoftmaxLoss
  c.optim.lr, c.optim.schedule.warmup_steps = lr, 0

  eval_video = f"sample_segments({frames}, random=False)|{view}|normalize(-1, 1)"
  c.evals = ml_collections.ConfigDict()
  c.evals.charades_ego = dict(
      type="zero_shot", every_steps=None, prompt="{}", class_names=None, max_examples=0,
      input=dict(data=test_data, batch_size=64,
                 pp=f"{eval_video}|multihot({classes})|keep('video', 'labels')"))
  return config_lib.apply_args(c, a, steps="total_steps", seed="seed")
