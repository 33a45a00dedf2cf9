"""The one layer stack of every encoder (`Stack`), the pre-norm ViT block, and VATT's pre-norm `Encoder`.

`Stack` runs `num_layers` blocks of one kind, unrolled or under `nn.scan`, each optionally rematerialised
(`nn.remat`). A block is a module called as

  block(carry, shared, layer, train) -> (carry, aux)

  carry   dict of what each layer passes to the next: the tokens 'x' [B, N, D] and whatever a layer may change
          (BEiT: the tokens' grid 'positions', pruned with them; BERT: the cross-attention 'context' and its mask).
  shared  dict of what every layer reads unchanged (a key-padding 'mask', a 'bias' shared by all layers).
  layer   the layer's index: a Python int when unrolled, traced int32 under scan. Per-layer schedules are read
          at it (BEiT's stochastic depth) and attention layers hand it to kernels that want it (block-sparse
          attention's per-layer evaluation pattern, vlm/nn/kernels/).
  train   Python bool: dropout and other training-only randomness.
  aux     dict of this layer's named intermediates ({} for most; e.g. 'cls_attention' where tokens are pruned).

The block kinds: `EncoderBlock` here (pre-norm ViT / VATT), `beit.BeitBlock` (vlm/models/beit.py: layer scale,
3-D relative position bias, token pruning) and `bert.BertBlock` (vlm/models/bert.py: post-norm, optional
cross-attention). A divided space-time block (TimeSformer) fits the same call: its temporal and spatial attention
reshape 'x' inside the block, and the grid it needs travels in `shared`.

VATT's `Encoder`: Layer: x + Dropout(MHA(LN(x))), then x + Dropout(MLP(LN(x))); after the last layer a LayerNorm
and dropout (VATT applies both with `pre_norm=True`). LayerNorm eps 1e-6, exact GELU, dropout 0.1 and d_kv 64 are
the VATT defaults (`vatt/configs/video.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import attention as attention_lib
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib

Carry = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Size:
  """Transformer size: depth, width, MLP width, heads (each family's SIZES table holds these)."""
  num_layers: int
  hidden_size: int
  mlp_dim: int
  num_heads: int


def layer_norm(epsilon: float, dtype: Any, name: str | None) -> nn.LayerNorm:
  """LayerNorm whose scale and bias carry the `embed` logical axis."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)))


class Stack(nn.Module):
  """`num_layers` blocks of one kind (see the module docstring for the block call), unrolled or scanned.

  Parameters: unrolled, each layer under `f'{layer_name}_{i:02d}'`; scanned, one `layer_name` whose arrays carry
  a leading 'layers' axis. A model that owns embeddings around the stack and wants the layers next to them (the
  HF-shaped trees of BEiT / BERT, VATT's `encoderblock_<i>`) calls `nn.share_scope(self, stack)` first.

  Attributes:
    block: the block class.
    num_layers: depth L.
    block_kwargs: the block's attributes, the same for every layer.
    layer_kwargs: optional per-layer attribute overrides, one mapping per layer (e.g. BERT's cross-attention from
      layer k on, a pruning rate on the layers after which tokens are pruned). Scan needs identical layers.
    layer_name: parameter name of the layers.
    remat: rematerialise each layer's activations in the backward pass (`nn.remat`).
    scan: run the layers with `nn.scan` (one traced layer, params stacked: faster compiles).
    first_layer: index of the first layer in a deeper encoder that runs its layers in several stacks (the
      TimeSformer stages between TW-BERT's frame selections): names `layer_<first + i>` and the `layer` index the
      blocks read (per-layer rates) count from it. Unrolled only.
  """
  block: type[nn.Module]
  num_layers: int
  block_kwargs: Mapping[str, Any] | None = None
  layer_kwargs: Sequence[Mapping[str, Any]] | None = None
  layer_name: str = "layer"
  remat: bool = False
  scan: bool = False
  first_layer: int = 0

  def _kwargs(self, i: int) -> dict[str, Any]:
    return {**(self.block_kwargs or {}), **(self.layer_kwargs[i] if self.layer_kwargs else {})}

  @nn.compact
  def __call__(self, x: jax.Array, carry: Mapping[str, Any] | None = None,
               shared: Mapping[str, Any] | None = None, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    """Runs the layers.

    Args:
      x: [B, N, D] tokens.
      carry: further state the layers pass on (block-specific; see the module docstring).
      shared: what every layer reads (block-specific).
      train: enables dropout.

    Returns:
      (x [B, N', D] after the last layer, aux): aux holds the final value of every `carry` entry, and 'layers',
      a tuple of the L layers' aux dicts (the same under scan, unstacked).
    """
    if self.layer_kwargs is not None and len(self.layer_kwargs) != self.num_layers:
      raise ValueError(f"{len(self.layer_kwargs)} layer_kwargs for {self.num_layers} layers.")
    state = {"x": x, **(carry or {})}
    shared = dict(shared or {})
    block = self.block
    if self.scan and self.first_layer:
      raise ValueError(f"a scanned stack holds all its layers under one name; first_layer={self.first_layer} "
                       "needs scan=False.")
    if self.scan:
      kwargs = self._kwargs(0)
      for i in range(1, self.num_layers):
        if self._kwargs(i) != kwargs:
          raise ValueError(f"scan runs identical layers; layer {i} has {self._kwargs(i)} against layer 0's "
                           f"{kwargs} (set scan=False).")
      if self.remat:  # arguments counting self: carry 1, shared 2, layer 3 (traced, scanned), train 4 (static)
        block = nn.remat(block, static_argnums=(4,), prevent_cse=False)
      state, ys = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, 0, nn.broadcast), length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: ax.LAYERS},
      )(name=self.layer_name, **kwargs)(state, shared, jnp.arange(self.num_layers), train)
      layers = tuple(jax.tree.map(lambda y, i=i: y[i], ys) for i in range(self.num_layers))
    else:
      if self.remat:  # unrolled, the layer index stays a Python int as well
        block = nn.remat(block, static_argnums=(3, 4))
      layers = []
      for i in range(self.num_layers):
        index = self.first_layer + i
        state, out = block(name=f"{self.layer_name}_{index:02d}", **self._kwargs(i))(state, shared, index, train)
        layers.append(out)
      layers = tuple(layers)
    x = state.pop("x")
    return x, {**state, "layers": layers}


class EncoderBlock(nn.Module):
  """One pre-norm Transformer layer (ViT / VATT): carry {'x'}, shared {'mask', 'bias'} (each may be None).

  Attributes:
    num_heads: attention heads.
    mlp_dim: feed-forward hidden units.
    head_dim: features per head; None means hidden // num_heads (64 for every VATT size).
    dropout_rate: dropout on the residual branches and in the MLP.
    attention_dropout_rate: dropout on the attention probabilities.
    attention: registered attention kernel name (vlm/nn/kernels/).
    attention_kwargs: options for that kernel.
    use_bias: biases in the attention and MLP projections.
    qkv_bias: biases on the query / key / value projections (None: use_bias).
    drop_path_rates: every layer's stochastic-depth rate, read at the layer's index; () for none.
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
  qkv_bias: bool | None = None
  drop_path_rates: tuple[float, ...] = ()
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Carry, shared: Mapping[str, Any], layer: int | jax.Array, train: bool
               ) -> tuple[Carry, dict[str, Any]]:
    """carry['x'] [B, N, D] -> [B, N, D]; shared: 'mask' [B, N] (nonzero = valid), 'bias' [1, H, N, N]."""
    x = nn.with_logical_constraint(carry["x"], (ax.BATCH, ax.TOKENS, ax.ACT_EMBED))
    head_dim = self.head_dim or x.shape[-1] // self.num_heads
    y = layer_norm(self.layer_norm_epsilon, self.dtype, "ln_attention")(x)
    y, _ = attention_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=head_dim, dropout_rate=self.attention_dropout_rate,
        use_bias=self.use_bias, qkv_bias=self.qkv_bias, attention=self.attention,
        attention_kwargs=self.attention_kwargs, dtype=self.dtype, name="attention")(
            y, mask=shared.get("mask"), bias=shared.get("bias"), train=train, layer=layer)
    drop_path = lambda y: dropout_lib.drop_path(self, y, self.drop_path_rates, layer, train)
    x = x + drop_path(dropout_lib.Dropout(self.dropout_rate)(y, deterministic=not train))
    y = layer_norm(self.layer_norm_epsilon, self.dtype, "ln_mlp")(x)
    y = mlp_lib.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, use_bias=self.use_bias,
                         dtype=self.dtype, name="mlp")(y, deterministic=not train)
    x = x + drop_path(dropout_lib.Dropout(self.dropout_rate)(y, deterministic=not train))
    return {**carry, "x": x}, {}


class Encoder(nn.Module):
  """VATT's Transformer: a `Stack` of pre-norm `EncoderBlock`s, an optional T5 relative bias, the final LayerNorm.

  Attributes:
    num_layers: depth.
    num_heads: attention heads.
    mlp_dim: feed-forward hidden units.
    head_dim: features per head (None: hidden // num_heads).
    dropout_rate: residual / MLP / output dropout.
    attention_dropout_rate: dropout on attention probabilities. VATT uses 0.1; with 0 the training path also
      runs `jax.nn.dot_product_attention` (fused kernels on GPU).
    attention: registered attention kernel ('dense', 'block_sparse'; vlm/nn/kernels/).
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
      (x [B, N, D] after the final LayerNorm, aux): aux['pre_norm'] the last layer's output before it, and
      aux['layers'] the layers' (empty) aux dicts.
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
    stack = Stack(EncoderBlock, self.num_layers, block_kwargs, layer_name="encoderblock", remat=self.remat,
                  scan=self.scan)
    nn.share_scope(self, stack)  # layers directly under the encoder: encoderblock_<i> (ViT checkpoints' layout)
    x, aux = stack(x, shared={"mask": mask, "bias": bias}, train=train)
    aux["pre_norm"] = x
    x = layer_norm(self.layer_norm_epsilon, self.dtype, "encoder_norm")(x)
    x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    return x, aux
