"""Long-term anticipation: edit distance at Z over K candidate sequences (the Ego4D LTA metric).

Each eval example is an episode (a group of N clips, `input.group`): the task's `anticipate` reads its first
`observed` clips and gives, for each of the next Z clips, log-probabilities of the verb and noun classes
(vlm/tasks/anticipation.py). From them come K candidate sequences per target: the first takes the most likely
class at every step, the other K - 1 are drawn from the predicted distributions (a generator seeded with `seed`,
so every evaluation draws the same). A sequence's score is its Levenshtein distance to the true Z classes divided
by Z; an episode's is the best of its K candidates; the metric is the mean over episodes (lower is better).
`action` pairs the verb and the noun of a step (both must match), from candidate k of each.

Metrics: `ED_<target>` for verb, noun and (with both) action; `ED_<target>_prior`: the same for a video-blind
predictor with the same K, whose distribution at every step is the class frequency of the test targets (its first
candidate the most frequent class throughout; the reference a model must beat); `top1_<target>`: the next clip's class
from the first candidate; `num_episodes`, `skipped_episodes` (episodes with fewer than observed + Z real clips).

Config (`config.evals.<name>`):
  type: 'anticipation'.
  input: the test split as groups (`group=dict(size=N, key='episode/id', remainder='pad')`); batches carry
    video [B, N, T, H, W, 3], the targets' classes [B, N] and group_mask [B, N].
  num_candidates [5] (K, as Ego4D); seed [0]; every_steps; max_examples [0 = all episodes].
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from vlm.evals import common


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
  """Levenshtein distance (insertions, deletions, substitutions, each 1) between two sequences."""
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


def best_edit_distance(candidates: np.ndarray, truth: np.ndarray) -> float:
  """candidates [K, Z], truth [Z] -> min over k of edit_distance / Z."""
  z = len(truth)
  return min(edit_distance(list(c), list(truth)) for c in candidates) / z


def candidates_from(logp: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """log-probabilities [Z, C] -> [K, Z] class sequences: the argmax first, then K - 1 draws."""
  probs = np.exp(logp - logp.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = [np.argmax(logp, -1)]
  for _ in range(k - 1):
    out.append(np.array([rng.choice(len(p), p=p) for p in probs]))
  return np.stack(out)


class Evaluator:
  """Ego4D-style long-term anticipation (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    if not hasattr(task, "anticipate") or not hasattr(task, "split"):
      raise TypeError("evals type 'anticipation' needs a task with `anticipate` and `split` "
                      "(config.task.name='anticipation').")
    self.config, self.eval_cfg, self.task, self.mesh = config, eval_cfg, task, mesh
    self.k = int(eval_cfg.get("num_candidates", 5) or 5)
    if self.k < 1:
      raise ValueError(f"evals anticipation num_candidates={self.k}: expected >= 1.")
    self.targets = tuple(task.objective.targets)
    self._anticipate = jax.jit(task.anticipate)

  @staticmethod
  def _prior_logp(truth: np.ndarray) -> np.ndarray:
    """[E, Z] test classes -> [Z, C] log class frequencies, the same at every step (a video-blind predictor)."""
    counts = np.bincount(truth.reshape(-1), minlength=int(truth.max()) + 1).astype(np.float64)
    logp = np.log(np.maximum(counts / counts.sum(), 1e-12))
    return np.tile(logp, (truth.shape[1], 1))

  def _fn(self, variables, g):
    video, mask, labels, target_mask = self.task.split(g)
    out = {f"logp_{t}": v for t, v in self._anticipate(variables, video, mask).items()}
    out.update({f"truth_{t}": y for t, y in labels.items()})
    out["target_mask"] = target_mask
    return out

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    out = common.collect(self.config, self.eval_cfg.input, self.mesh, lambda g: self._fn(variables, g),
                         keys=("video", "group_mask") + self.targets,
                         max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))
    complete = np.all(out["target_mask"] > 0, axis=1)
    for t in self.targets:
      complete &= np.all(out[f"truth_{t}"] >= 0, axis=1)
    episodes = np.flatnonzero(complete)
    if not len(episodes):
      raise ValueError("anticipation: no test episode has observed + horizon real clips; check input.group.size "
                       "and the split's episode lengths.")
    rng = np.random.default_rng(int(self.eval_cfg.get("seed", 0) or 0))
    metrics: dict[str, float] = {}
    cands = {t: [candidates_from(out[f"logp_{t}"][i], self.k, rng) for i in episodes] for t in self.targets}
    truth = {t: out[f"truth_{t}"][episodes] for t in self.targets}
    prior = {t: [candidates_from(self._prior_logp(truth[t]), self.k, rng) for _ in episodes] for t in self.targets}
    for t in self.targets:
      metrics[f"ED_{t}"] = float(np.mean([best_edit_distance(c, y) for c, y in zip(cands[t], truth[t])]))
      metrics[f"ED_{t}_prior"] = float(np.mean([best_edit_distance(c, y) for c, y in zip(prior[t], truth[t])]))
      metrics[f"top1_{t}"] = float(100.0 * np.mean([c[0, 0] == y[0] for c, y in zip(cands[t], truth[t])]))
    if set(self.targets) == {"verb", "noun"}:
      pair = lambda v, n: v * 100_000 + n  # one token per (verb, noun)
      metrics["ED_action"] = float(np.mean([
          best_edit_distance(pair(cv, cn), pair(yv, yn))
          for cv, cn, yv, yn in zip(cands["verb"], cands["noun"], truth["verb"], truth["noun"])]))
      metrics["ED_action_prior"] = float(np.mean([
          best_edit_distance(pair(cv, cn), pair(yv, yn))
          for cv, cn, yv, yn in zip(prior["verb"], prior["noun"], truth["verb"], truth["noun"])]))
    metrics["num_episodes"] = float(len(episodes))
    metrics["skipped_episodes"] = float(len(complete) - len(episodes))
    logging.info("anticipation: %d episodes (%d skipped) in %.1fs at step %d: %s", len(episodes),
                 len(complete) - len(episodes), time.time() - start, step,
                 {k: round(v, 3) for k, v in metrics.items()})
    return metrics
