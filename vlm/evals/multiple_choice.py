"""Multiple-choice video-language accuracy over episodes: EgoMCQ and SummaryMCQ (HierVL table 1).

Each eval example is one episode, read as a group of N consecutive clips (`input.group`, vlm/data/grouping.py):
video [N, T, H, W, 3], text / text_mask [N, (1,) L] (each clip's narration), summary / summary_mask [(N,) (1,) L]
(the episode's summary) and group_mask [N] (0 for padding clips). The test split's episodes are embedded once;
then every question picks the best of `num_candidates` answers by cosine similarity:

  summary       query: an episode's summary (f_n); candidates: Agg(f_v(clips)) of that episode and of
                `num_candidates - 1` other episodes (the task's `embed_episode`). SummaryMCQ.
  clip_inter    query: a narration; candidates: its own clip and one clip of each of `num_candidates - 1` other
                episodes. EgoMCQ inter-video.
  clip_intra    query: a narration; candidates: its own clip and other clips of the SAME episode, up to
                `num_candidates` in all (fewer when the episode has fewer real clips; `clip_intra_chance` says
                what chance is then). EgoMCQ intra-video: only what happens in the clip tells them apart.

The distractors are drawn by a generator seeded with `seed`, so every evaluation of a run (and of any run on the
same split) asks the same questions. A question counts as right only when the true answer scores strictly above
every distractor (ties are wrong), so collapsed embeddings score 0, not chance.

Metrics: `<question>_accuracy` (%), `<question>_accuracy_se` (its binomial standard error), `<question>_chance`
(%), `<question>_questions`; with the summary question also `summary_narration_gap`: how much closer (cosine)
each summary is to the mean of its own episode's narration embeddings than to other episodes' (HierVL
supplement section 2's t-SNE, as one number: 0 when summaries ignore their children).

Config (`config.evals.<name>`):
  type: 'multiple_choice'.
  input: the test split as groups: data, `group=dict(size=N, key='episode/id', remainder='pad')`, pp giving the
    keys above.
  questions [('summary', 'clip_inter', 'clip_intra')]: which to ask.
  num_candidates [5]: answers per question (the benchmarks' 5).
  seed [0]; every_steps; max_examples [0 = all episodes].
"""
from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from vlm import protocols
from vlm.evals import common

QUESTIONS = ("summary", "clip_inter", "clip_intra")


def accuracy(correct: np.ndarray) -> tuple[float, float]:
  """Per-question 0/1 -> (accuracy %, its binomial standard error %)."""
  correct = np.asarray(correct, np.float64)
  n = max(len(correct), 1)
  p = float(correct.mean()) if len(correct) else 0.0
  return 100.0 * p, 100.0 * float(np.sqrt(p * (1.0 - p) / n))


def answer(query: np.ndarray, candidates: np.ndarray) -> bool:
  """query [E], candidates [C, E] with the true answer at row 0 -> right (strictly the best score)."""
  scores = candidates @ query
  return bool(scores[0] > scores[1:].max()) if len(scores) > 1 else True


def summary_questions(summary: np.ndarray, episode: np.ndarray, num_candidates: int,
                      rng: np.random.Generator) -> np.ndarray:
  """[E, D] summary and episode embeddings -> [E] right / wrong, each against `num_candidates - 1` others."""
  e = len(summary)
  if e < num_candidates:
    raise ValueError(f"multiple_choice: {e} episodes cannot give {num_candidates} candidates per question.")
  out = np.zeros(e, bool)
  for i in range(e):
    others = rng.choice(np.delete(np.arange(e), i), num_candidates - 1, replace=False)
    out[i] = answer(summary[i], episode[np.concatenate([[i], others])])
  return out


def summary_narration_gap(summary: np.ndarray, narration: np.ndarray, real: np.ndarray) -> float:
  """[E, D] summaries, [E, N, D] narrations, [E, N] real mask -> mean_i cos(s_i, m_i) - mean_{j != i} cos(s_i, m_j),
  m_j the normalised mean of episode j's real narration embeddings."""
  w = real[..., None].astype(np.float64)
  mean = (narration * w).sum(1) / np.maximum(w.sum(1), 1.0)
  mean = mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
  cos = summary @ mean.T  # [E, E]
  e = len(cos)
  own = np.diag(cos)
  others = (cos.sum(1) - own) / max(e - 1, 1)
  return float(np.mean(own - others))


def clip_questions(narration: np.ndarray, clip: np.ndarray, real: np.ndarray, num_candidates: int,
                   rng: np.random.Generator, *, intra: bool) -> tuple[np.ndarray, np.ndarray]:
  """[E, N, D] narration / clip embeddings, [E, N] real-clip mask -> ([Q] right / wrong, [Q] candidates asked).

  inter: each real clip's narration against its clip and one random real clip of each of `num_candidates - 1`
  other episodes; intra: against the other real clips of its own episode (up to `num_candidates` in all).
  """
  e = len(narration)
  right, asked = [], []
  episodes_with_clips = np.flatnonzero(real.any(1))
  for i in range(e):
    for k in np.flatnonzero(real[i]):
      if intra:
        others = np.flatnonzero(real[i] & (np.arange(real.shape[1]) != k))  # its episode's other real clips
        if not len(others):
          continue
        picked = rng.choice(others, min(num_candidates - 1, len(others)), replace=False)
        candidates = clip[i, np.concatenate([[k], picked])]
      else:
        pool = episodes_with_clips[episodes_with_clips != i]
        if len(pool) < num_candidates - 1:
          raise ValueError(f"multiple_choice: {len(pool) + 1} episodes cannot give {num_candidates} candidates.")
        picked = rng.choice(pool, num_candidates - 1, replace=False)
        rows = [clip[j, rng.choice(np.flatnonzero(real[j]))] for j in picked]
        candidates = np.stack([clip[i, k]] + rows)
      right.append(answer(narration[i, k], candidates))
      asked.append(len(candidates))
  return np.asarray(right, bool), np.asarray(asked, np.int64)


class Evaluator:
  """EgoMCQ / SummaryMCQ-style multiple choice on grouped episodes (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    self.config = config
    self.eval_cfg = eval_cfg
    self.task = task
    self.mesh = mesh
    self.questions = tuple(eval_cfg.get("questions", QUESTIONS) or QUESTIONS)
    bad = [q for q in self.questions if q not in QUESTIONS]
    if bad or not self.questions:
      raise ValueError(f"evals type 'multiple_choice': questions={self.questions!r}; expected names from "
                       f"{QUESTIONS}.")
    self.num_candidates = int(eval_cfg.get("num_candidates", 5))
    if self.num_candidates < 2:
      raise ValueError(f"evals type 'multiple_choice': num_candidates={self.num_candidates}; expected >= 2.")
    if "summary" in self.questions:
      protocols.require(task, protocols.EpisodeEncoder, "evals type 'multiple_choice' with the summary question")
    else:
      protocols.require(task, protocols.DualEncoder, "evals type 'multiple_choice'")
    if not (eval_cfg.get("input") or {}).get("group"):
      raise ValueError("evals type 'multiple_choice' reads episodes: set its input.group (e.g. dict(size=N, "
                       "key='episode/id', remainder='pad')).")
    self._embed = jax.jit(self._embed_fn)

  def _embed_fn(self, variables, video, text, text_mask, summary, summary_mask, group_mask):
    e, n = video.shape[:2]
    flat = video.reshape((e * n,) + video.shape[2:])
    first = lambda x: x[..., 0, :] if x.ndim == 4 else x  # [E, N, 1, L] -> [E, N, L]
    text, text_mask = first(text), first(text_mask)
    out = {"clip": self.task.embed_video(variables, flat).reshape(e, n, -1),
           "narration": self.task.embed_text(variables, text.reshape(e * n, -1),
                                             text_mask.reshape(e * n, -1)).reshape(e, n, -1),
           "real": group_mask}
    if "summary" in self.questions:
      while summary.ndim > 2:  # [E, N, (1,) L]: every clip carries the episode's summary; row 0 is the group's
        summary, summary_mask = summary[:, 0], summary_mask[:, 0]
      out["summary"] = self.task.embed_text(variables, summary, summary_mask)
      out["episode"] = self.task.embed_episode(variables, video, group_mask)
    return out

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    keys = ("video", "text", "text_mask", "group_mask") + (("summary", "summary_mask")
                                                            if "summary" in self.questions else ())

    def fn(g):
      summary = g.get("summary", g["text"])
      return self._embed(variables, g["video"], g["text"], g["text_mask"], summary,
                         g.get("summary_mask", g["text_mask"]), g["group_mask"])

    out = common.collect(self.config, self.eval_cfg.input, self.mesh, fn, keys=keys,
                         max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))
    real = np.asarray(out["real"]) > 0
    seed = int(self.eval_cfg.get("seed", 0) or 0)
    metrics = {}
    for index, question in enumerate(self.questions):
      rng = np.random.default_rng([seed, index])
      if question == "summary":
        right = summary_questions(out["summary"], out["episode"], self.num_candidates, rng)
        asked = np.full(len(right), self.num_candidates)
      else:
        right, asked = clip_questions(out["narration"], out["clip"], real, self.num_candidates, rng,
                                      intra=question == "clip_intra")
      metrics[f"{question}_accuracy"], metrics[f"{question}_accuracy_se"] = accuracy(right)
      metrics[f"{question}_chance"] = float(np.mean(100.0 / asked)) if len(asked) else 0.0
      metrics[f"{question}_questions"] = float(len(right))
    if "summary" in self.questions:
      metrics["summary_narration_gap"] = summary_narration_gap(out["summary"], out["narration"], real)
    logging.info("multiple_choice: %d episodes in %.1fs at step %d: %s", len(real), time.time() - start, step,
                 {k: round(v, 2) for k, v in metrics.items() if k.endswith("accuracy")})
    return metrics
