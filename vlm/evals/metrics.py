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


# ------------------------------------------------------------------ graded relevance (EPIC-KITCHENS-100 MIR)


def tag_relevance(nouns_q: np.ndarray, verbs_q: np.ndarray, nouns_g: np.ndarray, verbs_g: np.ndarray
                  ) -> np.ndarray:
  """EPIC-KITCHENS-100 multi-instance retrieval's semantic relevance of every query to every gallery item.

  Args:
    nouns_q, verbs_q: [Q, Cn], [Q, Cv] multi-hot noun / verb classes of the queries.
    nouns_g, verbs_g: [G, Cn], [G, Cv] the same for the gallery.

  Returns:
    [Q, G] in [0, 1]: the mean of the IoU of the two verb sets and the IoU of the two noun sets (an empty union
    counts 0), so 1 means the same verbs and the same nouns.
  """
  def set_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = (np.asarray(a) > 0).astype(np.float64), (np.asarray(b) > 0).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

  return 0.5 * (set_iou(verbs_q, verbs_g) + set_iou(nouns_q, nouns_g))


def _ranked_relevance(sim: np.ndarray, relevance: np.ndarray) -> np.ndarray:
  """[Q, G] relevance of each row's items in the order of decreasing score; among equal scores the least
  relevant first (ties pessimistic)."""
  sim, relevance = np.asarray(sim, np.float64), np.asarray(relevance, np.float64)
  if sim.shape != relevance.shape or sim.ndim != 2:
    raise ValueError(f"Expected [Q, G] scores and relevance of one shape, got {sim.shape} and {relevance.shape}.")
  order = np.lexsort((relevance, -sim), axis=-1)
  return np.take_along_axis(relevance, order, axis=1)


def relevance_average_precision(sim: np.ndarray, relevance: np.ndarray) -> float:
  """mAP in percent over the rows of sim [Q, G] with binary relevance `relevance == 1` (EPIC-KITCHENS-100 MIR):
  a row's AP is the mean precision at the rank of each fully relevant item; rows without one are left out."""
  hits = np.isclose(_ranked_relevance(sim, relevance), 1.0)
  found = np.cumsum(hits, axis=1)
  precision = found / np.arange(1, hits.shape[1] + 1)
  n = hits.sum(1)
  rows = n > 0
  if not rows.any():
    return 0.0
  return float(100.0 * np.mean((precision * hits).sum(1)[rows] / n[rows]))


def normalized_dcg(sim: np.ndarray, relevance: np.ndarray) -> float:
  """nDCG in percent over the rows of sim [Q, G] with graded relevance [Q, G] (EPIC-KITCHENS-100 MIR).

  A row's DCG sums rel_r / log2(r + 1) over its first k retrieved items (rank r from 1), k = the number of items
  with relevance > 0 (so a ranking cannot gain by a long tail); nDCG divides by the DCG of the ideal order. Rows
  with no relevant item are left out.
  """
  ranked = _ranked_relevance(sim, relevance)
  rel = np.asarray(relevance, np.float64)
  k = (rel > 0).sum(1)
  discount = 1.0 / np.log2(np.arange(2, rel.shape[1] + 2))
  within = np.arange(rel.shape[1])[None, :] < k[:, None]
  dcg = (ranked * discount * within).sum(1)
  ideal = (-np.sort(-rel, axis=1) * discount * within).sum(1)
  rows = k > 0
  if not rows.any():
    return 0.0
  return float(100.0 * np.mean(dcg[rows] / ideal[rows]))


def relevance_metrics(sim: np.ndarray, relevance: np.ndarray, prefix: str = "") -> dict[str, float]:
  """`<prefix>mAP` and `<prefix>nDCG` of a [Q, G] score matrix against graded relevance [Q, G]."""
  return {f"{prefix}mAP": relevance_average_precision(sim, relevance),
          f"{prefix}nDCG": normalized_dcg(sim, relevance)}
