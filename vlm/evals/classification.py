"""Multi-view classification: top-1, top-5 and mAP, with an optional shuffled-frame probe.

Each test video comes as V views (temporal clips x spatial crops: `input.num_clips` x `input.num_crops`, e.g.
4 x 3 in VATT B.5 and TubeViT); the evaluator averages the views' logits (`average='logits'`, the default) or
softmax probabilities (`average='probs'`) and scores the average.

Shuffled-frame probe (SViTT table A8): with `shuffle_frames=True` every view is also evaluated with its frames in a
random order (every clip and view its own permutation, never the identity, from a seeded stream), and the metrics
come back twice, the second set suffixed `_shuffled`, with `<metric>_shuffle_drop` = plain - shuffled (and, for
single-label top-k, its paired standard error `top<k>_shuffle_drop_se`: vlm/evals/frame_shuffle.py). A model that
reads motion loses accuracy; a bag-of-frames model does not.

Config (`config.evals.<name>`):
  type: 'classification'.
  head: the task head to score (default: its first).
  every_steps: run every N training steps (and at the end, and in `--mode=eval`).
  input: overrides of config.input for the test split; batches carry `video` [B, V, F, H, W, 3] (or
    [B, F, H, W, 3]: one view), `label` [B] or multi-hot `labels` [B, C], and `_mask` [B].
  average ['logits' | 'probs'].
  shuffle_frames [False]; shuffle_seed [0].
  max_examples [0 = all].

mAP: per class, the average of the precision at each positive's rank (ties pessimistic), averaged over the
classes that have a positive (the Charades protocol). Single-label runs report it too (one positive per example).
"""
from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import protocols
from vlm.evals import common
from vlm.evals import frame_shuffle
from vlm.evals import metrics as metrics_lib


class Evaluator:
  """Multi-view classification on a test split (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    self.config = config
    self.eval_cfg = eval_cfg
    self.task = task
    self.mesh = mesh
    protocols.require(task, protocols.Classifier, "evals type 'classification'")
    self.head = eval_cfg.get("head", None) or task.head_names[0]
    if self.head not in task.head_names:
      raise ValueError(f"evals head={self.head!r}; the task has heads {task.head_names}.")
    self.average = eval_cfg.get("average", "logits")
    if self.average not in ("logits", "probs"):
      raise ValueError(f"evals average={self.average!r}; expected 'logits' or 'probs'.")
    self._scores = jax.jit(self._scores_fn)

  def _scores_fn(self, variables, video, perm):
    """video [B, V, F, H, W, 3], perm [B, V, F] -> view-averaged scores [B, C]."""
    b, v, f = video.shape[:3]
    video = frame_shuffle.permute_frames(video, perm)
    flat = video.reshape((b * v,) + video.shape[2:])
    logits = self.task.predict_logits(variables, {"video": flat}, head=self.head).reshape(b, v, -1)
    if self.average == "probs":
      logits = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return logits.mean(axis=1)

  def _collect(self, variables, shuffle: bool):
    orders = frame_shuffle.frame_orders(self.eval_cfg, shuffle)

    def fn(g):
      perm = orders(g["video"].shape)
      return {"scores": self._scores(variables, g["video"], jnp.asarray(perm))}

    out = common.collect(self.config, self.eval_cfg.input, self.mesh, fn, keys=("video",),
                         keep=("label", "labels"),
                         max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))
    return out["scores"], out["labels"] if "labels" in out else out["label"]

  @staticmethod
  def metrics(scores: np.ndarray, labels: np.ndarray, suffix: str = "") -> dict[str, float]:
    """top1 / top5 (single label) and mAP from view-averaged scores."""
    out = {}
    if labels.ndim == 1:
      out[f"top1{suffix}"] = metrics_lib.topk_accuracy(scores, labels, 1)
      out[f"top5{suffix}"] = metrics_lib.topk_accuracy(scores, labels, min(5, scores.shape[1]))
      hot = np.eye(scores.shape[1])[labels]
    else:
      hot = labels
    out[f"mAP{suffix}"] = metrics_lib.mean_average_precision(scores, hot)
    return out

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    scores, labels = self._collect(variables, shuffle=False)
    metrics = self.metrics(scores, labels)
    if self.eval_cfg.get("shuffle_frames", False):
      shuffled_scores, _ = self._collect(variables, shuffle=True)
      shuffled = self.metrics(shuffled_scores, labels, suffix="_shuffled")
      for name in list(metrics):
        metrics[f"{name}_shuffle_drop"] = metrics[name] - shuffled[f"{name}_shuffled"]
      if labels.ndim == 1:  # per-example hits: the paired standard error of the top-k drops
        for k in (1, 5):
          k_eff = min(k, scores.shape[1])
          _, metrics[f"top{k}_shuffle_drop_se"] = frame_shuffle.paired_drop(
              metrics_lib.topk_hits(scores, labels, k_eff), metrics_lib.topk_hits(shuffled_scores, labels, k_eff))
      metrics.update(shuffled)
    metrics["num_examples"] = float(len(scores))
    metrics["chance_top1"] = 100.0 / scores.shape[1]
    logging.info("classification (%s): %d examples in %.1fs at step %d: %s", self.head, len(scores),
                 time.time() - start, step, {k: round(v, 2) for k, v in metrics.items()})
    return metrics
