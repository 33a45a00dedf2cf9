"""Non-overlapping patch embedding (a convolution with kernel = stride) as one matmul.

Tubelets (VATT video, 4x16x16), waveform patches (VATT audio, 128 samples) and spectrogram patches are all
convolutions whose stride equals their kernel. Written as reshape + transpose + one [B*N, prod(k)*C] x [prod(k)*C, D]
matmul they give the same numbers as `nn.Conv(padding='VALID')` with the same parameters, but run at matmul speed:
XLA:CPU lowers a strided 3-D convolution (and its weight gradient) to a slow generic loop, which alone held the
VATT-Base video-tower train step at about a third of the machine's matmul peak.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import logical as ax

_CONV_AXES = {1: (ax.CONV_TIME,), 2: (ax.CONV_TIME, ax.CONV_HEIGHT), 3: (ax.CONV_TIME, ax.CONV_HEIGHT, ax.CONV_WIDTH)}


class PatchEmbed(nn.Module):
  """[B, *S, C] -> [B, *G, D] with G_i = S_i // k_i (trailing remainders dropped, as a VALID convolution).

  Parameters are those of `nn.Conv(features, kernel_size=k, strides=k)`: `kernel` [*k, C, D] (same Glorot
  initialisation) and `bias` [D], so checkpoints of either form load into the other.

  Attributes:
    features: output width D.
    kernel_size: k, one entry per spatial/temporal axis of the input (1 to 3 axes).
    kernel_axes: logical axis names of the kernel's patch dimensions (default: conv_time/height/width).
    dtype: computation dtype.
  """
  features: int
  kernel_size: Sequence[int]
  kernel_axes: tuple[str, ...] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = tuple(int(v) for v in self.kernel_size)
    n = len(k)
    if x.ndim != n + 2:
      raise ValueError(f"PatchEmbed with a {n}-D kernel {k} expects [B, {n} axes, C] inputs, got shape {x.shape}.")
    b, c = x.shape[0], x.shape[-1]
    grid = tuple(s // p for s, p in zip(x.shape[1:-1], k))
    if min(grid) < 1:
      raise ValueError(f"Input {x.shape[1:-1]} is smaller than one patch {k}.")
    axes = self.kernel_axes or _CONV_AXES[n]
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                               axes + (ax.CONV_IN, ax.EMBED)),
                        k + (c, self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)),
                      (self.features,), jnp.float32)
    x = x[(slice(None),) + tuple(slice(0, g * p) for g, p in zip(grid, k))]
    # [B, g1, k1, g2, k2, ..., C] -> [B, g1, g2, ..., k1, k2, ..., C] -> [B * prod(g), prod(k) * C]
    x = x.reshape((b,) + tuple(v for g, p in zip(grid, k) for v in (g, p)) + (c,))
    perm = (0,) + tuple(1 + 2 * i for i in range(n)) + tuple(2 + 2 * i for i in range(n)) + (2 * n + 1,)
    x = x.transpose(perm).reshape(b * math.prod(grid), math.prod(k) * c)
    y = x.astype(self.dtype) @ kernel.reshape(-1, self.features).astype(self.dtype) + bias.astype(self.dtype)
    return y.reshape((b,) + grid + (self.features,))
