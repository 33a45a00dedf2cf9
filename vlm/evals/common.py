"""What every evaluator shares: one pass over an eval split as global batches, results gathered from all hosts."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np


def as_views(video: np.ndarray) -> np.ndarray:
  """[B, F, H, W, 3] (one view) or [B, V, F, H, W, 3] -> [B, V, F, H, W, 3]."""
  return video[:, None] if video.ndim == 5 else video


def collect(config: ml_collections.ConfigDict, input_cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
            fn: Callable[[dict[str, jax.Array]], dict[str, jax.Array]], keys: Sequence[str],
            keep: Sequence[str] = (), max_examples: int = 0) -> dict[str, np.ndarray]:
  """Runs `fn` over every batch of an eval split and returns its outputs for the real (unpadded) examples.

  Args:
    config: the full config (the eval iterator reads `config.input` under `input_cfg`'s overrides).
    input_cfg: the evaluator's `input` overrides (split, pp, batch_size, views).
    mesh: the device mesh; batches are assembled as global arrays sharded over its batch axes.
    fn: global batch {key: [B, ...]} -> {name: [B, ...]} (usually a jitted model call).
    keys: the batch keys `fn` reads (each host's batch holds them; `_mask` is added).
    keep: batch keys returned beside fn's outputs (labels), gathered the same way; those absent from the
      split's batches are left out.
    max_examples: keep the first N examples (0: all).

  Returns:
    {name: [N, ...]} for fn's outputs and `keep`, on every host.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from vlm.data import inputs  # pylint: disable=g-import-not-at-top
  from vlm.parallel import multihost, partitioning  # pylint: disable=g-import-not-at-top
  sharding = partitioning.batch_sharding(mesh)
  it = inputs.make_eval_iterator(config, input_cfg, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  parts: dict[str, list[np.ndarray]] = {}
  for batch in it:
    missing = [k for k in keys if k not in batch]
    if missing:
      raise KeyError(f"Eval batches lack {missing} (have {sorted(batch)}): check the evaluator's input pp.")
    kept = [k for k in keep if k in batch]
    local = {k: (as_views(batch[k]) if k == "video" else batch[k]) for k in set(keys) | set(kept) | {"_mask"}}
    g = multihost.global_batch(local, sharding)
    out = dict(fn(g))
    out.update({k: g[k] for k in kept})
    out, mask = multihost_utils.process_allgather((out, g["_mask"]), tiled=True)
    real = np.asarray(mask) > 0
    for name, value in out.items():
      parts.setdefault(name, []).append(np.asarray(value)[real])
  result = {name: np.concatenate(values) for name, values in parts.items()}
  if max_examples:
    result = {name: value[:max_examples] for name, value in result.items()}
  return result
