"""Zero-shot classification by text prompts: mAP, top-1 and top-5 (HierVL's Charades-Ego protocol).

Every class name is written into a prompt (`prompt`, e.g. '{}' or 'a video of {}'), tokenized as the training
pp tokenizes a caption ([CLS] text [SEP], `config.input.tokenizer`) and embedded once per run with the task's
`embed_text`; every test video is embedded with `embed_video` (the views of a multi-view split averaged and
L2-normalised again, as the retrieval evaluator does); a video's score for a class is the cosine similarity of the
two. Nothing is trained: with `config.total_steps=0` and `--mode=eval` this is the zero-shot row; after
fine-tuning on class-name captions (configs/hiervl/charades_ego.py) the same evaluator gives the fine-tuned row.

Metrics: `mAP` (per class, the mean precision at each positive's rank, over the classes with a positive; ties
pessimistic: vlm/evals/metrics.py), `chance_mAP` (the same with scores that ignore the video: every class's AP is
then its positive rate), `top1` / `top5` (single-label splits; a multi-label example counts as right when any of
its classes is there), `num_examples`, `num_classes`.

Config (`config.evals.<name>`):
  type: 'zero_shot'.
  class_names [None]: the class names (a list, or a text file with one name per line); None: the eval split's
    `class_names` (the built-in dataset has 12: 'circle moving left', ...).
  prompt ['{}']: the template each class name is put into.
  input: overrides of config.input for the test split; batches carry `video` [B, F, H, W, 3] or
    [B, V, F, H, W, 3] and `label` [B] (class index) or multi-hot `labels` [B, C].
  every_steps; max_examples [0 = all].
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from vlm import protocols
from vlm.data import inputs
from vlm.data import sources as sources_lib
from vlm.data import vocab as vocab_lib
from vlm.evals import common
from vlm.evals import metrics as metrics_lib
from vlm.losses import contrastive


def class_list(config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict
               ) -> tuple[list[str], str | None]:
  """(class names, vocab file of the eval split's source)."""
  source = sources_lib.get_source(inputs.input_config(config, eval_cfg.input)["data"])
  names = vocab_lib.read_names(eval_cfg.get("class_names", None))
  if names is None:
    names = source.meta.get("class_names")
  if not names:
    raise ValueError("evals type 'zero_shot' needs class names: set evals.<name>.class_names (a list or a file) "
                     "or use a split whose source has `class_names`.")
  return list(names), source.meta.get("vocab_file")


def prompts(names: Sequence[str], template: str) -> list[str]:
  """The class names written into `template` ('{}' marks where)."""
  if "{}" not in template:
    raise ValueError(f"evals zero_shot prompt={template!r}: expected a template with '{{}}' for the class name.")
  return [template.format(n) for n in names]


def targets_from(out: dict[str, np.ndarray], num_classes: int) -> np.ndarray:
  """[N, C] multi-hot targets from the eval batches' `labels` [N, C] or `label` [N]."""
  if "labels" in out:
    t = np.asarray(out["labels"]) > 0
    if t.shape[1] != num_classes:
      raise ValueError(f"zero_shot: the eval batches' labels have {t.shape[1]} classes, the class list "
                       f"{num_classes}.")
    return t
  if "label" not in out:
    raise KeyError("zero_shot eval batches carry neither `label` nor `labels`: check the evaluator's input pp.")
  label = np.asarray(out["label"]).astype(np.int64).reshape(-1)
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    raise ValueError(f"zero_shot: labels range {label.min()}..{label.max()}, outside the {num_classes} classes.")
  return np.eye(num_classes, dtype=bool)[label]


def zero_shot_metrics(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  """scores [N, C], multi-hot targets [N, C] -> mAP, chance_mAP, top1, top5 (percent)."""
  s = np.asarray(scores, np.float64)
  best = np.full(len(s), np.inf)  # per example, the best 0-based rank of any of its classes (ties pessimistic)
  for c in np.flatnonzero(targets.any(0)):
    target = s[:, c][:, None]
    rank = (s > target).sum(1) + (s == target).sum(1) - 1
    best = np.where(targets[:, c], np.minimum(best, rank), best)
  blind = np.zeros_like(s)  # a scorer that ignores the video: every example gets the same scores
  return {"mAP": metrics_lib.mean_average_precision(s, targets),
          "chance_mAP": metrics_lib.mean_average_precision(blind, targets),
          "top1": float(100.0 * np.mean(best < 1)), "top5": float(100.0 * np.mean(best < 5))}


class Evaluator:
  """Zero-shot classification by text prompts (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    protocols.require(task, protocols.DualEncoder, "evals type 'zero_shot'")
    self.config, self.eval_cfg, self.task, self.mesh = config, eval_cfg, task, mesh
    self.class_names, vocab_file = class_list(config, eval_cfg)
    spec = dict(config.input.get("tokenizer") or {"kind": "words"})
    tokenizer = vocab_lib.make_tokenizer(spec, default_vocab_file=vocab_file)
    length = int(config.input.get("max_text_len", 16))
    self.prompts = prompts(self.class_names, eval_cfg.get("prompt", "{}") or "{}")
    self.ids, self.mask = vocab_lib.tokenize_texts(self.prompts, tokenizer, length)
    self._embed_video = jax.jit(self._embed_video_fn)
    self._embed_text = jax.jit(task.embed_text)

  def _embed_video_fn(self, variables, video):
    """video [B, V, F, H, W, 3] -> [B, E]: the views' embeddings averaged (VATT B.9)."""
    b, v = video.shape[:2]
    emb = self.task.embed_video(variables, video.reshape((b * v,) + video.shape[2:]))
    norm = contrastive.l2_normalize
    return norm(norm(emb.reshape(b, v, -1)).mean(axis=1))

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    classes = np.asarray(contrastive.l2_normalize(self._embed_text(variables, self.ids, self.mask)))  # [C, E]
    out = common.collect(self.config, self.eval_cfg.input, self.mesh,
                         lambda g: {"video": self._embed_video(variables, g["video"])}, keys=("video",),
                         keep=("label", "labels"), max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))
    targets = targets_from(out, len(self.class_names))
    metrics = zero_shot_metrics(out["video"] @ classes.T, targets)
    metrics["num_examples"] = float(len(targets))
    metrics["num_classes"] = float(len(self.class_names))
    logging.info("zero_shot: %d videos x %d classes in %.1fs at step %d: %s", len(targets), len(self.class_names),
                 time.time() - start, step, {k: round(v, 2) for k, v in metrics.items()})
    return metrics
