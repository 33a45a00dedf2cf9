r"""SViTT video question answering: answer decoder on the multimodal encoder (SViTT A.3, table A4 "Video QA").

Fine-tune from an 8-frame pre-training checkpoint (the decoder starts from the multimodal layers):

  python -m vlm.main --config=configs/svitt/qa.py:msrvtt_qa --workdir=gs://BUCKET/svitt_msrvtt_qa \
    --config.init.path=gs://BUCKET/svitt_t8 --distributed

Tiny run on one CPU (built-in dataset's QA pairs; start from the tiny pre-training for configs/svitt/README.md's figures):

  python -m vlm.main --config=configs/svitt/qa.py:tiny --workdir=/tmp/answer_decoding_tiny \
    --config.init.path=/tmp/svitt_tiny

Arguments (`FILE:ARG`, comma separated):
  dataset  'msrvtt_qa' | 'anet_qa' | 'agqa' (records written with `python -m vlm.data.write`, QA pairs in the
           context keys qa/question, qa/answer, qa/answer/index; an answer list file per dataset), or 'tiny'.
  frames   T (default 8: table A4; tiny 4).
  dense    dense attention, no pruning.
  steps    total steps (default: table A4's epochs over table A2's question count at batch 128).
           The frame-order ('colour order') questions of the built-in dataset's `colour_change` option stay at
           chance with the tiny default (800) and are learnt with steps=2400 (table A8 at tiny scale: configs/svitt/README.md).

Table A4 (QA): 8 frames, 5 epochs (1 for AGQA), no warm-up, batch 128, lr 5e-5, weight decay 0.02, question 25
tokens, answer 5, blocks (1, 3, 56), keep rates (q_v, q_m) = (0.6, 0.5). Evaluation ranks the answer list by the
decoder's likelihood (vlm/evals/qa.py), with the shuffled-frame probe (table A8).
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

# Questions per dataset (table A2) and fine-tuning epochs (table A4).
QUESTIONS = {"msrvtt_qa": 244_000, "anet_qa": 58_000, "agqa": 2_270_000}
EPOCHS = {"msrvtt_qa": 5, "anet_qa": 5, "agqa": 1}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, dataset="msrvtt_qa", frames=0, dense=False, steps=0)
  tiny = a.dataset == "tiny"
  if not tiny and a.dataset not in QUESTIONS:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(QUESTIONS)} or 'tiny'.")
  frames = a.frames or (4 if tiny else 8)
  base = f"frames={frames}" + (",tiny" if tiny else "") + (",dense" if a.dense else "")
  if not tiny and frames not in (4, 8, 16):
    raise ValueError(f"frames={frames}: table A4 has 4, 8 and 16.")
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  batch = 128 if not tiny else 32
  c.input.batch_size = batch
  c.total_steps = a.steps or (EPOCHS[a.dataset] * QUESTIONS[a.dataset] // batch if not tiny else 800)
  c.checkpoint_every_steps = 2000 if not tiny else 400
  c.log_every_steps = 100 if not tiny else 50
  q_len, a_len = (25, 5) if not tiny else (16, 5)
  c.input.max_text_len = q_len
  c.input.max_question_len = q_len
  c.input.max_answer_len = a_len
  c.input.extra_context = {"qa/question": "string", "qa/answer": "string", "qa/answer/index": "int"}
  if tiny:  # the built-in dataset's question kinds: accuracy per kind (direction, colour order, ...)
    c.input.extra_context["qa/kind/index"] = "int"
  if not tiny:
    c.input.data = dict(name="records", split="train", files=f"{a.dataset.upper()}/train-*.tfrecord")
  crop = c.input.crop_size
  augment = f"decode()|resize({crop})" if tiny else f"random_resized_crop({crop}, area=(0.5, 1.0))"
  text = (f"|tokenize({q_len}, bos=True, eos=True, inkey='question', outkey='question', mask_key='question_mask')"
          f"|tokenize({a_len}, bos=True, eos=True, inkey='answer', outkey='answer', mask_key='answer_mask')")
  keys = ["video", "question", "question_mask", "answer", "answer_mask", "answer_index"]
  keep = lambda names: "keep(" + ", ".join(map(repr, names)) + ")"
  c.input.pp = f"sample_segments({frames})|{augment}|normalize(-1, 1)|sample_qa()" + text + "|" + keep(keys)

  c.model.decoder_layers = 3 if not tiny else 2
  if not a.dense:
    c.model.visual_keep_rate = 0.6 if not tiny else 0.7
    c.model.multimodal_keep_rate = 0.5
  c.task = ml_collections.ConfigDict(dict(name="answer_decoding"))
  c.optim.lr = 5e-5 if not tiny else 5e-4
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=0 if not tiny else 50, end_lr=0.0)

  view = f"|decode()|resize({crop})" if tiny else f"|center_crop({crop}, resize_smallest={crop})"
  c.evals = ml_collections.ConfigDict()
  c.evals.qa = dict(
      type="qa", every_steps=None if tiny else 5000, answer_list=None if tiny else f"{a.dataset.upper()}/answers.txt",
      candidate_batch=64, shuffle_frames=True, max_examples=0,
      input=dict(data=dict(split="test") if tiny else dict(name="records", split="test",
                                                          files=f"{a.dataset.upper()}/test-*.tfrecord"),
                 batch_size=64,
                 pp=(f"sample_segments({frames}, random=False){view}|normalize(-1, 1)|sample_qa(random=False)"
                     + text + "|" + keep(keys + ["question_kind"]))))  # kinds where the data has them
  c.lock()
  return c
