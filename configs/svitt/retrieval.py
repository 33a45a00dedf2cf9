r"""SViTT text-to-video retrieval: zero-shot (table A3) and fine-tuned (table A5) on MSR-VTT, DiDeMo, Charades, SSv2.

Zero-shot evaluation of a pre-training checkpoint (VTC ranking, VTM re-ranking of the top 128):

  python -m vlm.main --config=configs/svitt/retrieval.py:msrvtt,zeroshot --mode=eval \
    --workdir=gs://BUCKET/svitt_t8_msrvtt_zs --config.init.path=gs://BUCKET/svitt_t8

Fine-tuning (VTC + VTM, as Singularity's retrieval fine-tuning; no MLM):

  python -m vlm.main --config=configs/svitt/retrieval.py:charades,frames=8 --workdir=gs://BUCKET/svitt_charades \
    --config.init.path=gs://BUCKET/svitt_t8 --distributed

Tiny (built-in dataset, fine-tuning the tiny pre-training):

  python -m vlm.main --config=configs/svitt/retrieval.py:tiny --workdir=/tmp/svitt_ret_tiny \
    --config.init.path=/tmp/svitt_tiny

Arguments: dataset ('msrvtt' | 'didemo' | 'charades' | 'ssv2_label'), frames (4 | 8 | 16; default 8; tiny 4),
zeroshot (evaluation only, `--mode=eval`), dense, tiny (the built-in dataset; `dataset=tiny` is the same), steps.

Table A4 (retrieval): T 4 / 8 / 16 -> batch 64 / 48 / 32; 15 epochs, no warm-up, lr 1e-5, weight decay 0.02,
text 32 tokens (64 for DiDeMo's paragraphs), blocks (1, 3, 56), keep rates as pre-training. Epoch length: table A2's
sentence count of the dataset (an upper bound of its training split; set `steps` for the exact split).
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

SENTENCES = {"msrvtt": 200_000, "didemo": 40_000, "charades": 16_000, "ssv2_label": 112_000}
BATCH = {4: 64, 8: 48, 16: 32}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, dataset="msrvtt", frames=8, zeroshot=False, dense=False, tiny=False, steps=0)
  tiny = a.tiny or a.dataset == "tiny"  # `dataset=tiny` as well: the built-in dataset
  if not tiny and a.dataset not in SENTENCES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(SENTENCES)} or 'tiny'.")
  # Table A4 (retrieval): the dataset's records, 15 epochs of its table-A2 sentence count, lr 1e-5, no warm-up.
  frames = a.frames
  batch = BATCH.get(frames, 64)
  steps = 15 * SENTENCES.get(a.dataset, 0) // batch
  lr, every_steps = 1e-5, 2000
  records = lambda split: dict(name="records", split=split, files=f"{a.dataset.upper()}/{split}-*.tfrecord")
  train_data, test_data = records("train"), records("test")  # None: the pre-training config's
  if tiny:  # fine-tuning the tiny pre-training on the built-in dataset
    frames = a.frames if "frames" in a.explicit else 4  # the tiny pre-training's
    batch, steps, lr, every_steps = 32, 400, 2e-4, None
    train_data = test_data = None
  base = f"frames={frames}" + (",tiny" if tiny else "") + (",dense" if a.dense else "")
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  c.input.batch_size = batch
  c.total_steps = 0 if a.zeroshot else (a.steps or steps)  # zeroshot: evaluation only (`--mode=eval`)
  text_len = 64 if a.dataset == "didemo" else c.input.max_text_len  # DiDeMo's paragraphs
  c.input.max_text_len = text_len
  c.input.pp = c.input.pp.replace("tokenize(32,", f"tokenize({text_len},")
  if train_data:
    c.input.data = train_data
  c.task.mlm_weight = 0.0  # retrieval fine-tuning: VTC + VTM
  c.optim.lr = lr
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=0, end_lr=0.0)
  ev = c.evals.retrieval
  ev.every_steps = every_steps
  if test_data:
    ev.input.data = test_data
  ev.input.pp = ev.input.pp.replace("tokenize(32,", f"tokenize({text_len},")
  c.lock()
  return config_lib.own_data_overridable(c)
