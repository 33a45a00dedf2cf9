"""Token pruning by [CLS] attention (SViTT node sparsity, supplement equations 1-2 and table A1).

After selected layers a sequence of `num_global` global tokens plus N local tokens keeps its globals and the
k = ceil(q N) local tokens that the first global token ([CLS], or the text [CLS] in cross-attention) attends to
most, averaged over heads. The kept tokens are re-sorted into their original order, and their original indices
are carried along so that position biases stay right after pruning (as the release's `token_idx`).

Everything has static shapes: k depends only on N and q, both known at trace time.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def keep_count(num_tokens: int, keep_rate: float) -> int:
  """k = ceil(q N), q in (0, 1]."""
  if not 0.0 < keep_rate <= 1.0:
    raise ValueError(f"token keep rate {keep_rate}; expected a fraction in (0, 1].")
  return max(1, math.ceil(keep_rate * num_tokens - 1e-9))


def cls_attention(query: jax.Array, key: jax.Array, *, mask: jax.Array | None = None,
                  bias: jax.Array | None = None, num_global: int = 1) -> jax.Array:
  """[CLS]'s attention over the local keys, averaged over heads: [B, N_local].

  Args:
    query: [B, T, H, K] (only query 0, the [CLS], is used).
    key: [B, S, H, K]; the first `num_global` keys are global and are not scored.
    mask: optional [B, S] valid keys.
    bias: optional logit bias broadcastable to [B, H, T, S] (its row 0 is used).
  """
  logits = jnp.einsum("bhd,bshd->bhs", query[:, 0], key, preferred_element_type=jnp.float32)
  logits = logits * query.shape[-1] ** -0.5
  if bias is not None:
    logits = logits + jnp.broadcast_to(bias, bias.shape[:2] + (bias.shape[2], key.shape[1]))[:, :, 0]
  if mask is not None:
    logits = jnp.where(mask[:, None, :].astype(bool), logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1).mean(axis=1)[:, num_global:]


def prune(tokens: jax.Array, scores: jax.Array, keep_rate: float, *, positions: jax.Array | None = None,
          mask: jax.Array | None = None, num_global: int = 1) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Keeps the globals and the top ceil(q N) local tokens by score, in their original order.

  Args:
    tokens: [B, G + N, D].
    scores: [B, N] importance of each local token (e.g. `cls_attention`).
    keep_rate: q in (0, 1].
    positions: [B, N] original indices of the local tokens (default arange(N)); carried to the kept ones.
    mask: optional [B, G + N] validity; padded local tokens are never kept before valid ones.

  Returns:
    (tokens [B, G + k, D], positions [B, k], mask [B, G + k] or None).
  """
  b, total, _ = tokens.shape
  n = total - num_global
  if scores.shape != (b, n):
    raise ValueError(f"scores shape {scores.shape}; expected {(b, n)} (one per local token).")
  k = keep_count(n, keep_rate)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(n), (b, n))
  scores = scores.astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask[:, num_global:].astype(bool), scores, -jnp.inf)
  _, idx = jax.lax.top_k(scores, k)
  idx = jnp.sort(idx, axis=-1)  # original order
  kept = jnp.take_along_axis(tokens[:, num_global:], idx[..., None], axis=1)
  out = jnp.concatenate([tokens[:, :num_global], kept], axis=1)
  new_mask = None
  if mask is not None:
    new_mask = jnp.concatenate([mask[:, :num_global], jnp.take_along_axis(mask[:, num_global:], idx, axis=1)],
                               axis=1)
  return out, jnp.take_along_axis(positions, idx, axis=1), new_mask
