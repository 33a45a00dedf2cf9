"""Text-conditioned frame selection (TW-BERT's hierarchical frame selector, main paper section 3.3).

A scorer reads each frame's [CLS] feature and the text's [CLS] embedding and gives every frame an importance
(a softmax over the frames, as released); `select_frames` keeps the K best with the perturbed Top-K of
vlm/nn/perturbed_topk.py and forms M^T V (supplement B, equation a): in training a differentiable mixture of
frames, at evaluation the frames themselves, always in temporal order.

Scorer (the release's `PredictorLG`):  f = GELU(Linear(LN(frame_cls)))          [B, T, D]
                                       h = concat(f, text_cls broadcast over T) [B, T, D + Dt]
                                       s = softmax_T(Linear(GELU(Linear(h))))   [B, T]
All linear layers without bias, as released.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import logical as ax
from vlm.nn import perturbed_topk
from vlm.nn import transformer


class FrameScorer(nn.Module):
  """frame_cls [B, T, D], text_cls [B, Dt] -> frame importances [B, T] (softmax over T; module docstring).

  Attributes:
    layer_norm_epsilon: of the input LayerNorm (1e-5, torch's default, as released).
    dtype: computation dtype (the scores are float32).
  """
  layer_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frame_cls: jax.Array, text_cls: jax.Array) -> jax.Array:
    b, t, d = frame_cls.shape
    if text_cls.ndim != 2 or text_cls.shape[0] != b:
      raise ValueError(f"the frame scorer takes one text embedding [B, Dt] per clip; got {text_cls.shape} for "
                       f"{b} clips.")
    dense = lambda width, name: nn.Dense(width, use_bias=False, dtype=self.dtype, name=name,
                                         kernel_init=nn.with_logical_partitioning(
                                             nn.initializers.lecun_normal(), (ax.EMBED, None)))
    f = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "norm")(frame_cls)
    f = nn.gelu(dense(d, "frame_proj")(f), approximate=False)
    h = jnp.concatenate([f, jnp.broadcast_to(text_cls[:, None].astype(f.dtype), (b, t, text_cls.shape[-1]))], -1)
    h = nn.gelu(dense(d, "hidden")(h), approximate=False)
    logits = dense(1, "score")(h)[..., 0].astype(jnp.float32)
    return jax.nn.softmax(logits, axis=-1)


def select_frames(frames: jax.Array, indicators: jax.Array) -> jax.Array:
  """M^T V: frames [B, T, ...] and indicators [B, K, T] (rows sum to 1) -> [B, K, ...]."""
  b, t = frames.shape[:2]
  flat = frames.reshape(b, t, -1)
  out = jnp.einsum("bkt,btf->bkf", indicators.astype(flat.dtype), flat)
  return out.reshape(b, indicators.shape[1], *frames.shape[2:])


def evenly_spaced(num_frames: int, k: int) -> jax.Array:
  """K of T frame indices spread over the clip (the text-free selection: first, last and between)."""
  return jnp.round(jnp.linspace(0, num_frames - 1, k)).astype(jnp.int32)


