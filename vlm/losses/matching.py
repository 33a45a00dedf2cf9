"""Video-text matching (VTM, SViTT supplement equation 14) with in-batch hard negatives (ALBEF / Singularity).

VTM is a binary classifier on the multimodal encoder's [CLS]: each of the B matched pairs is a positive, and
each text and each video also meets one negative partner i' != i from the batch. Equation 14 draws i' at random;
the release (`itm_hard_neg: True`) draws it with probability softmax(similarity) over the other items, so the
negatives are the pairs VTC finds hardest to tell apart. Both are here (`hard`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_negatives(rng: jax.Array, sim: jax.Array, *, hard: bool = True,
                     valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One negative partner per text and per video, never the item's own pair.

  Args:
    rng: key.
    sim: [B, B] text-to-video similarity (row: text i, column: video j; the diagonal is matched). Only its
      ordering matters; no gradient flows through the draw.
    hard: sample proportional to softmax(sim) over the non-matching items (as released); False: uniform (eq. 14).
    valid: optional [B] bool; invalid items are never drawn as negatives (a batch must hold two valid items).

  Returns:
    (video_for_text [B], text_for_video [B]) int32 indices into the batch.
  """
  b = sim.shape[0]
  if b < 2:
    raise ValueError("VTM negatives need a batch of at least 2 pairs.")
  logits = jax.lax.stop_gradient(sim.astype(jnp.float32)) if hard else jnp.zeros((b, b), jnp.float32)
  banned = jnp.eye(b, dtype=bool)
  if valid is not None:
    banned = banned | ~valid.astype(bool)[None, :]
  t2v = jnp.where(banned, -jnp.inf, logits)
  v2t = jnp.where(banned, -jnp.inf, logits.T)
  k1, k2 = jax.random.split(rng)
  return (jax.random.categorical(k1, t2v, axis=-1).astype(jnp.int32),
          jax.random.categorical(k2, v2t, axis=-1).astype(jnp.int32))


def vtm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy of equation 14 written as 2-way softmax cross-entropy (the release's head).

  Args:
    logits: [N, 2] (not matched, matched) logits.
    labels: [N] 1 for matched pairs, 0 for negatives.
    weights: optional [N] per-pair weights (0 drops a pair).

  Returns:
    (mean loss over weighted pairs, {'accuracy': ..., 'matched_prob': mean p(matched) of the positives}).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  labels = labels.astype(jnp.int32)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  w = jnp.ones_like(nll) if weights is None else weights.astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  pos = w * (labels == 1)
  return (w * nll).sum() / denom, {
      "accuracy": (w * correct).sum() / denom,
      "matched_prob": (pos * jnp.exp(logp[:, 1])).sum() / jnp.maximum(pos.sum(), 1.0)}
