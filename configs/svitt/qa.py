r"""SViTT video question answering: answer decoder on the multimodal encoder (SViTT A.3, table A4 "Video QA").

Fine-tune from an 8-frame pre-training checkpoint (the decoder starts from the multimodal layers):

  python -m vlm.main --config=configs/svitt/qa.py:msrvtt_qa --workdir=gs://BUCKET/svitt_msrvtt_qa \
    --config.init.path=gs://BUCKET/svitt_t8 --distributed

Tiny run on one CPU (built-in dataset's QA pairs; start from the tiny pre-training for configs/svitt/README.md's figures):

  python -m vlm.main --config=configs/svitt/qa.py:tiny --workdir=/tmp/answer_decoding_tiny \
    --config.init.path=/tmp/svitt_tiny

Arguments (`FILE:ARG`, comma separated):
  dataset  'msrvtt_qa' | 'anet_qa' | 'agqa' (records written with `python -m vlm.data.write`, QA pairs in the
           context keys qa/question, qa/answer, qa/answer/index; an answer list file per dataset).
  tiny     the built-in dataset's QA pairs (`dataset=tiny` is the same).
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
  a = config_lib.parse_arg(arg, dataset="msrvtt_qa", frames=0, dense=False, tiny=False, steps=0)
  tiny = a.tiny or a.dataset == "tiny"  # `dataset=tiny` as well: the built-in dataset's QA pairs
  if not tiny and a.dataset not in QUESTIONS:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(QUESTIONS)} or 'tiny'.")
  # Table A4 (QA): 8 frames, batch 128, lr 5e-5 with no warm-up, question 25 tokens, answer 5, 3 decoder layers,
  # keep rates (0.6, 0.5); the dataset's records and answer list, table A4's epochs of its question count.
  frames, batch, q_len, a_len, lr, warmup, decoder_layers, visual_keep = 8, 128, 25, 5, 5e-5, 0, 3, 0.6
  steps = EPOCHS.get(a.dataset, 0) * QUESTIONS.get(a.dataset, 0) // batch
  log_every, checkpoint_every, eval_every = 100, 2000, 5000
  records = lambda split: dict(name="records", split=split, files=f"{a.dataset.upper()}/{split}-*.tfrecord")
  train_data, test_data, answer_list = records("train"), records("test"), f"{a.dataset.upper()}/answers.txt"
  context = {"qa/question": "string", "qa/answer": "string", "qa/answer/index": "int"}
  view = "center_crop({crop}, resize_smallest={crop})"
  augment = "random_resized_crop({crop}, area=(0.5, 1.0))"
  if tiny:  # the built-in dataset (start from the tiny pre-training for configs/svitt/README.md's figures)
    frames, batch, q_len, lr, warmup, decoder_layers, visual_keep = 4, 32, 16, 5e-4, 50, 2, 0.7
    steps, log_every, checkpoint_every, eval_every = 800, 50, 400, None
    train_data, test_data, answer_list = None, dict(split="test"), None  # None: the pre-training config's data
    context["qa/kind/index"] = "int"  # the question kinds: accuracy per kind (direction, colour order, ...)
    view = augment = "decode()|resize({crop})"  # whole frames, as the tiny pre-training
  frames = a.frames or frames
  if not tiny and frames not in (4, 8, 16):
    raise ValueError(f"frames={frames}: table A4 has 4, 8 and 16.")
  base = f"frames={frames}" + (",tiny" if tiny else "") + (",dense" if a.dense else "")
  c = config_lib.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py") + ":" + base)
  c.unlock()
  c.input.batch_size = batch
  c.total_steps = a.steps or steps
  c.checkpoint_every_steps, c.log_every_steps = checkpoint_every, log_every
  c.input.max_text_len = q_len
  c.input.max_question_len = q_len
  c.input.max_answer_len = a_len
  c.input.extra_context = context
  if train_data:
    c.input.data = train_data
  crop = c.input.crop_size
  view, augment = view.format(crop=crop), augment.format(crop=crop)
  text = (f"|tokenize({q_len}, bos=True, eos=True, inkey='question', outkey='question', mask_key='question_mask')"
          f"|tokenize({a_len}, bos=True, eos=True, inkey='answer', outkey='answer', mask_key='answer_mask')")
  keys = ["video", "question", "question_mask", "answer", "answer_mask", "answer_index"]
  keep = lambda names: "keep(" + ", ".join(map(repr, names)) + ")"
  c.input.pp = f"sample_segments({frames})|{augment}|normalize(-1, 1)|sample_qa()" + text + "|" + keep(keys)

  c.model.decoder_layers = decoder_layers
  if not a.dense:
    c.model.visual_keep_rate = visual_keep
    c.model.multimodal_keep_rate = 0.5
  c.task = ml_collections.ConfigDict(dict(name="answer_decoding"))
  c.optim.lr = lr
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=warmup, end_lr=0.0)

  c.evals = ml_collections.ConfigDict()
  c.evals.qa = dict(
      type="qa", every_steps=eval_every, answer_list=answer_list, candidate_batch=64, shuffle_frames=True,
      max_examples=0,
      input=dict(data=test_data, batch_size=64,
                 pp=(f"sample_segments({frames}, random=False)|{view}|normalize(-1, 1)|sample_qa(random=False)"
                     + text + "|" + keep(keys + ["question_kind"]))))  # kinds where the data has them
  c.lock()
  return config_lib.own_data_overridable(c)
