"""BEiT video encoder (SViTT's visual encoder f_v; supplement equations 4-11) and HF BEiT checkpoints.

video [B, T, H, W, 3] -> per-frame 16x16 patches (vlm/nn/patch.py) -> [CLS] + T H W tokens (+ absolute positions
when the model has them) -> BEiT layers (`BeitBlock`s in the shared stack, vlm/nn/transformer.py) -> (tokens,
aux). A BEiT layer is pre-norm like ViT with three differences, all kept here:

* a relative position bias per layer: a table [(2T-1)(2H-1)(2W-1) + 3, heads] read at each (query, key) token
  pair (vlm/nn/video_positions.py; equations 8-10), inflated from the 2-D image table (equation 11);
* layer scale: each residual branch is multiplied by a learned per-channel vector (init 0.1 for BEiT-base);
* no bias on the key projection (a key bias adds the same q.b to every logit of a query, so softmax cancels it:
  ours keeps a zero key bias, which never receives a gradient, so HF checkpoints load exactly).

Node sparsity (SViTT): with `prune_after=(4, 7, 10)` and `keep_rate=q_v`, after each of those layers the patch
tokens are cut to ceil(q_v N) by that layer's head-averaged [CLS] attention (vlm/nn/token_pruning.py; the test
checks the kept positions against HF's attention maps).

Pooling: BEiT's `use_mean_pooling` (LayerNorm of the mean patch token) or the final LayerNorm's [CLS].
The token `positions` passed through the layers are indices into the (1 + T H W) grid, so the relative bias stays
right when tokens are reordered (`token_order='morton' | 'hilbert'`, table A7) or pruned (vlm/nn/token_pruning.py).

`from_hf_beit(flat, ...)` maps HF `BeitModel` weights (safetensors) onto these parameters; the test saves a
random HF BEiT and matches its hidden states and pooled output on images (T = 1), then inflates the same weights
to a 4-frame model and checks that a static clip's [CLS] matches.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm.models import hf_weights
from vlm.nn import attention as attention_lib
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib
from vlm.nn import patch as patch_lib
from vlm.nn import token_pruning
from vlm.nn import transformer
from vlm.nn import video_positions
from vlm.nn.kernels import block_sparse


class BeitBlock(nn.Module):
  """One BEiT layer: carry {'x' [B, N, D], 'positions' [B, N] into the (1 + T H W) grid}; shared unused.

  Pre-norm like ViT, with a relative position bias of its own, layer scale on both residual branches and
  stochastic depth (module docstring). With `keep_rate` < 1 the layer prunes the patch tokens after itself to
  ceil(q N) by its head-averaged [CLS] attention (aux['cls_attention'] [B, N - 1]), positions alongside.

  Attributes:
    num_heads, mlp_dim: attention heads and feed-forward width.
    grid: (T, H, W) patch grid of the relative-position table.
    layer_scale_init: initial layer-scale value (BEiT-base 0.1); None: no layer scale.
    dropout_rate, attention_dropout_rate: dropout on the branches / the attention probabilities.
    drop_path_rates: stochastic-depth rate of every layer of the stack, read at the layer's index (BEiT: linear
      from 0 to the maximum); () for none.
    attention, attention_kwargs: the registered attention kernel (vlm/nn/kernels/) and its options.
    layer_norm_epsilon: LayerNorm epsilon (1e-12).
    keep_rate: q_v of the pruning after this layer; 1.0 keeps every token.
    dtype: computation dtype.
  """
  num_heads: int
  mlp_dim: int
  grid: tuple[int, int, int]
  layer_scale_init: float | None = 0.1
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rates: tuple[float, ...] = ()
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  layer_norm_epsilon: float = 1e-12
  keep_rate: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: transformer.Carry, shared: Mapping[str, Any], layer: int | jax.Array, train: bool
               ) -> tuple[transformer.Carry, dict[str, Any]]:
    del shared  # BEiT's bias is each layer's own, read at the carried positions
    x, positions = carry["x"], carry["positions"]
    d = x.shape[-1]
    prune = self.keep_rate < 1.0
    table = self.param("relative_position_bias_table",
                       nn.with_logical_partitioning(nn.initializers.zeros, (None, ax.HEADS)),
                       (video_positions.table_size(self.grid), self.num_heads), jnp.float32)
    index = jnp.asarray(video_positions.relative_position_index(self.grid))
    pair = index[positions[:, :, None], positions[:, None, :]]  # [B, N, N]
    bias = jnp.moveaxis(table[pair], -1, 1)  # [B, heads, N, N]
    y = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "ln_attention")(x)
    y, attn_aux = attention_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=d // self.num_heads, dropout_rate=self.attention_dropout_rate,
        attention=self.attention, attention_kwargs=self.attention_kwargs, cls_attention=prune, dtype=self.dtype,
        name="attention")(y, bias=bias, train=train, layer=layer)
    x = x + self._branch(y, "layer_scale_attention", layer, train)
    y = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "ln_mlp")(x)
    y = mlp_lib.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, dtype=self.dtype, name="mlp")(
        y, deterministic=not train)
    x = x + self._branch(y, "layer_scale_mlp", layer, train)
    if not prune:
      return {**carry, "x": x}, {}
    # Node sparsity: keep the tokens [CLS] attended to most in this layer (vlm/nn/token_pruning.py).
    x, kept, _ = token_pruning.prune(x, attn_aux["cls_attention"], self.keep_rate, positions=positions[:, 1:])
    positions = jnp.concatenate([positions[:, :1], kept], axis=1)
    return {**carry, "x": x, "positions": positions}, attn_aux

  def _branch(self, y: jax.Array, scale_name: str, layer: int | jax.Array, train: bool) -> jax.Array:
    y = dropout_lib.Dropout(self.dropout_rate)(y, deterministic=not train)
    if self.layer_scale_init is not None:
      scale = self.param(scale_name, nn.with_logical_partitioning(
          nn.initializers.constant(self.layer_scale_init), (ax.EMBED,)), (y.shape[-1],), jnp.float32)
      y = y * scale.astype(y.dtype)
    return dropout_lib.drop_path(self, y, self.drop_path_rates, layer, train)


class VideoBeit(nn.Module):
  """video [B, T, H, W, 3] -> (tokens [B, 1 + N', D], aux): patch embedding, [CLS] and positions, then a
  `transformer.Stack` of `BeitBlock`s.

  aux: 'pooled' [B, D]; 'positions' [B, 1 + N'] (grid index of every kept token, pruning and token order
  included); 'layers' the L layers' aux dicts ('cls_attention' [B, N_l] on the layers that prune)."""
  num_layers: int = 12
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  patch_size: int = 16
  frames: int = 4  # T of the relative-position grid (and of the absolute table)
  image_size: int = 224
  absolute_positions: bool = False
  mean_pooling: bool = True
  layer_scale_init: float | None = 0.1
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  layer_norm_epsilon: float = 1e-12
  prune_after: tuple[int, ...] = ()  # 1-based layers after which tokens are pruned (SViTT: 4, 7, 10)
  keep_rate: float = 1.0  # q_v: fraction of the patch tokens kept at each pruning
  token_order: str = "raster"  # 'morton' | 'hilbert': tokens laid out along a space-filling curve (table A7)
  remat: bool = False  # rematerialise each layer in the backward pass
  scan: bool = False  # nn.scan over the layers (identical layers: no pruning); params under 'layer' stacked
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    b, t, h, w, _ = video.shape
    if self.prune_after:
      token_pruning.keep_count(1, self.keep_rate)  # validates q_v in (0, 1] before any compute
    side = self.image_size // self.patch_size
    grid = (self.frames, side, side)
    if (t, h // self.patch_size, w // self.patch_size) != grid:
      raise ValueError(f"VideoBeit built for {self.frames} frames of {self.image_size}x{self.image_size} got a "
                       f"[{t}, {h}, {w}] clip; expand the checkpoint to the new length (vlm/nn/video_positions.py)"
                       " or change the model's frames / image_size.")
    d = self.hidden_size
    x = patch_lib.PatchEmbed(d, (1, self.patch_size, self.patch_size), dtype=self.dtype,
                             name="patch_embedding")(video).reshape(b, -1, d)
    cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, ax.EMBED)),
                     (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    if self.absolute_positions:
      table = self.param("pos_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                       (None, None, ax.EMBED)),
                         (1, x.shape[1], d), jnp.float32)
      x = x + table.astype(x.dtype)
    x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    order = np.arange(x.shape[1])
    if self.token_order != "raster":
      # Space-filling order (SViTT table A7): the blocks of block-sparse attention become compact space-time
      # cubes. Positions travel with the tokens, so the relative bias (and dense attention) are unchanged, and
      # pruning keeps this order.
      order = np.concatenate([[0], 1 + block_sparse.token_order(grid, self.token_order)])
      x = x[:, order]
    positions = jnp.broadcast_to(jnp.asarray(order), (b, x.shape[1]))
    block_kwargs = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, grid=grid, layer_scale_init=self.layer_scale_init,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        drop_path_rates=dropout_lib.linear_rates(self.drop_path_rate, self.num_layers),  # linear, as BEiT
        attention=self.attention, attention_kwargs=self.attention_kwargs,
        layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype)
    pruned = [(i + 1) in self.prune_after and self.keep_rate < 1.0 for i in range(self.num_layers)]
    stack = transformer.Stack(
        BeitBlock, self.num_layers, block_kwargs, layer_name="layer", remat=self.remat, scan=self.scan,
        layer_kwargs=[{"keep_rate": self.keep_rate} if p else {} for p in pruned] if any(pruned) else None)
    nn.share_scope(self, stack)  # layer_<i> next to the embeddings, as HF BEiT (`from_hf_beit`)
    x, aux = stack(x, carry={"positions": positions}, train=train)
    norm = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "pool_norm" if self.mean_pooling
                                  else "encoder_norm")
    if self.mean_pooling:  # BEiT: tokens stay un-normalised, the pooled mean of the patches is normalised
      pooled = norm(x[:, 1:].mean(axis=1))
    else:
      x = norm(x)
      pooled = x[:, 0]
    return x, {**aux, "pooled": pooled}


def from_hf_beit(flat: Mapping[str, Any], num_heads: int, *, image_grid: tuple[int, int],
                 frames: int = 1) -> dict[str, Any]:
  """VideoBeit params from HF `BeitModel` weights ({name: array}), the relative tables inflated to `frames`.

  HF names: `embeddings.{cls_token, patch_embeddings.projection.*, position_embeddings}`,
  `encoder.layer.<i>.{layernorm_before, attention.attention.{query,key,value}, attention.attention.
  relative_position_bias.relative_position_bias_table, attention.output.dense, lambda_1, layernorm_after,
  intermediate.dense, output.dense, lambda_2}`, `pooler.layernorm` (mean pooling) or `layernorm`.
  """
  flat = hf_weights.strip_prefix(flat, "beit.")
  take = lambda name: hf_weights.take(flat, name, "HF BEiT checkpoint")

  d = take("embeddings.patch_embeddings.projection.weight").shape[0]
  heads_dim = (num_heads, d // num_heads)
  out: dict[str, Any] = {
      "patch_embedding": {"kernel": take("embeddings.patch_embeddings.projection.weight").transpose(2, 3, 1, 0)[None],
                          "bias": take("embeddings.patch_embeddings.projection.bias")},
      "cls": take("embeddings.cls_token"),
  }
  if "embeddings.position_embeddings" in flat:
    out["pos_embedding"] = video_positions.inflate_absolute(take("embeddings.position_embeddings")[0], frames)[None]
  layers = sorted({int(m.group(1)) for k in flat if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
  for i in layers:
    p = f"encoder.layer.{i}."
    lin = lambda n: (take(p + n + ".weight").T, flat.get(p + n + ".bias"))
    att = {}
    for proj in ("query", "key", "value"):
      w, bias = lin(f"attention.attention.{proj}")
      att[proj] = {"kernel": w.reshape((d,) + heads_dim),
                   "bias": (np.zeros(heads_dim, np.float32) if bias is None else bias.reshape(heads_dim))}
    w, bias = lin("attention.output.dense")
    att["out"] = {"kernel": w.reshape(heads_dim + (d,)), "bias": bias}
    table = take(p + "attention.attention.relative_position_bias.relative_position_bias_table")
    layer = {
        "relative_position_bias_table": video_positions.inflate_relative(table, image_grid, frames),
        "ln_attention": {"scale": take(p + "layernorm_before.weight"), "bias": take(p + "layernorm_before.bias")},
        "attention": att,
        "ln_mlp": {"scale": take(p + "layernorm_after.weight"), "bias": take(p + "layernorm_after.bias")},
        "mlp": {"wi": dict(zip(("kernel", "bias"), lin("intermediate.dense"))),
                "wo": dict(zip(("kernel", "bias"), lin("output.dense")))},
    }
    if p + "lambda_1" in flat:
      layer["layer_scale_attention"] = take(p + "lambda_1")
      layer["layer_scale_mlp"] = take(p + "lambda_2")
    out[f"layer_{i:02d}"] = layer
  if "pooler.layernorm.weight" in flat:
    out["pool_norm"] = {"scale": take("pooler.layernorm.weight"), "bias": take("pooler.layernorm.bias")}
  else:
    out["encoder_norm"] = {"scale": take("layernorm.weight"), "bias": take("layernorm.bias")}
  return jax.tree.map(jnp.asarray, out)
