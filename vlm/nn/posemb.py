"""Learned factorised positional embeddings (VATT), with resizing by per-axis polyharmonic-spline resampling.

VATT (Akbari et al., 2021, section 3.1 and appendix B.5) learns one table per axis: video sums a temporal, a
vertical and a horizontal table ("8 + 14 + 14 buckets" for 32x224x224 inputs with 4x16x16 tubelets); audio has
a temporal table only (1200 buckets for 3.2 s at 48 kHz with 128-sample patches); spectrograms have temporal +
spectral tables. As released (`vatt/modeling/common/transformers.py`): tables are initialised with a truncated
normal of std hidden**-0.5, a LayerNorm is applied to the *summed* positional embedding, which is then added to
the tokens, and dropout follows.

Resizing (docs/design.md, VATT: resizing positional tables). The paper says the fine-tuning tables (8 + 20 + 20 buckets at 320x320) were made
by "bi-cubic interpolation"; the release resamples each 1-D table on the fly whenever the grid differs from the
buckets, with `tfa.image.interpolate_spline(order=3)` on normalised coordinates: known points i/n, queries j/m.
That is a polyharmonic spline with phi(r) = r**3, a linear polynomial term and no regularisation. We implement
the same spline here (`polyharmonic_spline_weights`, solved in float64 numpy; the result is a fixed [m, n]
matrix, so the resampled table is a linear, differentiable function of the learned one). `resize_method=
'cubic'` uses `jax.image.resize(..., 'cubic')` instead (Keys cubic convolution, half-pixel centres).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax


def _polyharmonic_phi(r: np.ndarray, order: int) -> np.ndarray:
  """phi(r) = r**k for odd k, r**k * log(r) for even k (0 at r = 0), as tfa.image.interpolate_spline."""
  if order % 2:
    return r ** order
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(r > 0, r ** order * np.log(np.maximum(r, 1e-300)), 0.0)


def polyharmonic_spline_weights(centers: np.ndarray, queries: np.ndarray, *, order: int = 3,
                                regularization: float = 0.0) -> np.ndarray:
  """Linear map from values at `centers` to the polyharmonic spline's values at `queries`.

  The spline is f(q) = sum_i w_i phi(|q - c_i|) + v_0 + v^T q, with [w; v] solving
    [[A + reg I, P], [P^T, 0]] [w; v] = [y; 0],   A_ij = phi(|c_i - c_j|),  P = [1, c],
  i.e. the interpolant of `tfa.image.interpolate_spline` (and of scipy's `RBFInterpolator(kernel='cubic',
  degree=1)` for order 3). It is linear in y, so f(queries) = W @ y with the W returned here.

  Args:
    centers: [n] or [n, d] known point coordinates.
    queries: [m] or [m, d] query coordinates.
    order: spline order k (3 as VATT).
    regularization: ridge added to A (0 as VATT).

  Returns:
    [m, n] float64 matrix W.
  """
  c = np.asarray(centers, np.float64)
  q = np.asarray(queries, np.float64)
  c = c.reshape(len(c), -1)
  q = q.reshape(len(q), -1)
  n, d = c.shape
  a = _polyharmonic_phi(np.linalg.norm(c[:, None] - c[None], axis=-1), order) + regularization * np.eye(n)
  p = np.concatenate([np.ones((n, 1)), c], axis=1)  # [n, d + 1]
  system = np.block([[a, p], [p.T, np.zeros((d + 1, d + 1))]])
  rhs = np.concatenate([np.eye(n), np.zeros((d + 1, n))], axis=0)
  coeffs = np.linalg.solve(system, rhs)  # [n + d + 1, n]: the spline coefficients for each unit vector y
  basis = np.concatenate([_polyharmonic_phi(np.linalg.norm(q[:, None] - c[None], axis=-1), order),
                          np.ones((len(q), 1)), q], axis=1)  # [m, n + d + 1]
  return basis @ coeffs


@functools.lru_cache(maxsize=64)
def spline_resize_matrix(n: int, m: int, order: int = 3) -> np.ndarray:
  """[m, n] float32 matrix resampling an n-bucket table to m buckets as VATT does (coordinates i/n, j/m)."""
  if n == 1:  # One point fixes no linear term: the spline is the constant.
    w = np.ones((m, 1))
  else:
    w = polyharmonic_spline_weights(np.arange(n) / n, np.arange(m) / m, order=order)
  w = w.astype(np.float32)
  w.setflags(write=False)
  return w


def resize_table(table: jax.Array, size: int, *, method: str = "spline") -> jax.Array:
  """Resamples a 1-D positional table along its first axis.

  Args:
    table: [n, D] learned table.
    size: target number of buckets m.
    method: 'spline' (VATT's order-3 polyharmonic spline on i/n coordinates) or 'cubic' (jax.image.resize).

  Returns:
    [m, D] table (the input itself when m == n).
  """
  n = table.shape[0]
  if size == n:
    return table
  if method == "spline":
    w = jnp.asarray(spline_resize_matrix(n, size), table.dtype)
    return jnp.dot(w, table, precision=jax.lax.Precision.HIGHEST)
  if method == "cubic":
    return jax.image.resize(table, (size,) + table.shape[1:], method="cubic")
  raise ValueError(f"Unknown resize method {method!r}; expected 'spline' or 'cubic'.")


_DEFAULT_NAMES = {1: ("temporal",), 2: ("temporal", "spectral"), 3: ("temporal", "vertical", "horizontal")}
_AXES = {"temporal": ax.POS_TIME, "vertical": ax.POS_HEIGHT, "horizontal": ax.POS_WIDTH}


class FactorizedPosEmb(nn.Module):
  """Adds VATT's factorised learned positional embedding to a flattened token grid.

  out = Dropout(x + LayerNorm(sum_a E_a[i_a])), E_a a [buckets_a, D] table per grid axis, each resampled to the
  actual grid size when it differs (see module docstring).

  Attributes:
    buckets: table sizes per grid axis, e.g. (8, 14, 14) for video, (1200,) for waveform audio.
    names: per-axis parameter names (default temporal / vertical / horizontal, or temporal / spectral).
    dropout_rate: dropout after adding (0.1).
    layer_norm_epsilon: epsilon of the LayerNorm on the summed embedding (1e-6).
    resize_method: 'spline' (as released) or 'cubic'.
    dtype: computation dtype.
  """
  buckets: tuple[int, ...]
  names: tuple[str, ...] | None = None
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  resize_method: str = "spline"
  dtype: Any = jnp.float32

  def embedding(self, grid: Sequence[int], dim: int) -> jax.Array:
    """The summed, normalised positional embedding [prod(grid), D] for a token grid."""
    grid = tuple(int(g) for g in grid)
    if len(grid) != len(self.buckets):
      raise ValueError(f"Grid {grid} has {len(grid)} axes; the tables have buckets {self.buckets}.")
    names = self.names or _DEFAULT_NAMES[len(self.buckets)]
    init = nn.initializers.truncated_normal(dim ** -0.5)
    total = jnp.zeros(grid + (dim,), jnp.float32)
    for i, (name, n, size) in enumerate(zip(names, self.buckets, grid)):
      table = self.param(f"{name}_embedding", nn.with_logical_partitioning(init, (_AXES.get(name, ax.POS),
                                                                                  ax.EMBED)), (n, dim))
      table = resize_table(table, size, method=self.resize_method)  # [size, D]
      shape = [1] * len(grid) + [dim]
      shape[i] = size
      total = total + table.reshape(shape)
    total = nn.LayerNorm(epsilon=self.layer_norm_epsilon, name="layer_norm",
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.EMBED,)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)))(total)
    return total.reshape(-1, dim)

  @nn.compact
  def __call__(self, x: jax.Array, *, grid: Sequence[int], train: bool = False) -> jax.Array:
    """Adds the positional embedding.

    Args:
      x: [B, N, D] tokens in row-major grid order, N = prod(grid).
      grid: the token grid, e.g. (t, h, w).
      train: enables dropout.

    Returns:
      [B, N, D].
    """
    pos = self.embedding(grid, x.shape[-1])
    if pos.shape[0] != x.shape[1]:
      raise ValueError(f"{x.shape[1]} tokens do not fill the grid {tuple(grid)}.")
    x = x + pos.astype(self.dtype)[None]
    return dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)


def sincos_3d(centres: np.ndarray, dim: int, *, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 3-D sine-cosine embedding of (t, y, x) positions (TubeViT: at each token's tube centre).

  The width is split over the three axes with an even share each: t gets 2 * ((dim // 3) // 2) channels, y and x
  share the rest equally (rounded down to even), and any remainder (dim = 1280: 2 channels) is zero. Each axis
  share of n channels is [sin(p * w_i), cos(p * w_i)] with w_i = temperature ** -(i / (n / 2)), i < n / 2, as in
  the port's `get_3d_sincos_pos_embed`, but correct for H != W and for widths the port rejects (ViT-L 1024: its
  2D/3 spatial share is odd per axis).

  Args:
    centres: [N, 3] (t, y, x) positions in input frames and pixels.
    dim: embedding width (any >= 6).

  Returns:
    [N, dim] float32 (numpy: the table is a constant, not a parameter).
  """
  centres = np.asarray(centres, np.float64)
  if centres.ndim != 2 or centres.shape[1] != 3:
    raise ValueError(f"centres of shape {centres.shape}; expected [N, 3] (t, y, x).")
  if dim < 6:
    raise ValueError(f"sincos_3d dim={dim}; expected >= 6 (two channels per axis).")
  n_t = 2 * ((dim // 3) // 2)
  n_s = 2 * (((dim - n_t) // 2) // 2)
  parts = []
  for axis, n in zip(range(3), (n_t, n_s, n_s)):
    omega = temperature ** -(np.arange(n // 2, dtype=np.float64) / (n / 2))
    angle = centres[:, axis:axis + 1] * omega[None]
    parts += [np.sin(angle), np.cos(angle)]
  out = np.concatenate(parts, axis=1)
  out = np.pad(out, ((0, 0), (0, dim - out.shape[1])))
  return out.astype(np.float32)
