"""What a text-conditioned frame selector keeps, and how the cross-modal attention spreads over frames (TW-BERT).

Each test clip is encoded with its own caption: the selector keeps T' of the T sampled frames
(`selected_frames`), and the cross-modal encoder's text-to-frame weights (T2W's beta, or P2W's per-frame sums of
alpha) give every word a distribution over the T' frames.

Metrics:
  in_event           among clips whose subject is visible only in part of the clip (the built-in dataset's
                     events: `event/start_frame` <= frame < `event/end_frame`, in record frames), the percentage
                     of kept frames inside the event;
  chance_in_event    the same for T' frames drawn at random from the T sampled ones (the mean fraction of sampled
                     frames inside the event): a selector that reads the text beats it;
  num_event_clips;
  frame_entropy_bits the mean entropy (bits) of each valid word's attention over the T' frames, over heads, layers
                     and clips (TW-BERT appendix C: T2W 2.94 against P2W 2.39 at 8 frames, at most log2 8 = 3);
  frame_entropy_max_bits  log2 T'.

Config (`config.evals.<name>`):
  type: 'frame_selection'.
  input: overrides of config.input for the test split; batches carry `video` [B, T, H, W, 3], `text` /
    `text_mask`, and for `in_event` also `frame_index` [B, T] (written by the frame samplers) and
    `event/start_frame` / `event/end_frame` [B].
  every_steps; max_examples [0 = all].
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


def selection_metrics(selected: np.ndarray, frame_index: np.ndarray, start: np.ndarray, end: np.ndarray
                      ) -> dict[str, float]:
  """selected [N, K] (indices into the T sampled frames), frame_index [N, T] (their record frames), event
  bounds [N] -> in_event, chance_in_event (percent) and num_event_clips over the clips with a partial event."""
  record_frames = frame_index.max(axis=1) + 1
  partial = (start > 0) | (end < record_frames)
  if not partial.any():
    return {"in_event": 0.0, "chance_in_event": 0.0, "num_event_clips": 0.0}
  inside = (frame_index >= start[:, None]) & (frame_index < end[:, None])  # [N, T]
  kept_inside = np.take_along_axis(inside, selected, axis=1)  # [N, K]
  return {"in_event": float(100.0 * kept_inside[partial].mean()),
          "chance_in_event": float(100.0 * inside[partial].mean()),
          "num_event_clips": float(partial.sum())}


def frame_entropy_bits(weights: np.ndarray, text_mask: np.ndarray) -> float:
  """weights [N, layers, H, L, T'] (each a distribution over T'), text mask [N, L] -> mean entropy in bits over
  the valid words, heads, layers and clips."""
  p = np.clip(weights.astype(np.float64), 1e-30, 1.0)
  entropy = -(p * np.log2(p)).sum(-1)  # [N, layers, H, L]
  valid = np.broadcast_to(text_mask.astype(bool)[:, None, None, :], entropy.shape)
  return float(entropy[valid].mean())


class Evaluator:
  """Frame selection against the events, and frame attention entropy (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    protocols.require(task, protocols.FrameSelector, "evals type 'frame_selection'")
    self.config, self.eval_cfg, self.task, self.mesh = config, eval_cfg, task, mesh
    self._select = jax.jit(task.frame_selection)

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    out = common.collect(
        self.config, self.eval_cfg.input, self.mesh,
        lambda g: self._select(variables, g["video"][:, 0], g["text"], g["text_mask"]),
        keys=("video", "text", "text_mask"), keep=("text_mask", "frame_index", "event/start_frame",
                                                   "event/end_frame"),
        max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))
    metrics = {}
    if "event/start_frame" in out and "frame_index" in out:
      metrics.update(selection_metrics(np.asarray(out["selected_frames"]), np.asarray(out["frame_index"]),
                                       np.asarray(out["event/start_frame"]).reshape(-1),
                                       np.asarray(out["event/end_frame"]).reshape(-1)))
    weights = np.asarray(out["frame_weights"])
    mask = np.asarray(out["text_mask"])
    metrics["frame_entropy_bits"] = frame_entropy_bits(weights, mask.reshape(mask.shape[0], -1))
    metrics["frame_entropy_max_bits"] = float(np.log2(weights.shape[-1]))
    metrics["num_examples"] = float(len(weights))
    logging.info("frame_selection: %d clips in %.1fs at step %d: %s", len(weights), time.time() - start, step,
                 {k: round(v, 3) for k, v in metrics.items()})
    return metrics
