"""NCE / MIL-NCE against an independent numpy reference, masks, and gradient checks."""
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.losses import contrastive


def _logsumexp(v):
  v = np.asarray(v, np.float64)
  return v.max() + np.log(np.exp(v - v.max()).sum())


def reference_mil_nce(anchors, candidates, cand_mask, sample_mask, tau, directions):
  """Loop-by-loop MMV / VATT MIL-NCE, written from the formula (module docstring of contrastive.py)."""
  a = anchors / np.linalg.norm(anchors, axis=-1, keepdims=True)
  c = candidates / np.linalg.norm(candidates, axis=-1, keepdims=True)
  b, k = cand_mask.shape
  losses = []
  for i in range(b):
    if not sample_mask[i] or not cand_mask[i].any():
      continue
    pos = [a[i] @ c[i, m] / tau for m in range(k) if cand_mask[i, m]]
    anchor_vs_all = [a[i] @ c[j, m] / tau for j in range(b) for m in range(k) if cand_mask[j, m]]
    cands_vs_all = [a[j] @ c[i, m] / tau for j in range(b) for m in range(k) if cand_mask[i, m]]
    if directions == "joint":
      losses.append(_logsumexp(anchor_vs_all + cands_vs_all) - _logsumexp(pos))
    else:
      two = _logsumexp(anchor_vs_all) - _logsumexp(pos) + _logsumexp(cands_vs_all) - _logsumexp(pos)
      losses.append(two / 2 if directions == "average" else two)
  return float(np.mean(losses)) if losses else 0.0


def _batch(b=5, k=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  anchors = rng.normal(size=(b, d))
  cands = rng.normal(size=(b, k, d))
  cand_mask = np.ones((b, k), bool)
  if k > 1:
    cand_mask[1, -1] = False  # an empty caption
  cand_mask[3] = False  # a clip without text (AudioSet)
  sample_mask = np.ones(b, bool)
  sample_mask[4] = False  # excluded by the sample mask
  return anchors, cands, cand_mask, sample_mask


@pytest.mark.parametrize("directions", ["joint", "separate", "average"])
def test_mil_nce_matches_numpy_reference(directions):
  anchors, cands, cmask, smask = _batch()
  fn = jax.jit(lambda a, c: contrastive.mil_nce_loss(anchors=a, candidates=c, candidate_mask=cmask,
                                                     sample_mask=smask, temperature=0.07,
                                                     directions=directions))
  loss, extras = fn(jnp.asarray(anchors, jnp.float32), jnp.asarray(cands, jnp.float32))
  want = reference_mil_nce(anchors, cands, cmask, smask, 0.07, directions)
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  np.testing.assert_array_equal(extras["valid"], [1, 1, 1, 0, 0])
  assert extras["num_valid"] == 3
  assert extras["per_sample"][3] == 0 and extras["per_sample"][4] == 0


def test_nce_is_mil_nce_with_one_candidate_and_masks_audio():
  anchors, cands, _, _ = _batch(k=1)
  audio_mask = np.array([1, 0, 1, 1, 1], np.float32)
  loss, extras = jax.jit(lambda a, p, m: contrastive.nce_loss(anchors=a, positives=p, mask=m))(
      jnp.asarray(anchors, jnp.float32), jnp.asarray(cands[:, 0], jnp.float32), jnp.asarray(audio_mask))
  want = reference_mil_nce(anchors, cands, audio_mask[:, None] > 0, np.ones(5, bool), 0.07, "joint")
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  assert extras["num_valid"] == 4


def test_perfect_alignment_gives_top1_and_no_valid_sample_gives_zero():
  x = jnp.asarray(np.eye(4, 6), jnp.float32)
  run = jax.jit(lambda x, m: (contrastive.nce_loss(anchors=x, positives=x, temperature=0.01),
                              contrastive.nce_loss(anchors=x, positives=x, mask=m)))
  (loss, extras), (masked_loss, masked_extras) = run(x, jnp.zeros(4))
  # log 2: the positive appears in both halves of the released denominator.
  assert extras["top1"] == 1.0 and loss == pytest.approx(np.log(2.0), abs=1e-4)
  assert masked_loss == 0.0 and masked_extras["num_valid"] == 0


@pytest.mark.parametrize("directions", ["joint", "separate"])
def test_gradients_match_finite_differences(directions):
  anchors, cands, cmask, smask = _batch(b=5, k=2, d=4, seed=1)
  cmask[2] = False
  with jax.enable_x64(True):
    f = lambda a, c: contrastive.mil_nce_loss(anchors=a, candidates=c, candidate_mask=cmask, sample_mask=smask,
                                              temperature=0.5, directions=directions)[0]
    jtu.check_grads(jax.jit(f), (jnp.asarray(anchors), jnp.asarray(cands)), order=1, modes=["rev"], eps=1e-5)


def test_masked_entries_get_zero_gradient():
  anchors, cands, cmask, smask = _batch()
  grad_c = jax.jit(jax.grad(lambda c: contrastive.mil_nce_loss(
      anchors=jnp.asarray(anchors, jnp.float32), candidates=c, candidate_mask=cmask, sample_mask=smask)[0]))(
          jnp.asarray(cands, jnp.float32))
  grad_c = np.asarray(grad_c)
  assert np.all(np.isfinite(grad_c))
  assert np.all(grad_c[1, -1] == 0) and np.all(grad_c[3] == 0)  # invalid candidates
  assert np.any(grad_c[4] != 0)  # excluded anchor's captions still serve as negatives for the others
  assert np.any(grad_c[0] != 0)


def test_weighted_total():
  losses = {"va_nce": jnp.float32(2.0), "vt_milnce": jnp.float32(4.0)}
  assert contrastive.weighted_total(losses, {"va_nce": 1.0, "vt_milnce": 1.0}) == 3.0
  assert contrastive.weighted_total(losses, {"va_nce": 0.0, "vt_milnce": 2.0}) == 4.0
  with pytest.raises(ValueError):
    contrastive.weighted_total(losses, {"va_nce": 0.0, "vt_milnce": 0.0})
  with pytest.raises(ValueError, match="directions"):
    contrastive.mil_nce_loss(anchors=jnp.ones((2, 3)), candidates=jnp.ones((2, 1, 3)), directions="both")
