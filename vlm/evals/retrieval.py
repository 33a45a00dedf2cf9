"""Zero-shot text-to-video (and video-to-text) retrieval: R@1/5/10, median and mean rank.

The evaluator embeds every test video and its caption with the task's prediction functions, then ranks all videos
for each caption by cosine similarity. As in VATT appendix B.9, a video's embedding is the average of the embeddings
of several uniformly sampled clips (views), L2-normalised again after averaging.

Config (`config.evals.<name>`):
  type: 'retrieval'.
  every_steps: run every N training steps (and at the end of training, and in `--mode=eval`).
  input: overrides of `config.input` for the test split (split, pp, batch_size, num_clips, ...), passed to
    `vlm.data.pipeline.make_eval_iterator`; batches carry `video` [B, V, F, H, W, 3], `text` [B, K, L],
    `text_mask` [B, K, L] and `_mask` [B]. The first caption (k = 0) is the query.
  max_examples: optional cap on the number of test pairs (0 = all).

Ties are broken pessimistically (a distractor with the same similarity ranks above the target), so a model whose
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


def ranks_from_similarity(sim: np.ndarray) -> np.ndarray:
  """0-based rank of the matching item (the diagonal) in each row of `sim`.

  Args:
    sim: [N, N] similarities; row i is query i, column i its ground-truth match.

  Returns:
    [N] int ranks: the number of other columns scoring at least as high as the target (pessimistic ties).
  """
  sim = np.asarray(sim, np.float64)
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f"Expected a square similarity matrix, got shape {sim.shape}.")
  target = np.diag(sim)[:, None]
  ge = sim >= target
  return ge.sum(axis=1) - 1  # minus the target itself


def retrieval_metrics(sim: np.ndarray, prefix: str = "") -> dict[str, float]:
  """R@1/5/10 (percent), median rank and mean rank (1-based) for a [N, N] query x gallery similarity."""
  ranks = ranks_from_similarity(sim)
  out = {f"{prefix}R@{k}": float(100.0 * np.mean(ranks < k)) for k in (1, 5, 10)}
  out[f"{prefix}MedR"] = float(np.median(ranks) + 1)
  out[f"{prefix}MeanR"] = float(np.mean(ranks) + 1)
  return out


def l2_normalize(x: np.ndarray | jax.Array, axis: int = -1, eps: float = 1e-8):
  xp = jnp if isinstance(x, jax.Array) else np
  return x / xp.maximum(xp.linalg.norm(x, axis=axis, keepdims=True), eps)


class Evaluator:
  """Zero-shot text-to-video retrieval on a test split (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    self.config = config
    self.eval_cfg = eval_cfg
    self.task = task
    self.mesh = mesh
    self._embed = jax.jit(self._embed_fn)

  def _embed_fn(self, variables, video, text, text_mask):
    # video: [B, V, F, H, W, 3] -> per-view embeddings averaged over views (B.9).
    b, v = video.shape[:2]
    flat = video.reshape((b * v,) + video.shape[2:])
    vid = self.task.embed_video(variables, flat).reshape(b, v, -1)
    vid = l2_normalize(l2_normalize(vid).mean(axis=1))
    txt = l2_normalize(self.task.embed_text(variables, text[:, 0], text_mask[:, 0]))
    return vid, txt

  def run(self, variables: dict, step: int) -> dict[str, float]:
    """Embeds the whole test split and returns the retrieval metrics."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    from vlm.data import pipeline  # pylint: disable=g-import-not-at-top
    from vlm.parallel import multihost, partitioning  # pylint: disable=g-import-not-at-top
    sharding = partitioning.batch_sharding(self.mesh)
    start = time.time()
    it = pipeline.make_eval_iterator(self.config, self.eval_cfg.input,
                                     process_index=jax.process_index(), process_count=jax.process_count())
    vids, txts = [], []
    for batch in it:
      keep = ("video", "text", "text_mask", "_mask")
      g = multihost.global_batch({k: batch[k] for k in keep}, sharding)
      vid, txt = self._embed(variables, g["video"], g["text"], g["text_mask"])
      # Every process gathers the whole batch: ranking needs the full gallery on each host.
      vid, txt, mask = (np.asarray(a) for a in multihost_utils.process_allgather((vid, txt, g["_mask"]),
                                                                                  tiled=True))
      vids.append(vid[mask > 0])
      txts.append(txt[mask > 0])
    vid = np.concatenate(vids)
    txt = np.concatenate(txts)
    limit = int(self.eval_cfg.get("max_examples", 0) or 0)
    if limit:
      vid, txt = vid[:limit], txt[:limit]
    sim = txt @ vid.T  # [N_text, N_video]
    metrics = retrieval_metrics(sim, prefix="t2v_")
    metrics.update(retrieval_metrics(sim.T, prefix="v2t_"))
    metrics["num_pairs"] = float(len(vid))
    metrics["chance_R@1"] = 100.0 / max(len(vid), 1)
    logging.info("retrieval: %d pairs in %.1fs at step %d: %s", len(vid), time.time() - start, step,
                 {k: round(v, 2) for k, v in metrics.items()})
    return metrics
