"""BERT text and multimodal encoders (SViTT f_t and f_m, as in Singularity) and HF BERT checkpoints.

BERT layers are post-norm: h = LN(x + Dropout(SelfAttn(x))), [h = LN(h + Dropout(CrossAttn(h, video)))],
out = LN(h + Dropout(MLP(h))), exact GELU, LayerNorm eps 1e-12. Embeddings: word + learned absolute position +
token type (type 0 for text), then LayerNorm and dropout.

`BertEncoder(num_layers, cross_attention_from=k)`: the embeddings, then the shared layer stack
(vlm/nn/transformer.py `Stack`) of `BertBlock`s; layers k.. also cross-attend to a `context` (the video tokens),
which makes the upper layers of a BERT the multimodal encoder f_m; with k >= num_layers it is the plain text
encoder f_t. Singularity / SViTT split one 12-layer BERT into 9 text layers and 3 multimodal layers. Self- and
cross-attention take any registered kernel (vlm/nn/kernels/). It returns (hidden states, aux), aux holding the
context as the last layer saw it.

Multimodal node sparsity (SViTT supplement A.1, q_m): with `context_prune_after=(1,)` and `context_keep_rate=q_m`,
after the cross-attention of those layers (1-based) the context keeps its first token ([CLS]) and the ceil(q_m N)
video tokens that the text [CLS] attended to most in that cross-attention, averaged over heads; later layers
cross-attend to the kept tokens only. The paper states this; the release's configs set `joint_encoder_args` but
no code reads it (JerryYLi/svitt, models/sparse_xbert.py), so here it is applied as stated.

`causal=True` makes the self-attention causal (SViTT's QA answer decoder, a BERT LM head model over the answer).

DistilBERT (HierVL's text encoder) is the same encoder with `type_vocab_size=0` (no token-type table): 6 post-norm
layers of the same form; `from_hf_distilbert(flat)` maps HF `DistilBertModel` weights (tests match HF's hidden
states on random weights).

`from_hf_bert(flat)` maps HF `BertModel` weights (`embeddings.*`, `encoder.layer.<i>.*`, optional
`crossattention.*`) onto these parameters: tests match HF's hidden states on random weights, and the real MiniLM-L6
weights where the package that ships them is installed.
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
from vlm.nn import token_pruning
from vlm.nn import transformer


class BertBlock(nn.Module):
  """One post-norm BERT layer, optionally cross-attending to a context.

  carry: 'x' [B, L, D] text states, 'context' [B, M, Dc] (or None) and 'context_mask' [B, M] (or None); shared:
  'mask' [B, L] text key mask (or None). With `context_keep_rate` < 1 the layer prunes the context after itself
  to its first token ([CLS]) and the ceil(q_m (M - 1)) tokens the text [CLS] cross-attended to most, averaged
  over heads (aux['cls_attention'] [B, M - 1]).

  Attributes:
    num_heads, mlp_dim: attention heads and feed-forward width.
    cross_attention: cross-attend to carry['context'] after the self-attention.
    causal: causal self-attention (the answer decoder).
    context_keep_rate: q_m of the pruning after this layer; 1.0 keeps the whole context.
    attention, attention_kwargs: the self-attention kernel (vlm/nn/kernels/) and its options.
    cross_attention_kernel, cross_attention_kwargs: the cross-attention kernel and its options (any registered
      kernel that takes queries and keys of different lengths).
    dropout_rate, attention_dropout_rate: dropout on the branches / the attention probabilities (0.1).
    layer_norm_epsilon: LayerNorm epsilon (1e-12).
    dtype: computation dtype.
  """
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  causal: bool = False
  context_keep_rate: float = 1.0
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  cross_attention_kernel: str = "dense"
  cross_attention_kwargs: Mapping[str, Any] | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: transformer.Carry, shared: Mapping[str, Any], layer: int | jax.Array, train: bool
               ) -> tuple[transformer.Carry, dict[str, Any]]:
    x, context, context_mask = carry["x"], carry.get("context"), carry.get("context_mask")
    d = x.shape[-1]
    drop = lambda y: dropout_lib.Dropout(self.dropout_rate)(y, deterministic=not train)
    attn = lambda name, kernel, options, **kw: attention_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=d // self.num_heads, dropout_rate=self.attention_dropout_rate,
        attention=kernel, attention_kwargs=options, dtype=self.dtype, name=name, **kw)
    norm = lambda name: transformer.layer_norm(self.layer_norm_epsilon, self.dtype, name)
    bias = causal_bias(x.shape[1]) if self.causal else None
    y, _ = attn("attention", self.attention, self.attention_kwargs)(x, mask=shared.get("mask"), bias=bias,
                                                                    train=train, layer=layer)
    x = norm("ln_attention")(x + drop(y))
    aux = {}
    if self.cross_attention:
      if context is None:
        raise ValueError("This BERT layer cross-attends: pass the context (e.g. video tokens).")
      y, aux = attn("cross_attention", self.cross_attention_kernel, self.cross_attention_kwargs,
                    cls_attention=self.context_keep_rate < 1.0)(x, context=context, mask=context_mask,
                                                                train=train, layer=layer)
      x = norm("ln_cross_attention")(x + drop(y))
    y = mlp_lib.MlpBlock(self.mlp_dim, dropout_rate=0.0, dtype=self.dtype, name="mlp")(x, deterministic=not train)
    x = norm("ln_mlp")(x + drop(y))
    if self.cross_attention and self.context_keep_rate < 1.0:  # multimodal node sparsity (q_m)
      context, _, context_mask = token_pruning.prune(context, aux["cls_attention"], self.context_keep_rate,
                                                     mask=context_mask)
    return {**carry, "x": x, "context": context, "context_mask": context_mask}, aux


def causal_bias(length: int) -> jax.Array:
  """[1, 1, L, L] additive bias: 0 where key <= query, a large negative number above the diagonal."""
  allowed = np.tril(np.ones((length, length), bool))
  return jnp.asarray(np.where(allowed, 0.0, -1e9), jnp.float32)[None, None]


class BertEncoder(nn.Module):
  """ids [B, L] (+ mask) -> (hidden states [B, L, D], aux): embeddings, then a `transformer.Stack` of
  `BertBlock`s; layers >= cross_attention_from cross-attend to `context`.

  aux: 'context' and 'context_mask' as the last layer saw them (after pruning; None without a context), and
  'layers', the layers' aux dicts ('cls_attention' [B, M - 1] on the layers that prune the context).
  """
  vocab_size: int = 30522
  num_layers: int = 12
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  max_positions: int = 512
  type_vocab_size: int = 2  # 0: no token-type table (DistilBERT)
  cross_attention_from: int = 1_000  # no cross-attention by default
  embed: bool = True  # False: the input is already hidden states (the multimodal half of a split BERT)
  causal: bool = False  # causal self-attention (answer decoder)
  context_prune_after: tuple[int, ...] = ()  # 1-based layers after whose cross-attention the context is pruned
  context_keep_rate: float = 1.0  # q_m
  attention: str = "dense"  # self-attention kernel (vlm/nn/kernels/)
  attention_kwargs: Mapping[str, Any] | None = None
  cross_attention_kernel: str = "dense"
  cross_attention_kwargs: Mapping[str, Any] | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  remat: bool = False  # rematerialise each layer in the backward pass
  scan: bool = False  # nn.scan over the layers (identical layers only); params under 'layer' stacked
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, mask: jax.Array | None = None, *, context: jax.Array | None = None,
               context_mask: jax.Array | None = None, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """ids [B, L] (or hidden states [B, L, D] when embed=False) -> (hidden states [B, L, D], aux)."""
    if self.context_prune_after:
      token_pruning.keep_count(1, self.context_keep_rate)  # validates q_m before any compute
    if self.embed:
      length = inputs.shape[1]
      if length > self.max_positions:
        raise ValueError(f"text of {length} tokens is longer than the {self.max_positions} positions of the "
                         "encoder; truncate it in the tokenizer (input.max_text_len).")
      table = lambda name, n: self.param(name, nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                            (None, ax.EMBED)),
                                         (n, self.hidden_size), jnp.float32)
      x = (jnp.take(table("word_embeddings", self.vocab_size), inputs, axis=0)
           + table("position_embeddings", self.max_positions)[None, :length])
      if self.type_vocab_size:  # DistilBERT has no token types
        x = x + table("token_type_embeddings", self.type_vocab_size)[None, :1]
      x = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "embedding_norm")(x.astype(self.dtype))
      x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    else:
      x = inputs
    mask = None if mask is None else mask.astype(bool)
    block_kwargs = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, causal=self.causal, attention=self.attention,
        attention_kwargs=self.attention_kwargs, cross_attention_kernel=self.cross_attention_kernel,
        cross_attention_kwargs=self.cross_attention_kwargs, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, layer_norm_epsilon=self.layer_norm_epsilon,
        dtype=self.dtype)
    layer_kwargs = []
    for i in range(self.num_layers):
      cross = i >= self.cross_attention_from
      prune = cross and (i + 1) in self.context_prune_after and self.context_keep_rate < 1.0
      layer_kwargs.append(dict(cross_attention=cross, context_keep_rate=self.context_keep_rate if prune else 1.0))
    stack = transformer.Stack(BertBlock, self.num_layers, block_kwargs, layer_kwargs=layer_kwargs,
                              layer_name="layer", remat=self.remat, scan=self.scan)
    nn.share_scope(self, stack)  # layer_<i> next to the embeddings, as HF BERT (`from_hf_bert`)
    return stack(x, carry={"context": context, "context_mask": context_mask}, shared={"mask": mask}, train=train)


class MlmHead(nn.Module):
  """BERT's prediction head: Dense(D) + GELU + LayerNorm, then logits against a (tied) embedding table."""
  layer_norm_epsilon: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
    """x [B, L, D], embedding [V, D] -> logits [B, L, V] (float32)."""
    d = x.shape[-1]
    x = nn.Dense(d, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (ax.EMBED, ax.MLP)), name="transform")(x)
    x = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "transform_norm")(nn.gelu(x, approximate=False))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (ax.VOCAB,)),
                      (embedding.shape[0],), jnp.float32)
    logits = jnp.einsum("bld,vd->blv", x, embedding.astype(x.dtype), preferred_element_type=jnp.float32)
    return logits + bias


def from_hf_bert(flat: Mapping[str, Any], num_heads: int, *, first_layer: int = 0,
                 num_layers: int | None = None, embeddings: bool = True) -> dict[str, Any]:
  """BertEncoder params from HF `BertModel` weights: layers [first_layer, first_layer + num_layers) renumbered
  from 0 (a 12-layer BERT splits into a 9-layer text encoder and a 3-layer multimodal one)."""
  flat = hf_weights.strip_prefix(flat, "bert.")
  take = lambda name: hf_weights.take(flat, name, "HF BERT checkpoint")

  d = take("embeddings.word_embeddings.weight").shape[1]
  hd = (num_heads, d // num_heads)
  out: dict[str, Any] = {}
  if embeddings:
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
      out[name] = take(f"embeddings.{name}.weight")
    out["embedding_norm"] = {"scale": take("embeddings.LayerNorm.weight"), "bias": take("embeddings.LayerNorm.bias")}
  available = sorted({int(m.group(1)) for k in flat if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
  count = len(available) - first_layer if num_layers is None else num_layers
  for j in range(count):
    p = f"encoder.layer.{first_layer + j}."

    def attention(prefix):
      att = {}
      for proj in ("query", "key", "value"):
        w = take(f"{p}{prefix}.self.{proj}.weight").T
        att[proj] = {"kernel": w.reshape((w.shape[0],) + hd), "bias": take(f"{p}{prefix}.self.{proj}.bias").reshape(hd)}
      att["out"] = {"kernel": take(f"{p}{prefix}.output.dense.weight").T.reshape(hd + (d,)),
                    "bias": take(f"{p}{prefix}.output.dense.bias")}
      norm = {"scale": take(f"{p}{prefix}.output.LayerNorm.weight"), "bias": take(f"{p}{prefix}.output.LayerNorm.bias")}
      return att, norm

    layer = {}
    layer["attention"], layer["ln_attention"] = attention("attention")
    if f"{p}crossattention.self.query.weight" in flat:
      layer["cross_attention"], layer["ln_cross_attention"] = attention("crossattention")
    dense = lambda name: {"kernel": take(f"{p}{name}.weight").T, "bias": take(f"{p}{name}.bias")}
    layer["mlp"] = {"wi": dense("intermediate.dense"), "wo": dense("output.dense")}
    layer["ln_mlp"] = {"scale": take(p + "output.LayerNorm.weight"), "bias": take(p + "output.LayerNorm.bias")}
    out[f"layer_{j:02d}"] = layer
  return jax.tree.map(jnp.asarray, out)


def from_hf_distilbert(flat: Mapping[str, Any], num_heads: int) -> dict[str, Any]:
  """BertEncoder params (type_vocab_size=0) from HF `DistilBertModel` weights (optional `distilbert.` prefix).

  HF names: `embeddings.{word_embeddings, position_embeddings, LayerNorm}`, `transformer.layer.<i>.{attention.
  {q_lin, k_lin, v_lin, out_lin}, sa_layer_norm, ffn.{lin1, lin2}, output_layer_norm}`.
  """
  flat = hf_weights.strip_prefix(flat, "distilbert.")
  take = lambda name: hf_weights.take(flat, name, "HF DistilBERT checkpoint")
  d = take("embeddings.word_embeddings.weight").shape[1]
  hd = (num_heads, d // num_heads)
  norm = lambda name: {"scale": take(name + ".weight"), "bias": take(name + ".bias")}
  dense = lambda name: {"kernel": take(name + ".weight").T, "bias": take(name + ".bias")}
  out: dict[str, Any] = {"word_embeddings": take("embeddings.word_embeddings.weight"),
                         "position_embeddings": take("embeddings.position_embeddings.weight"),
                         "embedding_norm": norm("embeddings.LayerNorm")}
  layers = sorted({int(m.group(1)) for k in flat if (m := re.match(r"transformer\.layer\.(\d+)\.", k))})
  for i in layers:
    p = f"transformer.layer.{i}."
    att = {ours: {"kernel": take(f"{p}attention.{theirs}.weight").T.reshape((d,) + hd),
                  "bias": take(f"{p}attention.{theirs}.bias").reshape(hd)}
           for ours, theirs in (("query", "q_lin"), ("key", "k_lin"), ("value", "v_lin"))}
    att["out"] = {"kernel": take(p + "attention.out_lin.weight").T.reshape(hd + (d,)),
                  "bias": take(p + "attention.out_lin.bias")}
    out[f"layer_{i:02d}"] = {"attention": att, "ln_attention": norm(p + "sa_layer_norm"),
                             "mlp": {"wi": dense(p + "ffn.lin1"), "wo": dense(p + "ffn.lin2")},
                             "ln_mlp": norm(p + "output_layer_norm")}
  return jax.tree.map(jnp.asarray, out)


def mlm_head_from_hf(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`MlmHead` params from HF `BertForMaskedLM` weights (`cls.predictions.*`); {} when the file has no head
  (a plain `BertModel`)."""
  head = "cls.predictions."
  if head + "bias" not in flat:
    return {}
  take = lambda n: np.asarray(hf_weights.take(flat, head + n, "HF BERT MLM head"))
  return {"transform": {"kernel": take("transform.dense.weight").T, "bias": take("transform.dense.bias")},
          "transform_norm": {"scale": take("transform.LayerNorm.weight"), "bias": take("transform.LayerNorm.bias")},
          "bias": take("bias")}
