"""Audio tokenizers: raw waveform (VATT's default) and log-mel spectrogram patches (VATT table 4)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import patch


class WaveformEmbed(nn.Module):
  """Non-overlapping waveform segments, linearly projected: a Conv1D with kernel = stride.

  VATT uses 128-sample segments of 48 kHz audio in [-1, 1] (appendix B.1): 3.2 s = 153,600 samples give 1200
  tokens.

  Attributes:
    hidden_size: token width D.
    patch_size: samples per token.
    dtype: computation dtype.
  """
  hidden_size: int
  patch_size: int = 128
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, audio: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """[B, S] (or [B, S, 1]) waveform -> (tokens [B, S // patch, D], aux{'grid': (S // patch,)})."""
    del train
    if audio.ndim == 2:
      audio = audio[..., None]
    x = patch.PatchEmbed(self.hidden_size, (self.patch_size,), dtype=self.dtype, name="conv")(audio)
    return x, {"grid": (x.shape[1],)}


class SpectrogramEmbed(nn.Module):
  """Non-overlapping (time x frequency) patches of a log-mel spectrogram, linearly projected (Conv2D).

  VATT's spectrogram ablation (appendix D, table 4) uses 80 mel bins, 42 ms windows with a 21 ms hop and 16x5
  patches.

  Attributes:
    hidden_size: token width D.
    patch_size: (frames, mel bins) per patch.
    dtype: computation dtype.
  """
  hidden_size: int
  patch_size: tuple[int, int] = (16, 5)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, spec: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """[B, T, M] log-mel -> (tokens [B, t * m, D] row-major (time, frequency), aux{'grid': (t, m)})."""
    del train
    x = patch.PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name="conv")(spec[..., None])
    b, t, m, d = x.shape
    return x.reshape(b, t * m, d), {"grid": (t, m)}
