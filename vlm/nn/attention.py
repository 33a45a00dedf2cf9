"""Multi-head attention layer with a pluggable kernel (vlm/nn/kernels/), and T5 relative position biases.

The kernel is chosen by name (`MultiHeadAttention.attention`: 'dense', 'block_sparse' or any kernel registered in
vlm/nn/kernels/registry.py), for self- and cross-attention alike, so a family can swap the dense kernel for a
sparse one without touching the layer. This module imports the kernels; the kernels never import it.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm.nn import kernels
from vlm.nn import logical as ax
from vlm.nn import token_pruning


class MultiHeadAttention(nn.Module):
  """Multi-head attention: q/k/v projections, a registered kernel, output projection.

  Attributes:
    num_heads: number of heads H.
    head_dim: features per head K (VATT d_kv = 64).
    dropout_rate: dropout on the attention probabilities (training only).
    use_bias: biases on the q/k/v/out projections.
    qkv_bias: biases on q/k/v alone (None: use_bias); timm ViTs without them keep the output bias.
    attention: name of the registered kernel ('dense', 'block_sparse', ...; vlm/nn/kernels/).
    attention_kwargs: extra keyword options for that kernel.
    cls_attention: also compute query 0's attention over the keys after the first, averaged over heads (the
      token-pruning score of SViTT; vlm/nn/token_pruning.py), densely from the same q, k and bias, whatever the
      kernel: aux['cls_attention'] [B, M - 1].
    dtype: computation dtype.
  """
  num_heads: int
  head_dim: int = 64
  dropout_rate: float = 0.0
  use_bias: bool = True
  qkv_bias: bool | None = None
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  cls_attention: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, context: jax.Array | None = None, mask: jax.Array | None = None,
               bias: jax.Array | None = None, train: bool = False,
               layer: int | jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Self-attention over x, or cross-attention from x to `context`.

    Args:
      x: [B, N, D] inputs (the queries).
      context: optional [B, M, Dc] keys/values source (cross-attention); default x.
      mask: optional [B, M] key-padding mask (nonzero = valid token).
      bias: optional logit bias broadcastable to [B, H, N, M].
      train: enables dropout (and whatever randomness the kernel uses).
      layer: the encoder layer's index (traced under `nn.scan`); goes to kernels registered with `takes_layer`
        (block-sparse attention's per-layer evaluation pattern), and to no other.

    Returns:
      ([B, N, D], aux): aux holds 'cls_attention' [B, M - 1] when `cls_attention` is set, else nothing.
    """
    d = x.shape[-1]
    heads = (self.num_heads, self.head_dim)
    qkv_axes = ((ax.EMBED, ax.HEADS, ax.KV), (ax.HEADS, ax.KV))
    source = x if context is None else context

    def proj(name, inputs):
      return EinsumDense("bnd,dhk->bnhk", (inputs.shape[-1],) + heads, qkv_axes, in_axes=(0,), out_axes=(1, 2),
                         use_bias=self.use_bias if self.qkv_bias is None else self.qkv_bias, dtype=self.dtype,
                         name=name)(inputs)

    q, k, v = proj("query", x), proj("key", source), proj("value", source)  # [B, N|M, H, K]
    rng = self.make_rng("dropout") if train and self.has_rng("dropout") else None
    options = dict(self.attention_kwargs or {})
    if layer is not None and kernels.takes_layer(self.attention):
      options["layer"] = layer
    out = kernels.get_attention_fn(self.attention)(
        q, k, v, mask=None if mask is None else mask.astype(bool), bias=bias, dropout_rate=self.dropout_rate,
        dropout_rng=rng, deterministic=not train, **options)
    out = EinsumDense("bnhk,hkd->bnd", heads + (d,), ((ax.HEADS, ax.KV, ax.EMBED), (ax.EMBED,)),
                      in_axes=(0, 1), out_axes=(2,), use_bias=self.use_bias, dtype=self.dtype, name="out")(out)
    aux = {}
    if self.cls_attention:
      aux["cls_attention"] = token_pruning.cls_attention(q, k, mask=mask, bias=bias)
    return out, aux


class EinsumDense(nn.Module):
  """A projection with a multi-axis kernel, created in its final shape with logical axis names.

  Used instead of `nn.DenseGeneral`, whose kernel is initialised flat and reshaped afterwards: under a mesh with
  logical rules, that reshape applies the 3-axis sharding annotation to the 2-D array and fails. The Glorot fans
  are those of the flattened matrix, exactly as DenseGeneral computes them.

  Attributes:
    equation: einsum of (inputs, kernel), e.g. 'bnd,dhk->bnhk'.
    kernel_shape: full kernel shape.
    axes: (kernel logical axes, bias logical axes); the bias has the kernel's output axes.
    in_axes / out_axes: kernel axes that are fan-in / fan-out.
  """
  equation: str
  kernel_shape: tuple[int, ...]
  axes: tuple[tuple[str, ...], tuple[str, ...]]
  in_axes: tuple[int, ...]
  out_axes: tuple[int, ...]
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.xavier_uniform(in_axis=self.in_axes, out_axis=self.out_axes)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes[0]), self.kernel_shape,
                        jnp.float32)
    y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias_shape = tuple(self.kernel_shape[i] for i in self.out_axes)
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1]), bias_shape,
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def relative_position_bucket(relative_position: np.ndarray, *, num_buckets: int = 32, max_distance: int = 64,
                             bidirectional: bool = True) -> np.ndarray:
  """T5's bucketing of relative positions (key - query), as used by VATT's text Transformer.

  Half the buckets (per direction when bidirectional) hold exact distances 0..max_exact-1; the rest cover
  distances up to `max_distance` logarithmically; farther distances share the last bucket.

  Args:
    relative_position: int array of key_position - query_position.
    num_buckets: total number of buckets (VATT: 32).
    max_distance: distance at which the last bucket starts (VATT: 64).
    bidirectional: separate buckets for keys before and after the query.

  Returns:
    int32 array of bucket ids in [0, num_buckets), same shape.
  """
  n = -np.asarray(relative_position, np.int64)
  ret = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  large = max_exact + (np.log(np.maximum(n, 1) / max_exact) / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return (ret + np.where(n < max_exact, n, large)).astype(np.int32)


def _keras_uniform(key, shape, dtype=jnp.float32):
  """U(-0.05, 0.05): the Keras Embedding default the release's relative-bias table is created with."""
  return jax.random.uniform(key, shape, dtype, -0.05, 0.05)


class RelativePositionBias(nn.Module):
  """Learned per-head bias for each relative-position bucket (T5 / VATT text Transformer).

  Attributes:
    num_heads: H.
    num_buckets: number of buckets (32).
    max_distance: see `relative_position_bucket` (64).
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 64

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    """Returns the [1, H, N, N] bias for a length-N self-attention."""
    pos = np.arange(length)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)  # [N(query), N(key)]
    table = self.param("rel_embedding", nn.with_logical_partitioning(_keras_uniform, (None, ax.HEADS)),
                       (self.num_buckets, self.num_heads))
    return jnp.transpose(table[buckets], (2, 0, 1))[None]

