"""Trajectory-word cross-modal attention (TW-BERT, main paper section 3.2 and supplement A, figure A1).

Inputs of a layer: text X [B, L, D] (with its padding mask) and video V = [CLS; T frames x N patches]
[B, 1 + T N, D], frame-major. One attention block updates both (as released, one set of projections is shared
between the word queries of W2P and the video queries, and between all keys / values of the video update):

  W2P  (word to patch) every word attends to the patches of each frame separately, one softmax per frame:
       traj[b, l, t] = LN(W_traj Attn(q = X_l, k = v = frame t's patches))           [B, L, T, D]
       i.e. each word's "trajectory": where it is in every frame (equation 3).
  T2W  (trajectory to word) each word i attends over all L words and its own T trajectory points, one
       softmax over the L + T keys (padding words masked) -> the text update (equation 4). Its weights on the T
       points (renormalised) are beta_t of supplement C.
  P2W  (option `mode='p2w'`, appendix C's baseline) instead of W2P + T2W: each word attends over all L words and
       all T N patches in one softmax; the frame weight is the sum over the frame's patches (alpha of
       supplement C), renormalised over the video keys.
  video each frame's [CLS; patches] attend to [text; that frame's patches; CLS]; the frames' [CLS] outputs are
       averaged into one video [CLS].

A layer (`TrajectoryWordBlock`, the release's `Cross_EncoderLayer`): pre-norm, one LayerNorm over text and
video tokens alike, then the attention block, residual; LayerNorm, GELU MLP, residual. The encoder ends with a
LayerNorm (applied by the model). It is a `vlm.nn.transformer.Stack` block: carry {'x': text, 'video'}, shared
{'text_mask'}; aux {'frame_weights' [B, H, L, T]} and, for W2P, {'word_patch_attention' [B, H, T, L, N]} (heat
maps). Initialisation from BERT layers (TW-BERT: 6-11) is `vlm.models.twbert.from_hf_bert_cross`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import attention as attention_lib
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib
from vlm.nn import transformer

MODES = ("t2w", "p2w")
_NEG = -1e9


def _softmax(logits: jax.Array, valid: jax.Array | None) -> jax.Array:
  if valid is not None:
    logits = jnp.where(valid, logits, _NEG)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


class TrajectoryWordAttention(nn.Module):
  """The attention block of a TW-BERT cross-modal layer (module docstring).

  Attributes:
    num_heads: heads H (head width D / H).
    frames: T (the video token count gives N).
    mode: 't2w' (W2P then T2W) or 'p2w'.
    dropout_rate: dropout on the attention probabilities (training only; 0.1 as released).
    dtype: computation dtype.
  """
  num_heads: int
  frames: int
  mode: str = "t2w"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, text: jax.Array, text_mask: jax.Array, video: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """text [B, L, D], text_mask [B, L], video [B, 1 + T N, D] -> (text [B, L, D], video [B, 1 + T N, D], aux)."""
    if self.mode not in MODES:
      raise ValueError(f"cross-modal attention mode={self.mode!r}; expected one of {MODES}.")
    b, l, d = text.shape
    t = self.frames
    n = (video.shape[1] - 1) // t
    if 1 + t * n != video.shape[1]:
      raise ValueError(f"{video.shape[1]} video tokens are not [CLS] + {t} frames x N patches.")
    h, k = self.num_heads, d // self.num_heads
    scale = 1.0 / math.sqrt(k)

    in_proj = {name: attention_lib.EinsumDense(
        "bnd,dhk->bnhk", (d, h, k), ((ax.EMBED, ax.HEADS, ax.KV), (ax.HEADS, ax.KV)), in_axes=(0,),
        out_axes=(1, 2), dtype=self.dtype, name=name)
               for name in ("query", "key", "value", "word_query", "word_key", "word_value")}
    out_layers = {name: attention_lib.EinsumDense(
        "bnhk,hkd->bnd", (h, k, d), ((ax.HEADS, ax.KV, ax.EMBED), (ax.EMBED,)), in_axes=(0, 1), out_axes=(2,),
        dtype=self.dtype, name=name) for name in ("trajectory_out", "out")}

    def proj(name: str, x: jax.Array) -> jax.Array:  # [B, ..., D] -> [B, ..., H, K]; a name may be reused
      return in_proj[name](x.reshape(b, -1, d)).reshape(*x.shape[:-1], h, k)

    def out_proj(name: str, x: jax.Array) -> jax.Array:  # [B, ..., H, K] -> [B, ..., D]
      return out_layers[name](x.reshape(b, -1, h, k)).reshape(*x.shape[:-2], d)

    drop = lambda p: dropout_lib.Dropout(self.dropout_rate)(p, deterministic=not train)
    valid_words = text_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, L]
    cls, patches = video[:, 0], video[:, 1:].reshape(b, t, n, d)
    q_words = proj("query", text)  # [B, L, H, K]
    k_patch, v_patch = proj("key", patches), proj("value", patches)  # [B, T, N, H, K]
    aux: dict[str, jax.Array] = {}

    wq, wk, wv = proj("word_query", text), proj("word_key", text), proj("word_value", text)
    logits_words = jnp.einsum("bihk,bjhk->bhij", wq, wk) * scale  # [B, H, L, L]
    if self.mode == "t2w":
      # W2P: one softmax per (word, frame) over the frame's N patches.
      p1 = _softmax(jnp.einsum("blhk,btnhk->bhtln", q_words, k_patch) * scale, None)  # [B, H, T, L, N]
      aux["word_patch_attention"] = p1
      traj = jnp.einsum("bhtln,btnhk->blthk", drop(p1).astype(self.dtype), v_patch)  # [B, L, T, H, K]
      traj = out_proj("trajectory_out", traj)
      traj = transformer.layer_norm(1e-12, self.dtype, "trajectory_norm")(traj)  # [B, L, T, D]
      # T2W: word i over [the L words; its own T trajectory points].
      tk, tv = proj("word_key", traj), proj("word_value", traj)  # the T2W key / value projections again
      logits_traj = jnp.einsum("bihk,bithk->bhit", wq, tk) * scale  # [B, H, L, T]
      p2 = _softmax(jnp.concatenate([logits_words, logits_traj], -1),
                    jnp.concatenate([jnp.broadcast_to(valid_words, logits_words.shape),
                                     jnp.ones(logits_traj.shape, bool)], -1))
      pw, pt = jnp.split(drop(p2).astype(self.dtype), [l], axis=-1)
      new_text = jnp.einsum("bhij,bjhk->bihk", pw, wv) + jnp.einsum("bhit,bithk->bihk", pt, tv)
      beta = p2[..., l:]
    else:
      # P2W: word i over [the L words; all T N patches], one softmax.
      pk, pv = proj("word_key", patches), proj("word_value", patches)  # [B, T, N, H, K]
      logits_patch = jnp.einsum("bihk,btnhk->bhitn", wq, pk).reshape(b, h, l, t * n) * scale
      p2 = _softmax(jnp.concatenate([logits_words, logits_patch], -1),
                    jnp.concatenate([jnp.broadcast_to(valid_words, logits_words.shape),
                                     jnp.ones(logits_patch.shape, bool)], -1))
      pw, pp = jnp.split(drop(p2).astype(self.dtype), [l], axis=-1)
      new_text = (jnp.einsum("bhij,bjhk->bihk", pw, wv)
                  + jnp.einsum("bhitn,btnhk->bihk", pp.reshape(b, h, l, t, n), pv))
      beta = p2[..., l:].reshape(b, h, l, t, n).sum(-1)
    aux["frame_weights"] = beta / jnp.maximum(beta.sum(-1, keepdims=True), 1e-30)
    new_text = out_proj("out", new_text)

    # Video: per frame, [CLS; frame patches] over [text; frame patches; CLS].
    q_cls, q_patch = proj("query", cls), proj("query", patches)  # [B, H, K], [B, T, N, H, K]
    q_frame = jnp.concatenate([jnp.broadcast_to(q_cls[:, None, None], (b, t, 1, h, k)), q_patch], 2)
    k_text, v_text = proj("key", text), proj("value", text)
    k_cls, v_cls = proj("key", cls), proj("value", cls)
    logits = jnp.concatenate([
        jnp.einsum("btqhk,blhk->bhtql", q_frame, k_text),
        jnp.einsum("btqhk,btnhk->bhtqn", q_frame, k_patch),
        jnp.einsum("btqhk,bhk->bhtq", q_frame, k_cls)[..., None]], -1) * scale  # [B, H, T, 1 + N, L + N + 1]
    valid = jnp.concatenate([jnp.broadcast_to(text_mask.astype(bool)[:, None, None, None, :], (b, 1, 1, 1, l)),
                             jnp.ones((b, 1, 1, 1, n + 1), bool)], -1)
    p3 = drop(_softmax(logits, valid)).astype(self.dtype)
    p_text, p_patch, p_cls = p3[..., :l], p3[..., l:l + n], p3[..., l + n]
    frame_out = (jnp.einsum("bhtql,blhk->btqhk", p_text, v_text)
                 + jnp.einsum("bhtqn,btnhk->btqhk", p_patch, v_patch)
                 + jnp.einsum("bhtq,bhk->btqhk", p_cls, v_cls))  # [B, T, 1 + N, H, K]
    new_video = jnp.concatenate([frame_out[:, :, 0].mean(axis=1, keepdims=True),
                                 frame_out[:, :, 1:].reshape(b, t * n, h, k)], axis=1)
    return new_text, out_proj("out", new_video), aux


class TrajectoryWordBlock(nn.Module):
  """One TW-BERT cross-modal layer (`Stack` block): carry {'x': text [B, L, D], 'video' [B, 1 + T N, D]},
  shared {'text_mask' [B, L]}.

  Attributes:
    num_heads, mlp_dim: attention heads and feed-forward width.
    frames: T.
    mode: 't2w' | 'p2w' (`TrajectoryWordAttention`).
    dropout_rate: residual and MLP dropout (0.1 as released).
    attention_dropout_rate: dropout on the attention probabilities (0.1).
    layer_norm_epsilon: 1e-12 (BERT's, whose layers initialise these).
    dtype: computation dtype.
  """
  num_heads: int
  mlp_dim: int
  frames: int
  mode: str = "t2w"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: transformer.Carry, shared: Mapping[str, Any], layer: int | jax.Array, train: bool
               ) -> tuple[transformer.Carry, dict[str, Any]]:
    del layer
    text, video = carry["x"], carry["video"]
    drop = lambda y: dropout_lib.Dropout(self.dropout_rate)(y, deterministic=not train)
    norm = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "attention_norm")
    new_text, new_video, aux = TrajectoryWordAttention(
        self.num_heads, self.frames, self.mode, self.attention_dropout_rate, self.dtype, name="attention")(
            norm(text), shared["text_mask"], norm(video), train=train)
    text, video = text + drop(new_text), video + drop(new_video)
    mlp = mlp_lib.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, dtype=self.dtype, name="mlp")
    mlp_norm = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "mlp_norm")
    text = text + drop(mlp(mlp_norm(text), deterministic=not train))
    video = video + drop(mlp(mlp_norm(video), deterministic=not train))
    return {**carry, "x": text, "video": video}, aux
