"""Video question answering over a closed answer list: accuracy, the majority-answer baseline, shuffled frames.

Every candidate answer of the list is tokenized like the training answers ([CLS] answer [SEP], padded to
`config.input.max_answer_len`) and scored by the task's `answer_scores` (the answer decoder's log-likelihood);
the prediction is the best-scoring candidate. Ground truth is the batch's `answer_index` into the same list.

Config (`config.evals.<name>`):
  type: 'qa'.
  every_steps: as every evaluator.
  input: overrides of config.input for the test split; batches carry video, question, question_mask,
    answer_index.
  answer_list [None]: the candidate answers (a list of strings, or a text file with one per line); None takes
    the dataset's own list (the built-in dataset's `answer_names`).
  candidate_batch [64]: candidates scored per call.
  shuffle_frames [False], shuffle_seed [0]: the shuffled-frame probe (SViTT table A8): `accuracy_shuffled`,
    `accuracy_shuffle_drop`.
  max_examples [0 = all].

Metrics: accuracy (percent), majority_accuracy (always answering the test split's most frequent answer),
num_examples.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from vlm.data import pipeline
from vlm.data import sources as sources_lib
from vlm.data import vocab as vocab_lib
from vlm.evals import classification
from vlm.evals import common


def answer_list(config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict) -> tuple[list[str], str]:
  """(candidate answers, vocab file of the eval split's source) for `eval_cfg`."""
  inp = pipeline.input_config(config, eval_cfg.input)
  source = sources_lib.get_source(inp["data"])
  answers = eval_cfg.get("answer_list", None)
  if isinstance(answers, str):
    with tf.io.gfile.GFile(answers) as f:
      answers = [line.strip() for line in f if line.strip()]
  if answers is None:
    answers = source.meta.get("answer_names")
  if not answers:
    raise ValueError("QA evaluation needs an answer list: set evals.<name>.answer_list (strings or a file).")
  return list(answers), source.meta.get("vocab_file")


def tokenize_answers(answers: Sequence[str], tokenizer: vocab_lib.Tokenizer, length: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """[C] strings -> ids [C, length] and mask ([CLS] answer [SEP], clipped or padded), as the training pp does."""
  ids = np.zeros((len(answers), length), np.int32)
  for i, a in enumerate(answers):
    row = tokenizer.to_int(a, bos=True, eos=True)[:length]
    ids[i, :len(row)] = row
  return ids, (ids > 0).astype(np.int32)


class Evaluator:
  """Closed-list video QA accuracy (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    if not hasattr(task, "answer_scores"):
      raise ValueError(f"evals type 'qa': the {type(task).__name__} task has no answer_scores (use svitt_qa).")
    self.config, self.eval_cfg, self.task, self.mesh = config, eval_cfg, task, mesh
    self.answers, vocab_file = answer_list(config, eval_cfg)
    spec = dict(config.input.get("tokenizer") or {"kind": "words"})
    tokenizer = vocab_lib.make_tokenizer(spec, default_vocab_file=vocab_file)
    length = int(config.input.get("max_answer_len", 5))
    self.candidates, self.candidate_mask = tokenize_answers(self.answers, tokenizer, length)
    self._scores = jax.jit(self.task.answer_scores)

  def _collect(self, variables, shuffle: bool) -> dict[str, np.ndarray]:
    seed = int(self.eval_cfg.get("shuffle_seed", 0))
    chunk = int(self.eval_cfg.get("candidate_batch", 64) or 64)
    c = len(self.answers)

    def fn(g):
      video = g["video"]  # [B, V, F, H, W, 3]: views are scored separately and their scores averaged
      b, v, f = video.shape[:3]
      perm = classification.frame_permutations(1, f, seed)[0] if shuffle else np.arange(f)
      video = video[:, :, jnp.asarray(perm)].reshape((b * v,) + video.shape[2:])
      question, qmask = (jnp.repeat(g[k], v, axis=0) for k in ("question", "question_mask"))
      parts = []
      for s in range(0, c, chunk):
        ids, mask = self.candidates[s:s + chunk], self.candidate_mask[s:s + chunk]
        pad = chunk - len(ids) if c > chunk else 0  # one compiled shape per evaluator
        ids, mask = np.pad(ids, ((0, pad), (0, 0))), np.pad(mask, ((0, pad), (0, 0)))
        scores = self._scores(variables, video, question, qmask, jnp.asarray(ids), jnp.asarray(mask))
        parts.append(scores[:, :scores.shape[1] - pad])
      return {"scores": jnp.concatenate(parts, axis=1).reshape(b, v, c).mean(axis=1)}

    return common.collect(self.config, self.eval_cfg.input, self.mesh, fn,
                          keys=("video", "question", "question_mask"), keep=("answer_index",),
                          max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    out = self._collect(variables, shuffle=False)
    if "answer_index" not in out:
      raise KeyError("QA eval batches lack 'answer_index' (sample_qa gives it from 'qa/answer/index').")
    gt = out["answer_index"].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= len(self.answers)):
      raise ValueError(f"answer_index outside the answer list of {len(self.answers)} answers "
                       f"(min {gt.min()}, max {gt.max()}).")
    acc = lambda scores: float(100.0 * np.mean(np.argmax(scores, axis=1) == gt)) if gt.size else 0.0
    metrics = {"accuracy": acc(out["scores"])}
    counts = np.bincount(gt, minlength=len(self.answers))
    metrics["majority_accuracy"] = float(100.0 * counts.max() / max(gt.size, 1))
    if self.eval_cfg.get("shuffle_frames", False):
      metrics["accuracy_shuffled"] = acc(self._collect(variables, shuffle=True)["scores"])
      metrics["accuracy_shuffle_drop"] = metrics["accuracy"] - metrics["accuracy_shuffled"]
    metrics["num_examples"] = float(gt.size)
    logging.info("qa: %d questions in %.1fs at step %d: %s", gt.size, time.time() - start, step,
                 {k: round(v, 2) for k, v in metrics.items()})
    return metrics
