"""Masked language modelling (SViTT supplement equation 15; BERT's 80 / 10 / 10 corruption).

Each maskable token (valid, not a special token) is selected with probability p; a selected token becomes [MASK]
with probability 0.8, a random regular token with 0.1, and stays itself with 0.1. The loss is the cross-entropy
of the original token at the selected positions only (the set J of equation 15), averaged over them.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def mask_tokens(rng: jax.Array, ids: jax.Array, mask: jax.Array, *, mask_id: int, vocab_size: int,
                probability: float = 0.15, special_ids: Sequence[int] = (), first_regular_id: int = 0
                ) -> tuple[jax.Array, jax.Array]:
  """BERT corruption of `ids`.

  Args:
    rng: key.
    ids: [B, L] int token ids.
    mask: [B, L] nonzero for real tokens (padding is never selected).
    mask_id: the [MASK] id.
    vocab_size: ids are drawn for the random 10% from [first_regular_id, vocab_size).
    probability: p, the selection rate (BERT 0.15; the SViTT release 0.5).
    special_ids: ids never selected ([CLS], [SEP], [PAD], ...).
    first_regular_id: lowest id of a regular word (random replacements never draw special tokens below it).

  Returns:
    (corrupted ids [B, L], selected [B, L] bool: the positions the loss is computed on).
  """
  if not 0.0 < probability < 1.0:
    raise ValueError(f"MLM masking probability {probability}; expected a fraction in (0, 1).")
  k_sel, k_kind, k_tok = jax.random.split(rng, 3)
  maskable = mask.astype(bool)
  for s in special_ids:
    maskable &= ids != s
  selected = maskable & jax.random.bernoulli(k_sel, probability, ids.shape)
  u = jax.random.uniform(k_kind, ids.shape)
  random_ids = jax.random.randint(k_tok, ids.shape, first_regular_id, vocab_size, dtype=ids.dtype)
  out = jnp.where(selected & (u < 0.8), jnp.asarray(mask_id, ids.dtype), ids)
  out = jnp.where(selected & (u >= 0.8) & (u < 0.9), random_ids, out)
  return out, selected


def mlm_loss(logits: jax.Array, targets: jax.Array, selected: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of the original tokens at the selected positions.

  Args:
    logits: [B, L, V]; targets: [B, L] original ids; selected: [B, L] bool.

  Returns:
    (mean loss over selected positions (0 when none), {'accuracy', 'num_selected'}).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  w = selected.astype(jnp.float32)
  n = w.sum()
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return (w * nll).sum() / jnp.maximum(n, 1.0), {"accuracy": (w * correct).sum() / jnp.maximum(n, 1.0),
                                                  "num_selected": n}
