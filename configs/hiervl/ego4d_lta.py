r"""HierVL on Ego4D long-term anticipation (edit distance at Z = 20, K = 5 candidates; supplement 3.1).

The pre-trained f_v is frozen; the aggregator Agg (from the pre-training) and a multi-head decoder (head z predicts
the z-th next clip's verb and noun) are trained (vlm/tasks/anticipation.py, vlm/evals/anticipation.py):

  python -m vlm.main --config=configs/hiervl/ego4d_lta.py:sa,target=verb --workdir=gs://BUCKET/hiervl_lta_verb \
    --config.init.path=gs://BUCKET/hiervl_sa --distributed
  python -m vlm.main --config=configs/hiervl/ego4d_lta.py:sa,target=noun --workdir=gs://BUCKET/hiervl_lta_noun \
    --config.init.path=gs://BUCKET/hiervl_sa --distributed

Tiny, from the tiny pre-training, on built-in episodes that follow routines (`routines` option of
vlm/data/builtin.py: an episode's directions are its colour's routine, so the future follows from the past):

  python -m vlm.main --config=configs/hiervl/ego4d_lta.py:tiny --workdir=/tmp/hiervl_lta \
    --config.init.path=/tmp/hiervl_sa

Records: Ego4D LTA clips in episode order, `episode/id` the video, `episode/verb/index` / `episode/noun/index`
each clip's action (`python -m vlm.data.write` with the manifest's episode, verbs and nouns columns); a video's
clips, cut into consecutive windows of observed + Z, give one example per window (a shorter last window is padded
and, in the evaluation, skipped).

Arguments: variant (the pre-training's, so its checkpoint loads; default 'sa'), target ('verb' | 'noun' | 'both';
the paper trains verbs and nouns in separate runs), observed (input clips, Ego4D's 2), horizon (Z, 20; tiny 4),
tiny, steps, seed.

Supplement 3.1: batch 128, 150 epochs; verbs (115 classes): decoder lr 3e-3, Agg 1e-4, dropout 0.5; nouns (478
classes): decoder 5e-3, Agg 5e-4, dropout 0.6. An epoch is Ego4D LTA v1's ~3,500 training windows (~27 steps at
batch 128), so 150 epochs are ~4,100 steps. The optimiser (not stated) is the Ego4D baseline's AdamW.
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

NUM_VERBS, NUM_NOUNS = 115, 478
TRAIN_WINDOWS = 3_500
RATES = {"verb": (3e-3, 1e-4, 0.5), "noun": (5e-3, 5e-4, 0.6), "both": (3e-3, 1e-4, 0.5)}  # decoder, Agg, dropout


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="sa", target="both", observed=2, horizon=20, tiny=False, steps=0, seed=0)
  if a.target not in RATES:
    raise ValueError(f"target={a.target!r}: expected one of {', '.join(RATES)}.")
  base = f"{a.variant}" + (",tiny" if a.tiny else "") + f",seed={a.seed}"
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  targets = ("verb", "noun") if a.target == "both" else (a.target,)
  decoder_lr, agg_lr, dropout = RATES[a.target]
  observed, horizon = a.observed, a.horizon
  verbs, nouns, batch, steps = NUM_VERBS, NUM_NOUNS, 128, 150 * TRAIN_WINDOWS // 128
  view = f"center_crop({c.input.crop_size}, resize_smallest={c.input.crop_size})"
  train_data = dict(name="records", split="train", files="EGO4D_LTA/train-*.tfrecord")
  test_data = dict(name="records", split="val", files="EGO4D_LTA/val-*.tfrecord")
  if a.tiny:  # built-in episodes of 6 clips that follow their colour's routine
    horizon = a.horizon if "horizon" in a.explicit else 4
    verbs, nouns, batch, steps = 4, 3, 16, 400
    view = f"decode()|resize({c.input.crop_size})"
    options = dict(c.input.data.options, episode_len=observed + horizon, routines=5)
    train_data = dict(c.input.data, options=options)
    test_data = dict(train_data, split="test")
  c.total_steps = a.steps or steps
  c.log_every_steps, c.checkpoint_every_steps = 50, max(c.total_steps // 4, 50)

  # One stream of episodes: windows of observed + horizon consecutive clips (vlm/data/grouping.py).
  del c.input.mixture, c.input.mixture_schedule
  frames = c.input.num_frames
  c.input.data, c.input.batch_size = train_data, batch
  c.input.group = dict(size=observed + horizon, key="episode/id", remainder="pad")
  classes = ("|label(inkey='episode/verb/index', outkey='verb')|label(inkey='episode/noun/index', outkey='noun')")
  pp = (f"sample_segments({frames}, random={{}})|{view}|normalize(-1, 1){classes}"
        "|keep('video', 'verb', 'noun')")
  c.input.pp = pp.format(True)

  c.task = ml_collections.ConfigDict(dict(name="anticipation", observed=observed, horizon=horizon, num_verbs=verbs,
                                          num_nouns=nouns, targets=targets, head_dropout=dropout))
  # The pre-training's parameters load under model/ (the decoder heads are new); f_v and f_n stay frozen.
  c.init.assignment_map = ((r"model/(.*)", r"\1"), (r"head_.*", None))
  c.optim = config_lib.optimizer("adamw", decoder_lr, weight_decay=0.01, warmup_steps=0, end_lr=0.0)
  c.optim.frozen = (r"model/(video|text)_.*",)
  c.optim.lr_scale = ((r"model/aggregator/.*", agg_lr / decoder_lr),)

  c.evals = ml_collections.ConfigDict()
  c.evals.lta = dict(type="anticipation", every_steps=None, num_candidates=5, seed=0, max_examples=0,
                     input=dict(data=test_data, batch_size=16, group=dict(c.input.group), pp=pp.format(False)))
  return config_lib.apply_args(c, a, steps="total_steps", seed="seed")
