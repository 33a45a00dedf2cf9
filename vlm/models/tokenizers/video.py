"""Video tubelet tokenizer (VATT "voxel to patch", section 3.1)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import patch


class TubeletEmbed(nn.Module):
  """Non-overlapping t x h x w tubelets, linearly projected: a Conv3D with kernel = stride
  (computed as one matmul, vlm/nn/patch.py).

  VATT uses 4x16x16 tubelets (appendix B.1), so 32x224x224 frames give an 8x14x14 grid of tokens.

  Attributes:
    hidden_size: token width D.
    patch_size: (t, h, w) tubelet size.
    dtype: computation dtype.
  """
  hidden_size: int
  patch_size: tuple[int, int, int] = (4, 16, 16)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Tokenizes frames.

    Args:
      video: [B, F, H, W, C] frames (VATT: values in [-1, 1]).
      train: unused (tokenizer contract).

    Returns:
      (tokens [B, N, D] in row-major (t, h, w) order, aux) with aux['grid'] = (t, h, w), N = t * h * w.
      Frames / pixels beyond a whole tubelet are dropped (VALID convolution).
    """
    del train
    x = patch.PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name="conv")(video)
    b, t, h, w, d = x.shape
    return x.reshape(b, t * h * w, d), {"grid": (t, h, w)}
