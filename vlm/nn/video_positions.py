"""Image position encodings inflated to video (SViTT supplement equations 4-11), BEiT layout.

Absolute embeddings (equations 4-7): an image table P [1 + H W, d] ([CLS] first) becomes a video table
P' [1 + T H W, d] by repeating the patch rows over time (`inflate_absolute`), and a video table for T1 frames
becomes one for T2 frames by nearest-neighbour resampling along time (`expand_absolute`):
p'_t = p_{floor(t T1 / T2 + 1/2)}, with t counted from 0 and clipped to T1 - 1 (equation 7 reaches T1 at the last
frame when T2 > T1).

Relative position bias (equations 8-11), as BEiT / HF `BeitRelativePositionBias` store it: a table
R [(2T-1)(2H-1)(2W-1) + 3, heads] whose last three rows are the [CLS]->token, token->[CLS] and [CLS]->[CLS]
biases, and an index [1 + N, 1 + N] into it (`relative_position_index`). Offsets are query minus key, each
shifted to be non-negative, flattened t-major; T = 1 is exactly BEiT's 2-D index. `inflate_relative` repeats the
2-D table over the 2T - 1 temporal offsets (R'_{dt, dh, dw} = R_{dh, dw}: equation 11 initialised like P'), and
`expand_relative` resamples the temporal offsets nearest-neighbour from T1 to T2 frames (offset dt of T2 frames
reads offset round(dt T1 / T2) of T1 frames).
"""
from __future__ import annotations

import numpy as np

NUM_SPECIAL = 3  # [CLS]->token, token->[CLS], [CLS]->[CLS]


def relative_position_index(grid: tuple[int, int, int]) -> np.ndarray:
  """int32 [1 + T H W, 1 + T H W] rows of the relative-bias table for a (T, H, W) token grid plus [CLS]."""
  t, h, w = grid
  coords = np.stack(np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")).reshape(3, -1)
  rel = coords[:, :, None] - coords[:, None, :]  # query minus key
  rel = rel + np.array([t - 1, h - 1, w - 1])[:, None, None]
  index = (rel[0] * (2 * h - 1) + rel[1]) * (2 * w - 1) + rel[2]
  num_rel = (2 * t - 1) * (2 * h - 1) * (2 * w - 1)
  n = t * h * w
  out = np.zeros((n + 1, n + 1), np.int32)
  out[1:, 1:] = index
  out[0, 1:] = num_rel  # [CLS] query -> token
  out[1:, 0] = num_rel + 1  # token -> [CLS] key
  out[0, 0] = num_rel + 2
  return out


def table_size(grid: tuple[int, int, int]) -> int:
  t, h, w = grid
  return (2 * t - 1) * (2 * h - 1) * (2 * w - 1) + NUM_SPECIAL


def relative_bias(table: np.ndarray, grid: tuple[int, int, int]):
  """[heads, 1 + N, 1 + N] bias from a table [table_size(grid), heads] (numpy or jax arrays)."""
  if table.shape[0] != table_size(grid):
    raise ValueError(f"relative position table has {table.shape[0]} rows; a {grid} grid needs "
                     f"{table_size(grid)}.")
  index = relative_position_index(grid)
  return table[index.reshape(-1)].reshape(index.shape + (table.shape[1],)).transpose(2, 0, 1)


def _split_table(table: np.ndarray, grid: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
  t, h, w = grid
  body = np.asarray(table[:-NUM_SPECIAL]).reshape(2 * t - 1, 2 * h - 1, 2 * w - 1, -1)
  return body, np.asarray(table[-NUM_SPECIAL:])


def inflate_relative(table_2d: np.ndarray, hw: tuple[int, int], frames: int) -> np.ndarray:
  """2-D BEiT table [(2H-1)(2W-1) + 3, heads] -> 3-D table for `frames` frames (equations 10-11)."""
  body, special = _split_table(table_2d, (1,) + tuple(hw))
  body = np.repeat(body, 2 * frames - 1, axis=0)
  return np.concatenate([body.reshape(-1, body.shape[-1]), special])


def expand_relative(table: np.ndarray, grid: tuple[int, int, int], frames: int) -> np.ndarray:
  """3-D table for grid (T1, H, W) -> table for (frames, H, W), nearest along the temporal offsets."""
  t1 = grid[0]
  body, special = _split_table(table, grid)
  offsets = np.arange(-(frames - 1), frames)
  source = np.clip(np.floor(offsets * t1 / frames + 0.5).astype(int), -(t1 - 1), t1 - 1) + (t1 - 1)
  body = body[source]
  return np.concatenate([body.reshape(-1, body.shape[-1]), special])


def inflate_absolute(table_2d: np.ndarray, frames: int) -> np.ndarray:
  """[1 + H W, d] image table ([CLS] first) -> [1 + frames H W, d] (equations 5-6)."""
  table_2d = np.asarray(table_2d)
  return np.concatenate([table_2d[:1], np.tile(table_2d[1:], (frames, 1))])


def expand_absolute(table: np.ndarray, frames_from: int, frames: int) -> np.ndarray:
  """[1 + T1 H W, d] -> [1 + T2 H W, d], nearest frame per equation 7 (clipped to the last source frame)."""
  table = np.asarray(table)
  if (table.shape[0] - 1) % frames_from:
    raise ValueError(f"position table of {table.shape[0] - 1} tokens is not {frames_from} frames of equal size.")
  per_frame = (table.shape[0] - 1) // frames_from
  body = table[1:].reshape(frames_from, per_frame, -1)
  source = np.minimum(np.floor(np.arange(frames) * frames_from / frames + 0.5).astype(int), frames_from - 1)
  return np.concatenate([table[:1], body[source].reshape(frames * per_frame, -1)])
