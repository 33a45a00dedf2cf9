"""HierVL's losses: clip-level EgoNCE, the summary-level (parent) losses, and the hierarchical MIL-NCE options.

EgoNCE (EgoVLP; HierVL's child loss). With s_ij = <v_i, t_j> / tau on L2-normalised embeddings and P_i the
positives of sample i (always i itself, plus every j that shares at least one noun AND at least one verb with i):

  loss_i = -log( sum_{j in P_i} e^{s_ij} / sum_j e^{s_ij} )      (video i against every text)
         + -log( sum_{j in P_i} e^{s_ji} / sum_j e^{s_ji} )      (text i against every video)

the log of the summed softmax probability of all positives (not a sum of logs over positives), and the two
directions ADDED, not averaged, as in the HierVL release (facebookresearch/HierVL, model/loss.py: `EgoNCE`, and
EgoVLP's `NormSoftmaxLoss`, which it extends, adds them too). The loss is the mean of loss_i over valid samples.
The release builds P from the cosine similarity of multi-hot noun / verb vectors (mask_v * mask_n + I > 0); for
non-negative multi-hot vectors a positive cosine means a shared index, which is what `positive_mask` tests.
Variants (`positives`): 'noun_and_verb' (the default above), 'noun' (mask_n + I), 'verb' (mask_v + I), as the
release's `EgoNCE(noun=..., verb=...)` switches, and 'diagonal' (P_i = {i}: `NormSoftmaxLoss`).

Summary-level loss (HierVL's parent step, trainer/trainer_egoaggregate.py of the release): one summary per
episode, and for E episodes in the batch

  L_parent = EgoNCE(sim(Agg(narrations), summary)) + EgoNCE(sim(Agg(clips), summary))

The release feeds the parent step's EgoNCE the noun / verb vectors of the *summary* rows (`tag_noun` /
`tag_verb` of egosummary_full.csv), so its parent positives are the diagonal plus summaries that share a noun and
a verb; `summary_loss` takes those tags as optional `nouns` / `verbs` and, without them, uses the diagonal only
(one summary per episode). `terms` selects the release's rows: both terms (HierVL), ('video_summary',) (its
`only_video_with_summary_baseline`) and ('text_video',) (its `only_sa_no_summary_baseline`: EgoNCE between the
aggregated narrations and the aggregated clips, no summary).

Hierarchical (parent-child) MIL-NCE (the release's `EgoMILNCE`; its intra-modal and inter-modal calls sit behind
`if False:` in trainer/trainer_egoaggregate.py and never run). E parents p_e (an aggregate or a summary, [E, D])
and N children c_{f,n} per episode ([E, N, D]); s_{e,(f,n)} = <p_e, c_{f,n}> / tau; the positive mask is
block-diagonal, M = kron(I_E, 1_{1 x N}): a parent's positives are the children of its own episode.

  L = -1/E      sum_e     log( sum_n e^{s_{e,(e,n)}} / sum_{f,n} e^{s_{e,(f,n)}} )     (parent vs all children)
      -1/(E N)  sum_{f,n} log( e^{s_{f,(f,n)}}  / sum_e e^{s_{e,(f,n)}} )             (child vs all parents)

each direction averaged over its own rows, the two added (as the release). Intra-modal: (Agg(clips), clips) and
(Agg(narrations), narrations); inter-modal: (Agg(clips), narrations) and (Agg(narrations), clips)
(`hierarchical_loss`). The release first draws `num_positives` random children per episode; pass the children
you want (any N).

Negatives come from the whole batch passed in: under `jit` on global arrays that is the global batch (the release
all-gathers by hand). Embeddings are promoted to float32 (float64 stays float64), as contrastive.py.

Masks: `sample_mask` [B] (0: padding, a clip without text, an episode without summary) removes the sample from the
loss AND from every other sample's negatives and positives (unlike contrastive.py's `sample_mask`, which keeps an
excluded anchor's candidates as negatives), so masked entries get exactly zero gradient; the loss is averaged over
the valid samples (the release has no masks and divides by the full batch); a batch with no valid sample gives 0.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from vlm.losses.contrastive import _MASKED, l2_normalize

POSITIVES = ("noun_and_verb", "noun", "verb", "diagonal")
SUMMARY_TERMS = ("text_summary", "video_summary", "text_video")


def _dtype(*xs: jax.Array):
  return jnp.promote_types(jnp.result_type(*xs), jnp.float32)  # bf16 -> f32; f64 stays f64


def _labels(x: jax.Array | None, b: int, name: str) -> jax.Array | None:
  if x is None:
    return None
  if x.ndim != 2 or x.shape[0] != b:
    raise ValueError(f"{name} must be a multi-hot [B, N] array with B = {b}, got shape {x.shape}.")
  return (x != 0).astype(jnp.float32)


def positive_mask(nouns: jax.Array | None, verbs: jax.Array | None, *, positives: str = "noun_and_verb"
                  ) -> tuple[jax.Array, jax.Array]:
  """EgoNCE's positive mask and which samples have the labels it needs.

  Args:
    nouns: [B, Nn] multi-hot (nonzero = the narration has that noun), or None (only for 'verb' / 'diagonal').
    verbs: [B, Nv] multi-hot, or None (only for 'noun' / 'diagonal').
    positives: 'noun_and_verb' (j shares >= 1 noun and >= 1 verb with i), 'noun', 'verb' or 'diagonal'.

  Returns:
    (mask [B, B] bool, always true on the diagonal and symmetric; labelled [B] bool: the sample has the labels
    `positives` needs; an unlabelled sample's only positive is itself).
  """
  if positives not in POSITIVES:
    raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}.")
  need_n = positives in ("noun_and_verb", "noun")
  need_v = positives in ("noun_and_verb", "verb")
  if nouns is None and verbs is None:
    raise ValueError(f"positive_mask(positives={positives!r}) needs noun and/or verb labels.")
  b = (nouns if nouns is not None else verbs).shape[0]
  if need_n and nouns is None:
    raise ValueError(f"positives={positives!r} needs `nouns`.")
  if need_v and verbs is None:
    raise ValueError(f"positives={positives!r} needs `verbs`.")
  n, v = _labels(nouns, b, "nouns"), _labels(verbs, b, "verbs")
  mask = jnp.eye(b, dtype=bool)
  labelled = jnp.ones((b,), bool)
  shared = jnp.ones((b, b), bool)
  hi = jax.lax.Precision.HIGHEST
  if need_n:
    shared = shared & (jnp.matmul(n, n.T, precision=hi) > 0)
    labelled = labelled & jnp.any(n > 0, axis=1)
  if need_v:
    shared = shared & (jnp.matmul(v, v.T, precision=hi) > 0)
    labelled = labelled & jnp.any(v > 0, axis=1)
  if positives != "diagonal":
    mask = mask | shared
  return mask, labelled


def _two_way(logits: jax.Array, pos: jax.Array, row_valid: jax.Array, col_valid: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
  """Per-row and per-column -log(sum of softmax over positives) of a [R, C] logit matrix.

  Invalid rows / columns are removed from every softmax; the per-row (per-column) loss is 0 where the row
  (column) is invalid or has no valid positive.
  """
  both = row_valid[:, None] & col_valid[None, :]
  lg = jnp.where(both, logits, _MASKED)
  pos = pos & both
  pos_lg = jnp.where(pos, lg, _MASKED)
  row = jax.nn.logsumexp(lg, axis=1) - jax.nn.logsumexp(pos_lg, axis=1)
  col = jax.nn.logsumexp(lg, axis=0) - jax.nn.logsumexp(pos_lg, axis=0)
  row_ok = row_valid & jnp.any(pos, axis=1)
  col_ok = col_valid & jnp.any(pos, axis=0)
  return jnp.where(row_ok, row, 0.0), jnp.where(col_ok, col, 0.0)


def _mean(x: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  n = valid.astype(x.dtype).sum()
  return jnp.where(n > 0, jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(n, 1.0), 0.0), n


def egonce_loss(video: jax.Array, text: jax.Array, *, nouns: jax.Array | None, verbs: jax.Array | None,
                temperature: float = 0.05, sample_mask: jax.Array | None = None, normalize: bool = True,
                positives: str = "noun_and_verb") -> tuple[jax.Array, dict[str, jax.Array]]:
  """EgoNCE between B videos and their B texts (module docstring), negatives over the whole batch.

  Args:
    video: [B, D] embeddings (rows of the similarity matrix; any [B, D] pair works, e.g. Agg(clips), summary).
    text: [B, D] embeddings; (video[i], text[i]) is a matched pair.
    nouns: [B, Nn] multi-hot noun labels of the pairs (None allowed for positives='verb' / 'diagonal').
    verbs: [B, Nv] multi-hot verb labels (None allowed for positives='noun' / 'diagonal').
    temperature: tau (EgoVLP / HierVL: 0.05).
    sample_mask: optional [B], nonzero for pairs that take part (module docstring, "Masks").
    normalize: L2-normalise the embeddings first (the release's cosine `sim_matrix`: yes).
    positives: 'noun_and_verb' (EgoNCE), 'noun', 'verb' (the release's noun-only / verb-only switches) or
      'diagonal' (InfoNCE with the two directions added: EgoVLP's `NormSoftmaxLoss`).

  Returns:
    (loss, extras): scalar mean over valid pairs of (video->text + text->video); extras: 'per_sample' [B] (0 where
    invalid), 'per_sample_v2t' [B], 'per_sample_t2v' [B], 'num_positives' [B] (valid positives of each valid
    sample, itself included; 0 where invalid), 'valid' [B] float, 'num_valid', 'num_diagonal_only' (valid samples
    without the labels `positives` needs, which fall back to the diagonal), 'top1' (valid videos whose best text
    is their own) and 'top1_positive' (... is one of their positives).
  """
  if video.ndim != 2 or text.shape != video.shape:
    raise ValueError(f"Expected video and text of one shape [B, D], got {video.shape} and {text.shape}.")
  b = video.shape[0]
  dtype = _dtype(video, text)
  v, t = video.astype(dtype), text.astype(dtype)
  if normalize:
    v, t = l2_normalize(v), l2_normalize(t)
  _labels(nouns, b, "nouns"), _labels(verbs, b, "verbs")  # shape checks against the embeddings' batch
  if positives == "diagonal" and nouns is None and verbs is None:
    pos, labelled = jnp.eye(b, dtype=bool), jnp.ones((b,), bool)
  else:
    pos, labelled = positive_mask(nouns, verbs, positives=positives)
  valid = jnp.ones((b,), bool) if sample_mask is None else sample_mask.astype(bool)
  if valid.shape != (b,):
    raise ValueError(f"sample_mask must have shape ({b},), got {valid.shape}.")

  sim = jnp.einsum("id,jd->ij", v, t, precision=jax.lax.Precision.HIGHEST) / temperature
  v2t, t2v = _two_way(sim, pos, valid, valid)
  per_sample = v2t + t2v
  validf = valid.astype(dtype)
  loss, num_valid = _mean(per_sample, valid)
  both = valid[:, None] & valid[None, :]
  best = jnp.argmax(jnp.where(both, sim, _MASKED), axis=1)
  denom = jnp.maximum(num_valid, 1.0)
  top1 = jnp.sum(validf * (best == jnp.arange(b))) / denom
  top1_pos = jnp.sum(validf * jnp.take_along_axis(pos, best[:, None], axis=1)[:, 0]) / denom
  return loss, {
      "per_sample": per_sample, "per_sample_v2t": v2t, "per_sample_t2v": t2v,
      "num_positives": jnp.sum(pos & both, axis=1).astype(dtype), "valid": validf, "num_valid": num_valid,
      "num_diagonal_only": jnp.sum(validf * (~labelled)), "top1": top1, "top1_positive": top1_pos}


def summary_loss(agg_video: jax.Array | None, agg_text: jax.Array | None, summary: jax.Array | None, *,
                 temperature: float = 0.05, terms: Sequence[str] = ("text_summary", "video_summary"),
                 nouns: jax.Array | None = None, verbs: jax.Array | None = None,
                 positives: str = "noun_and_verb", sample_mask: jax.Array | None = None,
                 summary_mask: jax.Array | None = None, normalize: bool = True
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """HierVL's parent-step loss over E episodes: the sum of EgoNCE over the selected `terms`.

  Args:
    agg_video: [E, D] Agg(f_v(clips)) of each episode (None if no selected term uses it).
    agg_text: [E, D] Agg(f_n(narrations)) of each episode (None if no selected term uses it).
    summary: [E, D] f_n(summary) of each episode (None if no selected term uses it).
    temperature: tau (0.05).
    terms: any of 'text_summary' (EgoNCE(sim(Agg(narrations), summary))), 'video_summary'
      (EgoNCE(sim(Agg(clips), summary))) and 'text_video' (EgoNCE(sim(Agg(narrations), Agg(clips)))).
      HierVL: ('text_summary', 'video_summary'); only-video-with-summary: ('video_summary',); the no-summary
      SA baseline: ('text_video',).
    nouns, verbs: optional [E, Nn] / [E, Nv] multi-hot tags of the summaries (the release's parent positives:
      the diagonal plus summaries sharing a noun and a verb); both None: the diagonal only.
    positives: EgoNCE's positive rule when tags are given (see `egonce_loss`).
    sample_mask: optional [E], nonzero for episodes that take part (e.g. not padding).
    summary_mask: optional [E], nonzero for episodes that have a summary; applies to the summary terms only.
    normalize: L2-normalise first.

  Returns:
    (loss, extras): scalar sum over terms of each term's mean over its valid episodes; extras: '<term>_loss',
    '<term>_top1', '<term>_num_valid' for each term, 'per_sample' [E] (sum over terms), 'num_diagonal_only'
    (summed over terms).
  """
  terms = tuple(terms)
  if not terms or any(tm not in SUMMARY_TERMS for tm in terms) or len(set(terms)) != len(terms):
    raise ValueError(f"terms must be distinct names from {SUMMARY_TERMS}, got {terms!r}.")
  pairs = {"text_summary": (agg_text, summary, "agg_text", "summary"),
           "video_summary": (agg_video, summary, "agg_video", "summary"),
           "text_video": (agg_text, agg_video, "agg_text", "agg_video")}
  if nouns is None and verbs is None:
    positives = "diagonal"
  total = 0.0
  extras: dict[str, jax.Array] = {}
  per_sample = None
  num_diag = None
  for term in terms:
    rows, cols, rname, cname = pairs[term]
    for x, name in ((rows, rname), (cols, cname)):
      if x is None:
        raise ValueError(f"Summary term {term!r} needs `{name}`, got None.")
    mask = sample_mask
    if summary_mask is not None and "summary" in term:
      mask = summary_mask if mask is None else (mask.astype(bool) & summary_mask.astype(bool))
    loss, ex = egonce_loss(rows, cols, nouns=nouns, verbs=verbs, temperature=temperature, sample_mask=mask,
                           normalize=normalize, positives=positives)
    total = total + loss
    extras[f"{term}_loss"] = loss
    extras[f"{term}_top1"] = ex["top1"]
    extras[f"{term}_num_valid"] = ex["num_valid"]
    per_sample = ex["per_sample"] if per_sample is None else per_sample + ex["per_sample"]
    num_diag = ex["num_diagonal_only"] if num_diag is None else num_diag + ex["num_diagonal_only"]
  extras["per_sample"] = per_sample
  extras["num_diagonal_only"] = num_diag
  return total, extras


def hierarchical_milnce_loss(parents: jax.Array, children: jax.Array, *, temperature: float = 0.05,
                             child_mask: jax.Array | None = None, parent_mask: jax.Array | None = None,
                             normalize: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The release's EgoMILNCE: parents against all children with the block-diagonal positive mask.

  Args:
    parents: [E, D] one embedding per episode (e.g. Agg(clips), Agg(narrations) or the summary).
    children: [E, N, D] N child embeddings per episode (clips or narrations); children[e] are parents[e]'s
      positives, every other child in the batch a negative.
    temperature: tau (0.05).
    child_mask: optional [E, N], nonzero for real children (an episode shorter than N is padded).
    parent_mask: optional [E], nonzero for episodes that take part; a masked episode's children are removed too.
    normalize: L2-normalise first (the release's cosine `sim_matrix`).

  Returns:
    (loss, extras): scalar (mean over valid parents of the parent->children term) + (mean over valid children of
    the child->parents term), the module docstring's L; extras: 'per_parent' [E], 'per_child' [E, N] (0 where
    invalid), 'num_valid_parents', 'num_valid_children', 'top1' (valid parents whose best child is their own),
    'top1_child' (valid children whose best parent is their own).
  """
  if parents.ndim != 2 or children.ndim != 3 or children.shape[0] != parents.shape[0] or (
      children.shape[2] != parents.shape[1]):
    raise ValueError(f"Expected parents [E, D] and children [E, N, D], got {parents.shape} and {children.shape}.")
  e, n, d = children.shape
  dtype = _dtype(parents, children)
  p, c = parents.astype(dtype), children.astype(dtype)
  if normalize:
    p, c = l2_normalize(p), l2_normalize(c)
  pvalid = jnp.ones((e,), bool) if parent_mask is None else parent_mask.astype(bool)
  cvalid = jnp.ones((e, n), bool) if child_mask is None else child_mask.astype(bool)
  cvalid = cvalid & pvalid[:, None]
  pvalid = pvalid & jnp.any(cvalid, axis=1)  # a parent needs at least one child to have a positive
  c = c.reshape(e * n, d)
  cvalid = cvalid.reshape(e * n)
  # Block-diagonal mask kron(I_E, 1_{1 x N}): column f*N + k belongs to episode f.
  block = jnp.arange(e)[:, None] == (jnp.arange(e * n) // n)[None, :]
  sim = jnp.einsum("ed,kd->ek", p, c, precision=jax.lax.Precision.HIGHEST) / temperature
  per_parent, per_child = _two_way(sim, block, pvalid, cvalid)
  loss_p, num_p = _mean(per_parent, pvalid)
  loss_c, num_c = _mean(per_child, cvalid)
  both = pvalid[:, None] & cvalid[None, :]
  lg = jnp.where(both, sim, _MASKED)
  best_child_ep = jnp.argmax(lg, axis=1) // n
  best_parent = jnp.argmax(lg, axis=0)
  top1 = jnp.sum(pvalid * (best_child_ep == jnp.arange(e))) / jnp.maximum(num_p, 1.0)
  top1_child = jnp.sum(cvalid * (best_parent == jnp.arange(e * n) // n)) / jnp.maximum(num_c, 1.0)
  return loss_p + loss_c, {
      "per_parent": per_parent, "per_child": per_child.reshape(e, n), "num_valid_parents": num_p,
      "num_valid_children": num_c, "top1": top1, "top1_child": top1_child}


def hierarchical_loss(agg_video: jax.Array, agg_text: jax.Array, clip_video: jax.Array, clip_text: jax.Array, *,
                      intra: bool = True, inter: bool = True, temperature: float = 0.05,
                      child_mask: jax.Array | None = None, parent_mask: jax.Array | None = None,
                      normalize: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The intra- and inter-modal hierarchical losses (the release's disabled EgoMILNCE calls), summed.

  Args:
    agg_video: [E, D] Agg(f_v(clips)).
    agg_text: [E, D] Agg(f_n(narrations)).
    clip_video: [E, N, D] f_v of each episode's clips.
    clip_text: [E, N, D] f_n of each episode's narrations (child i of clip_video and clip_text share child_mask).
    intra: add EgoMILNCE(agg_video, clip_video) + EgoMILNCE(agg_text, clip_text).
    inter: add EgoMILNCE(agg_video, clip_text) + EgoMILNCE(agg_text, clip_video) (the release computes the last
      one on the transposed matrix sim(clips, Agg(narrations)); with both directions added it is the same loss).
    temperature, child_mask, parent_mask, normalize: as `hierarchical_milnce_loss`.

  Returns:
    (loss, extras): scalar sum of the selected terms; extras '<term>_loss' and '<term>_top1' for the terms
    'intra_video', 'intra_text', 'inter_video', 'inter_text'.
  """
  if not (intra or inter):
    raise ValueError("hierarchical_loss needs intra and/or inter.")
  terms = []
  if intra:
    terms += [("intra_video", agg_video, clip_video), ("intra_text", agg_text, clip_text)]
  if inter:
    terms += [("inter_video", agg_video, clip_text), ("inter_text", agg_text, clip_video)]
  total = 0.0
  extras: dict[str, jax.Array] = {}
  for name, parents, children in terms:
    loss, ex = hierarchical_milnce_loss(parents, children, temperature=temperature, child_mask=child_mask,
                                        parent_mask=parent_mask, normalize=normalize)
    total = total + loss
    extras[f"{name}_loss"] = loss
    extras[f"{name}_top1"] = ex["top1"]
  return total, extras
