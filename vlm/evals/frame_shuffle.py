"""The shuffled-frame probe (SViTT table A8): frame orders, their application, and the paired drop.

An evaluator with `shuffle_frames=True` scores the split twice, frames in order and with every clip's frames in a
random order of its own, and reports plain - shuffled: a model that reads motion loses accuracy, a bag-of-frames
model does not. Orders come from a stream seeded by `shuffle_seed` (config of the evaluator), drawn batch by
batch in the same sequence on every host.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


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
  one random order per clip from a stream seeded by `eval_cfg.shuffle_seed`."""
  rng = np.random.default_rng(int(eval_cfg.get("shuffle_seed", 0))) if shuffle else None

  def orders(video_shape: tuple[int, ...]) -> np.ndarray:
    b, v, f = video_shape[:3]
    if rng is None:
      return np.broadcast_to(np.arange(f, dtype=np.int32), (b, v, f))
    return frame_permutations(rng, (b, v), f)

  return orders


def paired_drop(plain: np.ndarray, shuffled: np.ndarray) -> tuple[float, float]:
  """The probe's drop and its standard error, from per-example scores of the same examples.

  Why: a drop of a point or two on a few hundred questions is within sampling noise (table A8's own drops are
  0.0 to 3.5), so every probe reports the drop with its paired standard error; a drop is shown when it is a few
  standard errors above zero.

  Args:
    plain, shuffled: [N] per-example scores in [0, 1] (1 = correct, or a query's hit rate), frames in order and
      shuffled, example i the same in both.

  Returns:
    (100 * mean(plain - shuffled), 100 * std(plain - shuffled) / sqrt(N)), in points; SE 0 for N < 2.
  """
  plain, shuffled = np.asarray(plain, np.float64), np.asarray(shuffled, np.float64)
  if plain.shape != shuffled.shape or plain.ndim != 1:
    raise ValueError(f"paired_drop needs two [N] arrays of the same examples; got {plain.shape} and "
                     f"{shuffled.shape}.")
  if not plain.size:
    return 0.0, 0.0
  diff = plain - shuffled
  se = float(100.0 * diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
  return float(100.0 * diff.mean()), se
