"""Contrastive losses: NCE and MIL-NCE over the global batch (VATT section 3.2, appendix B.3; MMV; MIL-NCE).

Both are one function, `mil_nce_loss`: each anchor i (a video) has K candidates (K = 1 for NCE with audio; K
captions for MIL-NCE with text). With s(x, y) = <x, y> / tau on L2-normalised embeddings:

  'joint' (as released, `vatt/utils/train/objectives.py:AsymmetricNCE`, the MMV form):
     loss_i = -log( sum_k e^{s(a_i, c_ik)} / ( sum_{j,k} e^{s(a_i, c_jk)} + sum_{j,k} e^{s(a_j, c_ik)} ) )
     one softmax whose denominator holds both directions (anchor i vs every candidate, and clip i's
     candidates vs every anchor); the positives appear in both halves, as in the release.
  'separate': the sum of the two one-directional terms, each with its own denominator.
  'average': half of 'separate', the mean of the two terms (ALBEF / Singularity / SViTT as released:
     `loss_ita = (loss_i2t + loss_t2i) / 2` in JerryYLi/svitt models/model_retrieval_base.py).

Negatives come from the whole batch passed in: under `jit` on global arrays that is the global batch, so no
explicit all-gather is needed (the release gathers across replicas by hand).

Masks: `candidate_mask` [B, K] removes invalid candidates (e.g. empty captions) from positives and negatives;
a sample with no valid candidate, or with `sample_mask` 0 (e.g. a clip without audio or text), is excluded
from the loss and the loss is averaged over the valid samples only (the release's mask-and-rescale); a batch
with no valid sample gives 0. Masked entries get exactly zero gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Logit given to masked entries (as the release's LARGE_NUM; finite so no NaN or inf reaches the gradients).
_MASKED = -1e9


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) along `axis`."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps * eps))


def mil_nce_loss(*, anchors: jax.Array, candidates: jax.Array, candidate_mask: jax.Array | None = None,
                 sample_mask: jax.Array | None = None, temperature: float = 0.07, directions: str = "joint",
                 normalize: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MIL-NCE between anchors and their K candidates, negatives from the whole batch.

  Args:
    anchors: [B, D] embeddings (e.g. video in S_vat).
    candidates: [B, K, D] embeddings (e.g. K captions of each clip).
    candidate_mask: optional [B, K], nonzero for valid candidates.
    sample_mask: optional [B], nonzero for samples that take part (e.g. clips that have text).
    temperature: tau (VATT: 0.07).
    directions: 'joint' (VATT as released), 'separate' or 'average' (see module docstring).
    normalize: L2-normalise the embeddings first (VATT: yes).

  Returns:
    (loss, extras): scalar mean loss over valid samples; extras['per_sample'] [B] losses (0 where invalid),
    extras['valid'] [B] float, extras['num_valid'] scalar, extras['top1'] scalar: fraction of valid anchors
    whose best-scoring valid candidate belongs to their own clip.
  """
  if candidates.ndim != 3 or anchors.ndim != 2 or candidates.shape[0] != anchors.shape[0]:
    raise ValueError(f"Expected anchors [B, D] and candidates [B, K, D], got {anchors.shape} and "
                     f"{candidates.shape}.")
  if directions not in ("joint", "separate", "average"):
    raise ValueError(f"directions must be 'joint', 'separate' or 'average', got {directions!r}.")
  b, k = candidates.shape[:2]
  dtype = jnp.promote_types(anchors.dtype, jnp.float32)  # bf16 -> f32; f64 stays f64
  a = anchors.astype(dtype)
  c = candidates.astype(dtype)
  if normalize:
    a, c = l2_normalize(a), l2_normalize(c)
  cmask = jnp.ones((b, k), bool) if candidate_mask is None else candidate_mask.astype(bool)
  valid = jnp.any(cmask, axis=1)
  if sample_mask is not None:
    valid = valid & sample_mask.astype(bool)

  # sim[i, j, k] = s(anchor i, candidate k of clip j); invalid candidates masked wherever they appear.
  sim = jnp.einsum("id,jkd->ijk", a, c, precision=jax.lax.Precision.HIGHEST) / temperature
  sim = jnp.where(cmask[None], sim, _MASKED)
  pos = jnp.diagonal(sim, axis1=0, axis2=1).T  # [B, K]: sim[i, i, :]
  lse_pos = jax.nn.logsumexp(pos, axis=1)
  anchor_to_all = sim.reshape(b, b * k)  # anchor i vs every candidate
  cand_to_all = jnp.transpose(sim, (1, 0, 2)).reshape(b, b * k)  # clip i's candidates vs every anchor
  if directions == "joint":
    per_sample = jax.nn.logsumexp(jnp.concatenate([anchor_to_all, cand_to_all], axis=1), axis=1) - lse_pos
  else:
    per_sample = (jax.nn.logsumexp(anchor_to_all, axis=1) - lse_pos) + (
        jax.nn.logsumexp(cand_to_all, axis=1) - lse_pos)
    if directions == "average":
      per_sample = per_sample / 2

  validf = valid.astype(dtype)
  per_sample = jnp.where(valid, per_sample, 0.0)
  num_valid = validf.sum()
  loss = jnp.where(num_valid > 0, per_sample.sum() / jnp.maximum(num_valid, 1.0), 0.0)
  best_clip = jnp.argmax(jnp.max(sim, axis=2), axis=1)
  top1 = jnp.sum(validf * (best_clip == jnp.arange(b))) / jnp.maximum(num_valid, 1.0)
  return loss, {"per_sample": per_sample, "valid": validf, "num_valid": num_valid, "top1": top1}


def nce_loss(*, anchors: jax.Array, positives: jax.Array, mask: jax.Array | None = None,
             temperature: float = 0.07, directions: str = "joint", normalize: bool = True
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NCE with one positive per anchor (VATT video-audio in S_va): `mil_nce_loss` with K = 1.

  Args:
    anchors: [B, D] (e.g. video in S_va).
    positives: [B, D] (e.g. audio in S_va).
    mask: optional [B], nonzero for pairs that take part (clips with audio); invalid positives are also
      removed from the negatives.
    temperature, directions, normalize: as `mil_nce_loss`.

  Returns:
    (loss, extras) as `mil_nce_loss`.
  """
  return mil_nce_loss(anchors=anchors, candidates=positives[:, None],
                      candidate_mask=None if mask is None else mask[:, None], temperature=temperature,
                      directions=directions, normalize=normalize)


def weighted_total(losses: dict[str, jax.Array], weights: dict[str, float]) -> jax.Array:
  """sum_l w_l * loss_l / sum_l w_l over the losses with w_l > 0 (VATT's combination, lambda = 1)."""
  used = [name for name, w in weights.items() if w > 0]
  if not used:
    raise ValueError(f"At least one loss weight must be positive, got {weights}.")
  return sum(weights[n] * losses[n] for n in used) / sum(weights[n] for n in used)


def distilled_nce_loss(logits: jax.Array, teacher_logits: jax.Array, *, valid: jax.Array | None = None,
                       alpha: float = 0.4) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One direction of ALBEF's momentum-distilled contrastive loss (Li et al. 2021, equation 3; TW-BERT's VTC).

  Row i's positive is column i (the batch's own pair; the columns after the batch are a queue of earlier
  momentum features). The target mixes the one-hot positive with the momentum model's distribution:
    q_i = alpha softmax(teacher_logits_i) + (1 - alpha) onehot(i);   loss = mean_i -sum_j q_ij log softmax(logits_i)_j

  Args:
    logits: [B, M] similarities / temperature of the online features to the B + Q candidates (M >= B).
    teacher_logits: [B, M] the same from the momentum features (no gradient flows into it).
    valid: optional [M] bool; False columns (queue slots not yet filled) take no part.
    alpha: distillation weight (ALBEF / TW-BERT: 0.4; 0 is plain InfoNCE with the queue as extra negatives).

  Returns:
    (loss, {'top1': fraction of rows whose best column is their own}).
  """
  b, m = logits.shape
  if m < b:
    raise ValueError(f"{m} candidate columns for {b} rows: the batch's own pairs come first.")
  logits = logits.astype(jnp.float32)
  teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  if valid is not None:
    keep = valid.astype(bool)[None, :]
    logits = jnp.where(keep, logits, -jnp.inf)
    teacher = jnp.where(keep, teacher, -jnp.inf)
  onehot = jax.nn.one_hot(jnp.arange(b), m, dtype=jnp.float32)
  targets = alpha * jax.nn.softmax(teacher, axis=-1) + (1.0 - alpha) * onehot
  log_p = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.sum(jnp.where(targets > 0, targets * log_p, 0.0), axis=-1).mean()
  top1 = (jnp.argmax(logits, axis=-1) == jnp.arange(b)).astype(jnp.float32).mean()
  return loss, {"top1": top1}
