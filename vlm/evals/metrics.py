"""Evaluation metrics on score matrices (numpy): top-k accuracy, mean average precision, retrieval ranks.

Every evaluator scores with these, so a figure means the same in every table. Ties are broken pessimistically
throughout (a distractor with the target's score counts above it), so a model whose scores have collapsed sits
at chance, never at 100%.
"""
from __future__ import annotations

import numpy as np


def topk_hits(scores: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: whether each row's label (label [N] int) is among its k highest scores (scores [N, C])."""
  scores = np.asarray(scores, np.float64)
  target = scores[np.arange(len(label)), label][:, None]
  above = (scores > target).sum(1) + ((scores == target).sum(1) - 1)
  return above < k


def topk_accuracy(scores: np.ndarray, label: np.ndarray, k: int) -> float:
  """Percent of rows whose label is among the k highest scores."""
  return float(100.0 * np.mean(topk_hits(scores, label, k)))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """mAP in percent: per class (column of scores [N, C], multi-hot targets [N, C]), the mean of the precision at
  each positive's rank, averaged over the classes with at least one positive (the Charades protocol)."""
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


def ranks_from_similarity(sim: np.ndarray) -> np.ndarray:
  """0-based rank of the matching item (the diagonal) in each row of `sim`.

  Args:
    sim: [N, N] similarities; row i is query i, column i its ground-truth match.

  Returns:
    [N] int ranks: the number of other columns scoring at least as high as the target.
  """
  sim = np.asarray(sim, np.float64)
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f"Expected a square similarity matrix, got shape {sim.shape}.")
  target = np.diag(sim)[:, None]
  ge = sim >= target
  return ge.sum(axis=1) - 1  # minus the target itself


def retrieval_metrics(sim: np.ndarray, prefix: str = "") -> dict[str, float]:
  """R@1/5/10 (percent), their mean, median rank and mean rank (1-based) for a [N, N] query x gallery score."""
  return metrics_from_ranks(ranks_from_similarity(sim), prefix)


def metrics_from_ranks(ranks: np.ndarray, prefix: str = "") -> dict[str, float]:
  """`retrieval_metrics` from the [N] 0-based ranks of the targets."""
  out = {f"{prefix}R@{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
  out[f"{prefix}R_mean"] = float(np.mean([out[f"{prefix}R@{k}"] for k in (1, 5, 10)]))
  out[f"{prefix}MedR"] = float(np.median(ranks) + 1)
  out[f"{prefix}MeanR"] = float(np.mean(ranks) + 1)
  return out
