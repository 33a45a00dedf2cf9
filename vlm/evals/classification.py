"""Multi-view classification: top-1, top-5 and mAP, with an optional shuffled-frame probe.

Each test video comes as V views (temporal clips x spatial crops: `input.num_clips` x `input.num_crops`, e.g.
4 x 3 in VATT B.5 and TubeViT); the evaluator averages the views' logits (`average='logits'`, the default) or
softmax probabilities (`average='probs'`) and scores the average.

Shuffled-frame probe (SViTT table A8): with `shuffle_frames=True` every view is also evaluated with its frames in a
random order (every clip and view its own permutation, never the identity, from a seeded stream), and the metrics
come back twice, the second set suffixed `_shuffled`, with `<metric>_shuffle_drop` = plain - shuffled (and, for
single-label top-k, its paired standard error `top<k>_shuffle_drop_se`: `common.paired_drop`). A model that
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
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.evals import common


def topk_hits(scores: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: whether each row's label is among its k highest scores (ties pessimistic)."""
  scores = np.asarray(scores, np.float64)
  target = scores[np.arange(len(label)), label][:, None]
  above = (scores > target).sum(1) + ((scores == target).sum(1) - 1)
  return above < k


def topk_accuracy(scores: np.ndarray, label: np.ndarray, k: int) -> float:
  """Percent of rows whose label is among the k highest scores (ties pessimistic)."""
  return float(100.0 * np.mean(topk_hits(scores, label, k)))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """mAP in percent over the classes with at least one positive; `targets` [N, C] multi-hot."""
  scores = np.asarray(scores, np.float64)
  targets = np.asarray(targets) > 0
  aps = []
  for c in range(scores.shape[1]):
    pos = targets[:, c]
    if not pos.any():
      continue
    s = scores[:, c]
    precisions = []
    for i in np.flatnonzero(pos):
      rank = (s >= s[i]).sum()  # pessimistic: ties count above
      hits = (s[pos] >= s[i]).sum()
      precisions.append(hits / rank)
    aps.append(np.mean(precisions))
  return float(100.0 * np.mean(aps)) if aps else 0.0


def frame_permutations(rng: np.random.Generator, batch_shape: tuple[int, ...], num_frames: int) -> np.ndarray:
  """[*batch_shape, F] int32 random frame orders, one per clip (and view), never the identity when F > 1.

  Why one per clip: a single fixed order shared by every clip can keep much of the temporal order (e.g. [2, 0, 1,
  3] for F = 4 still runs forwards overall), so a probe with it under-states what a model reads from order.
  """
  base = np.broadcast_to(np.arange(num_frames, dtype=np.int32), tuple(batch_shape) + (num_frames,))
  perms = rng.permuted(base, axis=-1)
  if num_frames > 1:
    flat = perms.reshape(-1, num_frames)
    while (same := np.all(flat == np.arange(num_frames), axis=-1)).any():
      flat[same] = rng.permuted(flat[same], axis=-1)
  return perms


def permute_frames(video: jax.Array, perm: jax.Array) -> jax.Array:
  """video [B, V, F, ...] with each clip's frames in the order perm [B, V, F] gives."""
  index = perm.reshape(perm.shape + (1,) * (video.ndim - 3))
  return jnp.take_along_axis(video, index, axis=2)


def frame_orders(eval_cfg: ml_collections.ConfigDict, shuffle: bool) -> Callable[[tuple[int, ...]], np.ndarray]:
  """A function from a [B, V, F, ...] batch shape to its [B, V, F] frame orders: in order, or with `shuffle`
  one random order per clip from a stream seeded by `eval_cfg.shuffle_seed` (drawn batch by batch, in the same
  sequence on every host)."""
  rng = np.random.default_rng(int(eval_cfg.get("shuffle_seed", 0))) if shuffle else None

  def orders(video_shape: tuple[int, ...]) -> np.ndarray:
    b, v, f = video_shape[:3]
    if rng is None:
      return np.broadcast_to(np.arange(f, dtype=np.int32), (b, v, f))
    return frame_permutations(rng, (b, v), f)

  return orders


class Evaluator:
  """Multi-view classification on a test split (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    self.config = config
    self.eval_cfg = eval_cfg
    self.task = task
    self.mesh = mesh
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
    video = permute_frames(video, perm)
    flat = video.reshape((b * v,) + video.shape[2:])
    logits = self.task.predict_logits(variables, {"video": flat}, head=self.head).reshape(b, v, -1)
    if self.average == "probs":
      logits = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return logits.mean(axis=1)

  def _collect(self, variables, shuffle: bool):
    orders = frame_orders(self.eval_cfg, shuffle)

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
      out[f"top1{suffix}"] = topk_accuracy(scores, labels, 1)
      out[f"top5{suffix}"] = topk_accuracy(scores, labels, min(5, scores.shape[1]))
      hot = np.eye(scores.shape[1])[labels]
    else:
      hot = labels
    out[f"mAP{suffix}"] = mean_average_precision(scores, hot)
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
          _, metrics[f"top{k}_shuffle_drop_se"] = common.paired_drop(
              topk_hits(scores, labels, k_eff), topk_hits(shuffled_scores, labels, k_eff))
      metrics.update(shuffled)
    metrics["num_examples"] = float(len(scores))
    metrics["chance_top1"] = 100.0 / scores.shape[1]
    logging.info("classification (%s): %d examples in %.1fs at step %d: %s", self.head, len(scores),
                 time.time() - start, step, {k: round(v, 2) for k, v in metrics.items()})
    return metrics
