r"""HierVL on EPIC-KITCHENS-100 multi-instance retrieval (mAP and nDCG): zero-shot and fine-tuned (supplement 3.3).

Zero-shot (f_v and f_n as pre-trained):

  python -m vlm.main --config=configs/hiervl/epic_mir.py:sa,zeroshot --mode=eval \
    --workdir=gs://BUCKET/hiervl_epic_zs --config.init.path=gs://BUCKET/hiervl_sa

Fine-tuned (f_v and f_n trained with the adaptive max-margin ranking loss, vlm/losses/ranking.py):

  python -m vlm.main --config=configs/hiervl/epic_mir.py:sa --workdir=gs://BUCKET/hiervl_epic_ft \
    --config.init.path=gs://BUCKET/hiervl_sa --distributed

Tiny, from the tiny pre-training (the built-in dataset's narrations; noun = shape, verb = direction):

  python -m vlm.main --config=configs/hiervl/epic_mir.py:tiny,zeroshot --mode=eval \
    --workdir=/tmp/hiervl_epic_zs --config.init.path=/tmp/hiervl_sa
  python -m vlm.main --config=configs/hiervl/epic_mir.py:tiny --workdir=/tmp/hiervl_epic_ft \
    --config.init.path=/tmp/hiervl_sa

Records: one per EPIC-100 retrieval clip with its narration as the caption and the noun / verb classes of the
narration in `episode/noun/index` / `episode/verb/index` (`python -m vlm.data.write` with the manifest's `nouns` and
`verbs` columns). The evaluation ranks every clip for every unique caption (and every caption for every clip); the
relevance of a caption to a clip is the mean of the IoU of their verb sets and of their noun sets
(vlm/evals/metrics.py `tag_relevance`): mAP counts the fully relevant items, nDCG weighs all by relevance.

Arguments: variant (the pre-training's, so its checkpoint loads; default 'sa'), zeroshot (evaluation only,
`--mode=eval`), frames (16 as the release's configs/ft/epic.json; tiny 4), margin (0.4), tiny, steps, seed.

Supplement 3.3: batch 32, 200 epochs, AdamW at 3e-5 for the first 100 and 1e-6 after (the `step` schedule); an
epoch is EPIC-100's 67,217 training clips, ~2,100 steps at batch 32. Each clip trains with its own narration
(margin weight 1); the release also draws the caption of another clip with relevance > 0.1 and scales that pair's
margin by its relevance: a `relevance` [B] batch key does the same here (vlm/tasks/hierarchical.py).
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

TRAIN_CLIPS = 67_217
NUM_NOUNS, NUM_VERBS = 300, 97  # EPIC-KITCHENS-100's classes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="sa", zeroshot=False, frames=16, margin=0.4, tiny=False, steps=0, seed=0)
  base = f"{a.variant}" + (",tiny" if a.tiny else "") + f",seed={a.seed}"
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  frames, nouns, verbs, text_len = a.frames, NUM_NOUNS, NUM_VERBS, c.input.max_text_len
  epoch = TRAIN_CLIPS // 32
  batch, steps, lr, drop_after, end_lr = 32, 200 * epoch, 3e-5, 100 * epoch, 1e-6
  crop = c.input.crop_size
  augment = f"random_resized_crop({crop}, area=(0.5, 1.0))"
  view = f"center_crop({crop}, resize_smallest={crop})"
  train_data = dict(name="records", split="train", files="EPIC100_MIR/train-*.tfrecord")
  test_data = dict(name="records", split="test", files="EPIC100_MIR/test-*.tfrecord")
  if a.tiny:  # the built-in dataset (the tiny pre-training's test split)
    frames = a.frames if "frames" in a.explicit else c.input.num_frames
    nouns, verbs = 3, 4
    batch, steps, lr, drop_after, end_lr = 32, 300, 1e-4, 200, 1e-5
    augment = view = f"decode()|resize({crop})"
    train_data, test_data = dict(c.input.data), dict(c.input.data, split="test")
  c.input.num_frames = frames
  c.total_steps = 0 if a.zeroshot else (a.steps or steps)
  c.log_every_steps, c.checkpoint_every_steps = 50, max(c.total_steps // 4, 50)

  # One stream of clip-narration pairs (no parent steps).
  del c.input.mixture, c.input.mixture_schedule
  c.input.data, c.input.batch_size = train_data, batch
  narration = ("sample_captions(1, random={}, key='episode/narration')"
               f"|tokenize({text_len}, bos=True, eos=True, inkey='episode/narration')")
  tags = (f"|multihot({nouns}, inkey='episode/noun/index', outkey='nouns')"
          f"|multihot({verbs}, inkey='episode/verb/index', outkey='verbs')")
  c.input.pp = (f"sample_segments({frames})|{augment}|normalize(-1, 1)|{narration.format(True)}"
                "|keep('video', 'text', 'text_mask')")
  c.task.clip_loss, c.task.margin = "max_margin", a.margin
  c.optim.lr = lr
  c.optim.schedule = dict(kind="step", warmup_steps=0, decay_steps=drop_after, end_lr=end_lr)

  eval_video = f"sample_segments({frames}, random=False)|{view}|normalize(-1, 1)"
  c.evals = ml_collections.ConfigDict()
  c.evals.epic_mir = dict(
      type="retrieval", every_steps=None, relevance="noun_verb", max_examples=0,
      input=dict(data=test_data, batch_size=64,
                 pp=f"{eval_video}|{narration.format(False)}{tags}|keep('video', 'text', 'text_mask', 'nouns', "
                    "'verbs')"))
  return config_lib.apply_args(c, a, steps="total_steps", seed="seed")
