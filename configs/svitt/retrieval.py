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

Arguments: dataset ('msrvtt' | 'didemo' | 'charades' | 'ssv2_label' | 'tiny'), frames (4 | 8 | 16; default 8),
zeroshot (evaluation only, `--mode=eval`), dense, steps.

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
  a = config_lib.parse_arg(arg, dataset="msrvtt", frames=8, zeroshot=False, dense=False, steps=0)
  tiny = a.dataset == "tiny"
  if not tiny and a.dataset not in SENTENCES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(SENTENCES)} or 'tiny'.")
  frames = a.frames if not tiny or a.frames != 8 else 4
  base = f"frames={frames}" + (",tiny" if tiny else "") + (",dense" if a.dense else "")
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  batch = BATCH.get(frames, 64) if not tiny else 32
  c.input.batch_size = batch
  c.total_steps = 0 if a.zeroshot else (a.steps or (15 * SENTENCES[a.dataset] // batch if not tiny else 400))
  text_len = 64 if a.dataset == "didemo" else c.input.max_text_len
  c.input.max_text_len = text_len
  c.input.pp = c.input.pp.replace("tokenize(32,", f"tokenize({text_len},")
  if not tiny:
    c.input.data = dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord")
  c.task.mlm_weight = 0.0  # retrieval fine-tuning: VTC + VTM
  c.optim.lr = 1e-5 if not tiny else 2e-4
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=0, end_lr=0.0)
  ev = c.evals.retrieval
  ev.every_steps = None if tiny else 2000
  if not tiny:
    ev.input.data = dict(name="records", split="test", files=f"{a.dataset.upper()}/test-*.tfrecord")
    ev.input.pp = ev.input.pp.replace("tokenize(32,", f"tokenize({text_len},")
  c.lock()
  return c
