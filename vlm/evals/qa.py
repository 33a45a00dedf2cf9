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
  answer_groups [None]: {group name: [answers]} for accuracy per question kind (`accuracy/<group>`, and
    `accuracy_shuffle_drop/<group>` with the probe), grouping questions by their true answer; None takes the
    dataset's own groups where it has them (the built-in dataset: direction, speed, shape, colour, count, yes/no;
    only 'direction' needs the frame order), {} turns them off.
  question_kinds [None]: names of the question kinds that batches carry as `question_kind` (`sample_qa` reads
    them from `qa/kind/index`, e.g. AGQA's question types); where batches carry kinds, `accuracy/<kind>` groups
    questions by kind instead of by answer (an order question's answer is an ordinary colour). None takes the
    dataset's own names (the built-in dataset: `builtin.QUESTION_KINDS`, with 'colour order'), [] turns kinds off.
  candidate_batch [64]: candidates scored per call.
  shuffle_frames [False], shuffle_seed [0]: the shuffled-frame probe (SViTT table A8): `accuracy_shuffled`,
    `accuracy_shuffle_drop` and its paired standard error `accuracy_shuffle_drop_se` (`frame_shuffle.paired_drop`).
  max_examples [0 = all].

Metrics: accuracy (percent) and accuracy/<group>, majority_accuracy (always answering the test split's most
frequent answer), num_examples; with the probe accuracy_shuffled[/<group>], accuracy_shuffle_drop[/<group>] and
accuracy_shuffle_drop_se[/<group>].
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import protocols
from vlm.data import inputs
from vlm.data import sources as sources_lib
from vlm.data import vocab as vocab_lib
from vlm.evals import common
from vlm.evals import frame_shuffle


def answer_list(config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict
                ) -> tuple[list[str], str, dict[str, list[str]], list[str]]:
  """(candidate answers, vocab file of the eval split's source, answer groups, question kind names)."""
  inp = inputs.input_config(config, eval_cfg.input)
  source = sources_lib.get_source(inp["data"])
  answers = vocab_lib.read_names(eval_cfg.get("answer_list", None))
  if answers is None:
    answers = source.meta.get("answer_names")
  if not answers:
    raise ValueError("QA evaluation needs an answer list: set evals.<name>.answer_list (strings or a file).")
  groups = eval_cfg.get("answer_groups", None)
  groups = source.meta.get("answer_groups", {}) if groups is None else dict(groups)
  for name, members in groups.items():
    unknown = [a for a in members if a not in answers]
    if unknown:
      raise ValueError(f"answer_groups[{name!r}] names answers not in the answer list: {unknown}.")
  kinds = eval_cfg.get("question_kinds", None)
  kinds = source.meta.get("question_kinds", []) if kinds is None else kinds
  return list(answers), source.meta.get("vocab_file"), {k: list(v) for k, v in groups.items()}, list(kinds)


def accuracies(scores: np.ndarray, gt: np.ndarray, answers: Sequence[str], groups: dict[str, Sequence[str]],
               kinds: np.ndarray | None = None, kind_names: Sequence[str] = ()) -> dict[str, float]:
  """Percent of questions whose best-scoring candidate (scores [Q, C]) is the true one (gt [Q]): overall as
  `accuracy`, and per group as `accuracy/<group>` (see `question_sets`; groups with no question are left out)."""
  return _percent_correct(np.argmax(scores, axis=1) == gt, question_sets(gt, answers, groups, kinds, kind_names))


def _percent_correct(correct: np.ndarray, sets: dict[str, np.ndarray]) -> dict[str, float]:
  """{metric name: percent of `correct` [Q] bool within each question set [Q] bool}."""
  return {name: float(100.0 * correct[sel].mean()) if correct.size else 0.0 for name, sel in sets.items()}


def question_sets(gt: np.ndarray, answers: Sequence[str], groups: dict[str, Sequence[str]],
                  kinds: np.ndarray | None = None, kind_names: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """{metric name: [Q] bool}: every question as `accuracy`, and `accuracy/<group>` for each group that has a
  question: the question kinds where `kinds` [Q] (ids into `kind_names`, -1 = none) and names are given, else
  the groups of true answers."""
  sets = {"accuracy": np.ones(gt.shape, bool)}
  if kinds is not None and len(kind_names):
    if kinds.size and kinds.max() >= len(kind_names):
      raise ValueError(f"question_kind {kinds.max()} outside the {len(kind_names)} kinds {list(kind_names)}.")
    for k, name in enumerate(kind_names):
      if (kinds == k).any():
        sets[f"accuracy/{name}"] = kinds == k
    return sets
  for name, members in groups.items():
    in_group = np.isin(gt, [answers.index(a) for a in members])
    if in_group.any():
      sets[f"accuracy/{name}"] = in_group
  return sets


class Evaluator:
  """Closed-list video QA accuracy (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    protocols.require(task, protocols.AnswerScorer, "evals type 'qa' (task 'answer_decoding')")
    self.config, self.eval_cfg, self.task, self.mesh = config, eval_cfg, task, mesh
    self.answers, vocab_file, self.groups, self.kind_names = answer_list(config, eval_cfg)
    spec = dict(config.input.get("tokenizer") or {"kind": "words"})
    tokenizer = vocab_lib.make_tokenizer(spec, default_vocab_file=vocab_file)
    length = int(config.input.get("max_answer_len", 5))
    self.candidates, self.candidate_mask = vocab_lib.tokenize_texts(self.answers, tokenizer, length)
    self._scores = jax.jit(self.task.answer_scores)

  def _collect(self, variables, shuffle: bool) -> dict[str, np.ndarray]:
    orders = frame_shuffle.frame_orders(self.eval_cfg, shuffle)
    chunk = int(self.eval_cfg.get("candidate_batch", 64) or 64)
    c = len(self.answers)

    def fn(g):
      video = g["video"]  # [B, V, F, H, W, 3]: views are scored separately and their scores averaged
      b, v, f = video.shape[:3]
      video = frame_shuffle.permute_frames(video, jnp.asarray(orders(video.shape)))
      video = video.reshape((b * v,) + video.shape[2:])
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
                          keys=("video", "question", "question_mask"), keep=("answer_index", "question_kind"),
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
    kinds = out["question_kind"].astype(np.int64) if "question_kind" in out else None
    sets = question_sets(gt, self.answers, self.groups, kinds, self.kind_names)
    correct = np.argmax(out["scores"], axis=1) == gt
    metrics = _percent_correct(correct, sets)
    counts = np.bincount(gt, minlength=len(self.answers))
    metrics["majority_accuracy"] = float(100.0 * counts.max() / max(gt.size, 1))
    if self.eval_cfg.get("shuffle_frames", False):
      correct_shuffled = np.argmax(self._collect(variables, shuffle=True)["scores"], axis=1) == gt
      shuffled = _percent_correct(correct_shuffled, sets)
      for k, sel in sets.items():
        drop, se = frame_shuffle.paired_drop(correct[sel], correct_shuffled[sel])
        metrics[k.replace("accuracy", "accuracy_shuffled", 1)] = shuffled[k]
        metrics[k.replace("accuracy", "accuracy_shuffle_drop", 1)] = drop
        metrics[k.replace("accuracy", "accuracy_shuffle_drop_se", 1)] = se
    metrics["num_examples"] = float(gt.size)
    logging.info("qa: %d questions in %.1fs at step %d: %s", gt.size, time.time() - start, step,
                 {k: round(v, 2) for k, v in metrics.items()})
    return metrics
