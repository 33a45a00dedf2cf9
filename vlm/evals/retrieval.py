"""Text-to-video (and video-to-text) retrieval: R@1/5/10, their mean, median and mean rank.

Stage 1 (every dual-encoder family): the evaluator embeds every test video and its caption with the task's
`embed_video` / `embed_text` and ranks all videos for each caption by cosine similarity. As in VATT appendix B.9,
a video's embedding is the average of the embeddings of several uniformly sampled clips (views), L2-normalised
again after averaging.

Stage 2 (`rerank_k` > 0; SViTT / Singularity, TW-BERT): the top k candidates of each query are re-scored by the
task's cross-modal matcher (`match_scores`: the VTM head on the multimodal encoder) and ranked above all the
others by that score; the rest keep their similarity order. Both rankings are reported: `vtc_*` (stage 1 alone)
and the re-ranked metrics without prefix. The release re-ranks the top 128 (`k_test`).

Shuffled-frame probe (SViTT table A8): with `shuffle_frames=True` the whole evaluation runs again with the frames
of every clip in a random order of its own (a seeded stream; never the identity); `<recall>_shuffled` and
`<recall>_shuffle_drop` (plain - shuffled) of the final ranking's R@k and R_mean report how much the model relies on
frame order; `<recall>_shuffle_drop_se` is each drop's paired standard error over the queries (`frame_shuffle.paired_drop`;
a query's R_mean score is the mean of its three hits).

Graded relevance (`relevance='noun_verb'`; EPIC-KITCHENS-100 multi-instance retrieval): every test clip carries
multi-hot `nouns` and `verbs` (its narration's classes) and the relevance of a caption to a clip is the mean of the
IoU of their verb sets and of their noun sets (`metrics.tag_relevance`), so many clips answer one caption. The
distinct captions are the queries (the benchmark ranks each sentence once) and every clip the gallery, and back:
`t2v_mAP` / `v2t_mAP` (binary relevance: relevance 1), `t2v_nDCG` / `v2t_nDCG` (graded), `mAP` and `nDCG` their
means, `chance_mAP` / `chance_nDCG` the same for random scores (seeded), `num_queries` the distinct captions.

Config (`config.evals.<name>`):
  type: 'retrieval'.
  every_steps: run every N training steps (and at the end of training, and in `--mode=eval`).
  input: overrides of `config.input` for the test split (split, pp, batch_size, ...); batches carry `video`
    [B, F, H, W, 3] or [B, V, F, H, W, 3], `text` [B, K, L] or [B, L] and `text_mask` alike. The first caption
    (k = 0) is the query.
  rerank_k [0]: re-rank the top k with the task's `match_scores` (0: similarity only).
  rerank_batch [256]: pairs per matcher call.
  shuffle_frames [False]; shuffle_seed [0].
  relevance [None | 'noun_verb']: add the graded-relevance metrics above (batches then also carry `nouns` [B, Cn]
    and `verbs` [B, Cv]).
  max_examples: optional cap on the number of test pairs (0 = all).

Ties are broken pessimistically (a distractor with the same score ranks above the target), so a model whose
embeddings have collapsed scores at chance, never at 100%.
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
from vlm.losses import contrastive


def rerank(sim: np.ndarray, k: int, score_pairs) -> np.ndarray:
  """Scores with each row's top-k columns re-scored by `score_pairs` and placed above the other columns.

  Args:
    sim: [Q, G] first-stage similarities.
    k: candidates per query (clipped to G).
    score_pairs: (query indices [P], gallery indices [P]) -> [P] scores (higher = better match).

  Returns:
    [Q, G] scores: top-k entries = offset + matcher score, the rest keep `sim` (offset puts every re-ranked
    candidate above every other one).
  """
  sim = np.asarray(sim, np.float64)
  k = min(int(k), sim.shape[1])
  top = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # [Q, k]
  rows = np.repeat(np.arange(sim.shape[0]), k)
  scores = np.asarray(score_pairs(rows, top.reshape(-1)), np.float64).reshape(sim.shape[0], k)
  offset = sim.max() - scores.min() + 1.0  # every re-ranked score lands above every first-stage score
  out = sim.copy()
  np.put_along_axis(out, top, scores + offset, axis=1)
  return out


class Evaluator:
  """Text-video retrieval on a test split (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    self.config = config
    self.eval_cfg = eval_cfg
    self.task = task
    self.mesh = mesh
    self.rerank_k = int(eval_cfg.get("rerank_k", 0) or 0)
    self.relevance = eval_cfg.get("relevance", None) or None
    if self.relevance not in (None, "noun_verb"):
      raise ValueError(f"evals retrieval relevance={self.relevance!r}: expected None or 'noun_verb'.")
    protocols.require(task, protocols.DualEncoder, "evals type 'retrieval'")
    if self.rerank_k:
      protocols.require(task, protocols.CrossEncoder, f"evals type 'retrieval' with rerank_k={self.rerank_k} "
                        "(set rerank_k=0 for a dual encoder)")
    self._embed = jax.jit(self._embed_fn)
    self._match = jax.jit(self._match_fn)

  def _embed_fn(self, variables, video, text, text_mask, perm):
    """video [B, V, F, H, W, 3] (frames reordered by perm [B, V, F]) -> per-video and per-caption outputs."""
    b, v = video.shape[:2]
    video = frame_shuffle.permute_frames(video, perm)
    flat = video.reshape((b * v,) + video.shape[2:])
    text, text_mask = _first_caption(text), _first_caption(text_mask)
    out = {}
    if self.rerank_k:
      tokens, vid = self.task.encode_video(variables, flat)
      out["video_tokens"] = tokens.reshape((b, v) + tokens.shape[1:])[:, 0]  # the matcher sees the first view
      txt = self.task.encode_text(variables, text, text_mask)[1]
    else:
      vid = self.task.embed_video(variables, flat)
      txt = self.task.embed_text(variables, text, text_mask)
    norm = contrastive.l2_normalize
    out["video"] = norm(norm(vid.reshape(b, v, -1)).mean(axis=1))  # B.9 view average
    out["text"] = norm(txt)
    out["text_ids"], out["text_ids_mask"] = text, text_mask
    return out

  def _match_fn(self, variables, text, text_mask, video_tokens):
    hidden, _ = self.task.encode_text(variables, text, text_mask)
    return self.task.match_scores(variables, hidden, text_mask, video_tokens)

  def _collect(self, variables, shuffle: bool) -> dict[str, np.ndarray]:
    orders = frame_shuffle.frame_orders(self.eval_cfg, shuffle)

    def fn(g):
      perm = orders(g["video"].shape)
      return self._embed(variables, g["video"], g["text"], g["text_mask"], jnp.asarray(perm))

    return common.collect(self.config, self.eval_cfg.input, self.mesh, fn, keys=("video", "text", "text_mask"),
                          keep=("nouns", "verbs") if self.relevance else (), max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))

  def _score_pairs(self, variables, out):
    chunk = int(self.eval_cfg.get("rerank_batch", 256) or 256)

    def score(text_idx, video_idx):
      scores = []
      for s in range(0, len(text_idx), chunk):
        ti, vi = text_idx[s:s + chunk], video_idx[s:s + chunk]
        pad = chunk - len(ti)  # a fixed chunk shape: one compilation
        ti, vi = np.pad(ti, (0, pad)), np.pad(vi, (0, pad))
        r = self._match(variables, out["text_ids"][ti], out["text_ids_mask"][ti], out["video_tokens"][vi])
        scores.append(np.asarray(r)[:chunk - pad])
      return np.concatenate(scores)
    return score

  def _metrics(self, variables, out: dict[str, np.ndarray], suffix: str = ""
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, the final ranking's per-query ranks {'t2v_': [N], 'v2t_': [N]})."""
    sim = out["text"] @ out["video"].T  # [N_text, N_video]
    metrics = {}
    if self.rerank_k:
      score = self._score_pairs(variables, out)
      t2v = rerank(sim, self.rerank_k, score)
      v2t = rerank(sim.T, self.rerank_k, lambda q, g: score(g, q))
      metrics.update(metrics_lib.retrieval_metrics(sim, prefix="vtc_t2v_"))
      metrics.update(metrics_lib.retrieval_metrics(sim.T, prefix="vtc_v2t_"))
    else:
      t2v, v2t = sim, sim.T
    ranks = {"t2v_": metrics_lib.ranks_from_similarity(t2v), "v2t_": metrics_lib.ranks_from_similarity(v2t)}
    for prefix, r in ranks.items():
      metrics.update(metrics_lib.metrics_from_ranks(r, prefix=prefix))
    return {k + suffix: v for k, v in metrics.items()}, ranks

  def run(self, variables: dict, step: int) -> dict[str, float]:
    """Embeds the whole test split and returns the retrieval metrics."""
    start = time.time()
    out = self._collect(variables, shuffle=False)
    n = len(out["video"])
    metrics, ranks = self._metrics(variables, out)
    if self.eval_cfg.get("shuffle_frames", False):
      # The final ranking's recalls only (not the first stage's, not the ranks): what table A8 reports.
      shuffled, shuffled_ranks = self._metrics(variables, self._collect(variables, shuffle=True),
                                               suffix="_shuffled")
      for key in [k for k in metrics if k.startswith(("t2v_R", "v2t_R"))]:
        metrics[f"{key}_shuffled"] = shuffled[f"{key}_shuffled"]
        metrics[f"{key}_shuffle_drop"] = metrics[key] - shuffled[f"{key}_shuffled"]
      for prefix in ranks:  # per-query hits -> the paired standard error of each drop
        hits = {f"R@{k}": (ranks[prefix] < k, shuffled_ranks[prefix] < k) for k in (1, 5, 10)}
        hits["R_mean"] = tuple(np.mean([h[i] for h in hits.values()], axis=0) for i in (0, 1))
        for name, (plain, shuffled_hits) in hits.items():
          _, metrics[f"{prefix}{name}_shuffle_drop_se"] = frame_shuffle.paired_drop(plain, shuffled_hits)
    if self.relevance:
      metrics.update(relevance_metrics(out))
    metrics["num_pairs"] = float(n)
    metrics["chance_R@1"] = 100.0 / max(n, 1)
    logging.info("retrieval: %d pairs in %.1fs at step %d: %s", n, time.time() - start, step,
                 {k: round(v, 2) for k, v in metrics.items() if "shuffle" not in k})
    return metrics


def relevance_metrics(out: dict[str, np.ndarray]) -> dict[str, float]:
  """The graded-relevance metrics of the module docstring from the collected embeddings, ids and tags."""
  missing = [k for k in ("nouns", "verbs") if k not in out]
  if missing:
    raise KeyError(f"evals retrieval relevance='noun_verb': the eval batches lack {missing} (multi-hot noun / verb "
                   "classes of each clip): add them to the evaluator's pp.")
  _, first = np.unique(out["text_ids"], axis=0, return_index=True)
  q = np.sort(first)  # one query per distinct caption, in test order
  rel = metrics_lib.tag_relevance(out["nouns"][q], out["verbs"][q], out["nouns"], out["verbs"])  # [Q, N]
  sim = out["text"][q] @ out["video"].T
  blind = np.random.default_rng(0).random(sim.shape)
  m = {}
  for name, scores in (("", sim), ("chance_", blind)):
    t2v = metrics_lib.relevance_metrics(scores, rel, prefix="t2v_")
    v2t = metrics_lib.relevance_metrics(scores.T, rel.T, prefix="v2t_")
    for metric in ("mAP", "nDCG"):
      mean = (t2v[f"t2v_{metric}"] + v2t[f"v2t_{metric}"]) / 2
      if name:
        m[f"chance_{metric}"] = mean
      else:
        m.update({f"t2v_{metric}": t2v[f"t2v_{metric}"], f"v2t_{metric}": v2t[f"v2t_{metric}"], metric: mean})
  m["num_queries"] = float(len(q))
  return m


def _first_caption(x: jax.Array) -> jax.Array:
  """[B, K, L] -> [B, L] (caption 0, the query); [B, L] unchanged."""
  return x[:, 0] if x.ndim == 3 else x
