"""Pre-norm Transformer encoder (VATT `TransformerEncoder`), with optional remat and scan over layers.

Layer: x + Dropout(MHA(LN(x))), then x + Dropout(MLP(LN(x))); after the last layer a LayerNorm and dropout
(VATT applies both with `pre_norm=True`). LayerNorm eps 1e-6, exact GELU, dropout 0.1 and d_kv 64 are the
VATT defaults (`vatt/configs/video.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import dropout as dropout_lib
from vlm.nn import attention as attention_lib
from vlm.nn import block_sparse
from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib


@dataclasses.dataclass(frozen=True)
class Size:
  """Transformer size: depth, width, MLP width, heads (each family's SIZES table holds these)."""
  num_layers: int
  hidden_size: int
  mlp_dim: int
  num_heads: int


def layer_norm(epsilon: float, dtype: Any, name: str) -> nn.LayerNorm:
  """LayerNorm whose scale and bias carry the `embed` logical axis."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)))


class EncoderBlock(nn.Module):
  """One pre-norm Transformer layer.

  Attributes:
    num_heads: attention heads.
    mlp_dim: feed-forward hidden units.
    head_dim: features per head; None means hidden // num_heads (64 for every VATT size).
    dropout_rate: dropout on the residual branches and in the MLP.
    attention_dropout_rate: dropout on the attention probabilities.
    attention: registered attention kernel name (see vlm.nn.attention).
    attention_kwargs: options for that kernel.
    use_bias: biases in the attention and MLP projections.
    layer_norm_epsilon: LayerNorm epsilon.
    dtype: computation dtype.
  """
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  use_bias: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, bias: jax.Array | None,
               deterministic: bool, layer: jax.Array | None = None) -> tuple[jax.Array, None]:
    """[B, N, D] -> ([B, N, D], None). Positional arguments and the (carry, out) result suit nn.scan.

    `layer` (a scanned encoder's traced layer index) goes to the attention kernel as its option `layer`."""
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.TOKENS, ax.ACT_EMBED))
    head_dim = self.head_dim or x.shape[-1] // self.num_heads
    y = layer_norm(self.layer_norm_epsilon, self.dtype, "ln_attention")(x)
    y = attention_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=head_dim, dropout_rate=self.attention_dropout_rate,
        use_bias=self.use_bias, attention=self.attention, attention_kwargs=self.attention_kwargs,
        dtype=self.dtype, name="attention")(y, mask=mask, bias=bias, train=not deterministic,
                                            kernel_options=None if layer is None else {"layer": layer})
    x = x + dropout_lib.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = layer_norm(self.layer_norm_epsilon, self.dtype, "ln_mlp")(x)
    y = mlp_lib.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, use_bias=self.use_bias,
                         dtype=self.dtype, name="mlp")(y, deterministic=deterministic)
    x = x + dropout_lib.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return x, None


class Encoder(nn.Module):
  """Stack of pre-norm Transformer layers plus the final LayerNorm.

  Attributes:
    num_layers: depth.
    num_heads: attention heads.
    mlp_dim: feed-forward hidden units.
    head_dim: features per head (None: hidden // num_heads).
    dropout_rate: residual / MLP / output dropout.
    attention_dropout_rate: dropout on attention probabilities. VATT uses 0.1; with 0 the training path also
      runs `jax.nn.dot_product_attention` (fused kernels on GPU).
    attention: registered attention kernel ('dense'; 'block_sparse' once registered).
    attention_kwargs: options for that kernel.
    use_bias: biases in attention and MLP projections.
    layer_norm_epsilon: LayerNorm epsilon (1e-6).
    relative_position_buckets: > 0 adds a T5 relative position bias (VATT text: 32 buckets), computed once and
      shared by all layers as in T5.
    relative_max_distance: distance covered by the relative buckets (VATT text: 64).
    remat: rematerialise each layer in the backward pass (`nn.remat`).
    scan: run the layers with `nn.scan` (params stacked on a leading 'layers' axis; faster compiles).
    dtype: computation dtype.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  use_bias: bool = True
  layer_norm_epsilon: float = 1e-6
  relative_position_buckets: int = 0
  relative_max_distance: int = 64
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Encodes a token sequence.

    Args:
      x: [B, N, D] tokens.
      mask: optional [B, N] key-padding mask (nonzero = valid).
      train: enables dropout.

    Returns:
      (x [B, N, D] after the final LayerNorm, aux) with aux['pre_norm'] the last layer's output before it.
    """
    bias = None
    if self.relative_position_buckets:
      bias = attention_lib.RelativePositionBias(
          self.num_heads, self.relative_position_buckets, self.relative_max_distance,
          name="relative_position_bias")(x.shape[1])
    block_kwargs = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, head_dim=self.head_dim, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, attention=self.attention,
        attention_kwargs=self.attention_kwargs, use_bias=self.use_bias,
        layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype)
    block = EncoderBlock
    if self.remat:
      # Argument 4 (counting self) is `deterministic`, a Python bool.
      block = nn.remat(EncoderBlock, static_argnums=(4,), prevent_cse=not self.scan)
    if self.scan:
      # Block-sparse layers get their index, traced, so each evaluates with its own fixed pattern as unrolled.
      per_layer = () if self.attention != block_sparse.KERNEL_NAME else (jnp.arange(self.num_layers),)
      x, _ = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast) + (0,) * len(per_layer), length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: ax.LAYERS},
      )(name="encoderblock", **block_kwargs)(x, mask, bias, not train, *per_layer)
    else:
      for i in range(self.num_layers):  # each layer its own fixed block-sparse eval pattern
        options = block_sparse.layer_options(self.attention, self.attention_kwargs, i)
        layer_kwargs = dict(block_kwargs, attention_kwargs=options)
        x, _ = block(name=f"encoderblock_{i:02d}", **layer_kwargs)(x, mask, bias, not train)
    aux = {"pre_norm": x}
    x = layer_norm(self.layer_norm_epsilon, self.dtype, "encoder_norm")(x)
    x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    return x, aux
