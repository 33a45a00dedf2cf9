"""EgoNCE, HierVL's summary-level losses and the hierarchical MIL-NCE against numpy loop references."""
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.losses import egonce

TAU = 0.05


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _related(i, j, nouns, verbs, positives):
  """j is a positive of i: written from the rule on label *sets* (no matrix products)."""
  if i == j:
    return True
  share_n = bool(set(nouns[i]) & set(nouns[j]))
  share_v = bool(set(verbs[i]) & set(verbs[j]))
  return {"noun_and_verb": share_n and share_v, "noun": share_n, "verb": share_v, "diagonal": False}[positives]


def reference_egonce(video, text, nouns, verbs, valid, tau, positives="noun_and_verb"):
  """-log(sum_{j in P_i} e^{s_ij} / sum_j e^{s_ij}) + the same on s^T, averaged over valid i (loop by loop)."""
  v, t = _unit(video), _unit(text)
  idx = [i for i in range(len(v)) if valid[i]]
  per = {}
  for i in idx:
    pos = [j for j in idx if _related(i, j, nouns, verbs, positives)]
    v2t = -np.log(sum(np.exp(v[i] @ t[j] / tau) for j in pos) / sum(np.exp(v[i] @ t[j] / tau) for j in idx))
    t2v = -np.log(sum(np.exp(v[j] @ t[i] / tau) for j in pos) / sum(np.exp(v[j] @ t[i] / tau) for j in idx))
    per[i] = (v2t + t2v, len(pos))
  loss = float(np.mean([p for p, _ in per.values()])) if per else 0.0
  return loss, per


def reference_milnce(parents, children, child_valid, tau):
  """The block-diagonal MIL-NCE of the module docstring, loop by loop (child_valid [E, N] bool)."""
  p, c = _unit(parents), _unit(children)
  e, n = child_valid.shape
  kids = [(f, k) for f in range(e) for k in range(n) if child_valid[f, k]]
  par = [i for i in range(e) if child_valid[i].any()]
  s = lambda i, f, k: p[i] @ c[f, k] / tau
  parent_terms = [-np.log(sum(np.exp(s(i, i, k)) for k in range(n) if child_valid[i, k])
                          / sum(np.exp(s(i, f, k)) for f, k in kids)) for i in par]
  child_terms = [-np.log(np.exp(s(f, f, k)) / sum(np.exp(s(i, f, k)) for i in par)) for f, k in kids]
  return float(np.mean(parent_terms) + np.mean(child_terms))


def _multi_hot(sets, size):
  out = np.zeros((len(sets), size), np.float32)
  for i, s in enumerate(sets):
    out[i, list(s)] = 1
  return out


# Hand-built labels: 0 and 1 share noun 2 and verb 0; 2 shares noun 2 with them but no verb; 3 shares verb 0 but
# no noun; 4 has no verb label (falls back to the diagonal); 5 shares noun 5 and verb 3 with 6; 7 has no labels.
NOUNS = [{2, 3}, {2}, {2, 4}, {1}, {2}, {5}, {5, 0}, set()]
VERBS = [{0}, {0, 1}, {2}, {0}, set(), {3}, {3}, set()]


def _batch(b=8, d=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, d)), rng.normal(size=(b, d))


def test_positive_mask_hand_built():
  n, v = jnp.asarray(_multi_hot(NOUNS, 6)), jnp.asarray(_multi_hot(VERBS, 4))
  mask, labelled = egonce.positive_mask(n, v)
  want = np.eye(8, dtype=bool)
  for i, j in [(0, 1), (5, 6)]:
    want[i, j] = want[j, i] = True
  np.testing.assert_array_equal(mask, want)
  np.testing.assert_array_equal(labelled, [1, 1, 1, 1, 0, 1, 1, 0])
  noun_mask, noun_labelled = egonce.positive_mask(n, v, positives="noun")
  want_n = np.eye(8, dtype=bool)
  for i, j in [(0, 1), (0, 2), (0, 4), (1, 2), (1, 4), (2, 4), (5, 6)]:
    want_n[i, j] = want_n[j, i] = True
  np.testing.assert_array_equal(noun_mask, want_n)
  np.testing.assert_array_equal(noun_labelled, [1, 1, 1, 1, 1, 1, 1, 0])
  verb_mask, _ = egonce.positive_mask(None, v, positives="verb")
  want_v = np.eye(8, dtype=bool)
  for i, j in [(0, 1), (0, 3), (1, 3), (5, 6)]:
    want_v[i, j] = want_v[j, i] = True
  np.testing.assert_array_equal(verb_mask, want_v)
  # Label values only matter through being nonzero (the release tests cosine > 0 of multi-hot vectors).
  np.testing.assert_array_equal(egonce.positive_mask(3.0 * n, v)[0], want)


@pytest.mark.parametrize("positives", ["noun_and_verb", "noun", "verb", "diagonal"])
def test_egonce_matches_numpy_reference(positives):
  video, text = _batch()
  smask = np.ones(8, bool)
  smask[6] = False  # 5 loses its partner 6
  n, v = _multi_hot(NOUNS, 6), _multi_hot(VERBS, 4)
  fn = jax.jit(lambda a, b: egonce.egonce_loss(a, b, nouns=n, verbs=v, temperature=TAU, sample_mask=smask,
                                               positives=positives))
  loss, ex = fn(jnp.asarray(video, jnp.float32), jnp.asarray(text, jnp.float32))
  want, per = reference_egonce(video, text, NOUNS, VERBS, smask, TAU, positives)
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  for i in range(8):
    np.testing.assert_allclose(ex["per_sample"][i], per[i][0] if i in per else 0.0, rtol=1e-4, atol=1e-6)
    assert ex["num_positives"][i] == (per[i][1] if i in per else 0)
  np.testing.assert_allclose(ex["per_sample_v2t"] + ex["per_sample_t2v"], ex["per_sample"], rtol=1e-6)
  assert ex["num_valid"] == 7
  assert ex["num_diagonal_only"] == {"noun_and_verb": 2, "noun": 1, "verb": 2, "diagonal": 0}[positives]


def test_diagonal_fallback_is_counted_and_uses_only_the_pair():
  video, text = _batch()
  n, v = _multi_hot(NOUNS, 6), _multi_hot(VERBS, 4)
  smask = np.ones(8, bool)
  smask[7] = False  # the unlabelled sample 7 is masked: only sample 4 is counted
  _, ex = egonce.egonce_loss(jnp.asarray(video), jnp.asarray(text), nouns=n, verbs=v, sample_mask=smask)
  assert ex["num_diagonal_only"] == 1
  _, ex = egonce.egonce_loss(jnp.asarray(video), jnp.asarray(text), nouns=n, verbs=v)
  assert ex["num_diagonal_only"] == 2 and ex["num_positives"][4] == 1 and ex["num_positives"][7] == 1
  # A batch with no labels at all is plain two-way InfoNCE (EgoVLP's NormSoftmaxLoss).
  none = np.zeros_like(n)
  a, _ = egonce.egonce_loss(jnp.asarray(video), jnp.asarray(text), nouns=none, verbs=np.zeros_like(v))
  b, _ = egonce.egonce_loss(jnp.asarray(video), jnp.asarray(text), nouns=None, verbs=None, positives="diagonal")
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(a, reference_egonce(video, text, NOUNS, VERBS, np.ones(8), 0.05, "diagonal")[0],
                             rtol=1e-4)


def test_masked_samples_get_zero_gradient():
  video, text = _batch()
  n, v = _multi_hot(NOUNS, 6), _multi_hot(VERBS, 4)
  smask = np.ones(8, bool)
  smask[[1, 6]] = False
  gv, gt = jax.jit(jax.grad(lambda a, b: egonce.egonce_loss(a, b, nouns=n, verbs=v, sample_mask=smask)[0],
                            argnums=(0, 1)))(jnp.asarray(video, jnp.float32), jnp.asarray(text, jnp.float32))
  gv, gt = np.asarray(gv), np.asarray(gt)
  assert np.all(np.isfinite(gv)) and np.all(np.isfinite(gt))
  for g in (gv, gt):
    assert np.all(g[[1, 6]] == 0)
    assert np.all(np.abs(g[[0, 2, 3, 4, 5, 7]]).sum(axis=1) > 0)
  # And the masked samples change nothing: the loss equals the one on the batch without them.
  keep = np.flatnonzero(smask)
  full, _ = egonce.egonce_loss(jnp.asarray(video), jnp.asarray(text), nouns=n, verbs=v, sample_mask=smask)
  sub, _ = egonce.egonce_loss(jnp.asarray(video[keep]), jnp.asarray(text[keep]), nouns=n[keep], verbs=v[keep])
  np.testing.assert_allclose(full, sub, rtol=1e-5)
  zero, ex = egonce.egonce_loss(jnp.asarray(video), jnp.asarray(text), nouns=n, verbs=v, sample_mask=np.zeros(8))
  assert zero == 0.0 and ex["num_valid"] == 0


def test_batch_order_permutes_per_sample_losses():
  video, text = _batch(seed=3)
  n, v = _multi_hot(NOUNS, 6), _multi_hot(VERBS, 4)
  smask = np.array([1, 1, 0, 1, 1, 1, 1, 1], bool)
  perm = np.random.default_rng(1).permutation(8)
  fn = jax.jit(lambda a, b, nn, vv, m: egonce.egonce_loss(a, b, nouns=nn, verbs=vv, sample_mask=m))
  loss, ex = fn(video.astype(np.float32), text.astype(np.float32), n, v, smask)
  loss_p, ex_p = fn(video[perm].astype(np.float32), text[perm].astype(np.float32), n[perm], v[perm], smask[perm])
  np.testing.assert_allclose(loss_p, loss, rtol=1e-5)
  np.testing.assert_allclose(ex_p["per_sample"], ex["per_sample"][perm], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ex_p["num_positives"], ex["num_positives"][perm])
  # The hierarchical loss: permuting the episodes permutes the per-parent and per-child losses.
  rng = np.random.default_rng(2)
  parents, children = rng.normal(size=(4, 5)), rng.normal(size=(4, 3, 5))
  ep = np.array([2, 0, 3, 1])
  h = jax.jit(lambda p, c: egonce.hierarchical_milnce_loss(p, c))
  (l1, e1), (l2, e2) = h(parents, children), h(parents[ep], children[ep])
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  np.testing.assert_allclose(e2["per_parent"], e1["per_parent"][ep], rtol=1e-5)
  np.testing.assert_allclose(e2["per_child"], e1["per_child"][ep], rtol=1e-5)


def test_perfect_alignment_and_dtype_promotion():
  x = jnp.asarray(np.eye(4, 6), jnp.bfloat16)
  loss, ex = egonce.egonce_loss(x, x, nouns=None, verbs=None, positives="diagonal", temperature=0.01)
  assert loss.dtype == jnp.float32 and ex["per_sample"].dtype == jnp.float32
  assert ex["top1"] == 1.0 and ex["top1_positive"] == 1.0 and float(loss) < 1e-6


@pytest.mark.parametrize("terms", [("text_summary", "video_summary"), ("video_summary",), ("text_video",)])
def test_summary_loss_matches_reference(terms):
  rng = np.random.default_rng(4)
  agg_v, agg_t, summ = (rng.normal(size=(5, 6)) for _ in range(3))
  smask = np.array([1, 1, 1, 1, 0], bool)
  has_summary = np.array([1, 0, 1, 1, 1], bool)  # episode 1's summary is missing
  fn = jax.jit(lambda a, b, c: egonce.summary_loss(a, b, c, terms=terms, sample_mask=smask,
                                                   summary_mask=has_summary))
  loss, ex = fn(*(jnp.asarray(x, jnp.float32) for x in (agg_v, agg_t, summ)))
  no_labels = [set()] * 5
  ref = {"text_summary": (agg_t, summ, smask & has_summary), "video_summary": (agg_v, summ, smask & has_summary),
         "text_video": (agg_t, agg_v, smask)}
  want = 0.0
  for term in terms:
    rows, cols, valid = ref[term]
    term_loss = reference_egonce(rows, cols, no_labels, no_labels, valid, TAU, "diagonal")[0]
    np.testing.assert_allclose(ex[f"{term}_loss"], term_loss, rtol=1e-4)
    assert ex[f"{term}_num_valid"] == valid.sum()
    want += term_loss
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  assert ex["num_diagonal_only"] == 0


def test_summary_loss_with_summary_tags_follows_the_release_positives():
  rng = np.random.default_rng(5)
  agg_v, agg_t, summ = (rng.normal(size=(8, 6)) for _ in range(3))
  n, v = _multi_hot(NOUNS, 6), _multi_hot(VERBS, 4)
  loss, ex = egonce.summary_loss(jnp.asarray(agg_v), jnp.asarray(agg_t), jnp.asarray(summ), nouns=n, verbs=v)
  ones = np.ones(8, bool)
  want = (reference_egonce(agg_t, summ, NOUNS, VERBS, ones, TAU)[0]
          + reference_egonce(agg_v, summ, NOUNS, VERBS, ones, TAU)[0])
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  assert ex["num_diagonal_only"] == 4  # samples 4 and 7, in each of the two terms
  with pytest.raises(ValueError, match="agg_text"):
    egonce.summary_loss(jnp.asarray(agg_v), None, jnp.asarray(summ))
  egonce.summary_loss(jnp.asarray(agg_v), None, jnp.asarray(summ), terms=("video_summary",))
  with pytest.raises(ValueError, match="terms"):
    egonce.summary_loss(jnp.asarray(agg_v), jnp.asarray(agg_t), jnp.asarray(summ), terms=("video_text",))


def test_hierarchical_milnce_matches_reference_and_masks():
  rng = np.random.default_rng(6)
  parents, children = rng.normal(size=(4, 6)), rng.normal(size=(4, 3, 6))
  cmask = np.ones((4, 3), bool)
  cmask[1, 2] = False  # a short episode, padded
  pmask = np.array([1, 1, 1, 0], bool)  # episode 3 is padding: its children go too
  fn = jax.jit(lambda p, c: egonce.hierarchical_milnce_loss(p, c, child_mask=cmask, parent_mask=pmask))
  loss, ex = fn(jnp.asarray(parents, jnp.float32), jnp.asarray(children, jnp.float32))
  valid = cmask & pmask[:, None]
  np.testing.assert_allclose(loss, reference_milnce(parents, children, valid, TAU), rtol=1e-4)
  assert ex["num_valid_parents"] == 3 and ex["num_valid_children"] == 8
  gp, gc = jax.grad(lambda p, c: fn(p, c)[0], argnums=(0, 1))(jnp.asarray(parents, jnp.float32),
                                                              jnp.asarray(children, jnp.float32))
  gp, gc = np.asarray(gp), np.asarray(gc)
  assert np.all(gp[3] == 0) and np.all(gc[3] == 0) and np.all(gc[1, 2] == 0)
  assert np.all(np.abs(gc[valid]).sum(-1) > 0) and np.all(np.abs(gp[:3]).sum(-1) > 0)
  # Release form on the transposed matrix, sim(children, parents) with mask kron(I_E, 1_{N x 1}) (unmasked).
  p, c = _unit(parents), _unit(children).reshape(12, 6)
  x = c @ p.T / TAU
  m = np.kron(np.eye(4), np.ones((3, 1))) > 0
  sm_rows = np.exp(x) / np.exp(x).sum(1, keepdims=True)
  sm_cols = np.exp(x.T) / np.exp(x.T).sum(1, keepdims=True)
  release = -np.mean(np.log((sm_rows * m).sum(1))) - np.mean(np.log((sm_cols * m.T).sum(1)))
  full, _ = egonce.hierarchical_milnce_loss(jnp.asarray(parents), jnp.asarray(children))
  np.testing.assert_allclose(full, release, rtol=1e-4)


def test_hierarchical_loss_sums_intra_and_inter_terms():
  rng = np.random.default_rng(7)
  av, at = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  cv, ct = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
  ok = np.ones((3, 4), bool)
  ref = {"intra_video": (av, cv), "intra_text": (at, ct), "inter_video": (av, ct), "inter_text": (at, cv)}
  for intra, inter in [(True, True), (True, False), (False, True)]:
    loss, ex = jax.jit(lambda *a: egonce.hierarchical_loss(*a, intra=intra, inter=inter))(av, at, cv, ct)
    names = [k for k in ref if (intra and k.startswith("intra")) or (inter and k.startswith("inter"))]
    want = sum(reference_milnce(*ref[k], ok, TAU) for k in names)
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    assert sorted(k[:-5] for k in ex if k.endswith("_loss")) == sorted(names)
  with pytest.raises(ValueError):
    egonce.hierarchical_loss(av, at, cv, ct, intra=False, inter=False)


def test_gradients_match_finite_differences():
  video, text = _batch(b=6, d=4, seed=8)
  n, v = _multi_hot(NOUNS[:6], 6), _multi_hot(VERBS[:6], 4)
  smask = np.array([1, 1, 1, 0, 1, 1], bool)
  rng = np.random.default_rng(9)
  parents, children = rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 4))
  cmask = np.array([[1, 1], [1, 0], [1, 1]], bool)
  with jax.enable_x64(True):
    f = lambda a, b: egonce.egonce_loss(a, b, nouns=n, verbs=v, sample_mask=smask, temperature=0.5)[0]
    jtu.check_grads(jax.jit(f), (jnp.asarray(video), jnp.asarray(text)), order=1, modes=["rev"], eps=1e-5)
    g = lambda a, b, c: egonce.summary_loss(a, b, c, temperature=0.5, nouns=n, verbs=v, sample_mask=smask)[0]
    jtu.check_grads(jax.jit(g), (jnp.asarray(video), jnp.asarray(text), jnp.asarray(text[::-1])), order=1,
                    modes=["rev"], eps=1e-5)
    h = lambda p, c: egonce.hierarchical_milnce_loss(p, c, child_mask=cmask, temperature=0.5)[0]
    jtu.check_grads(jax.jit(h), (jnp.asarray(parents), jnp.asarray(children)), order=1, modes=["rev"], eps=1e-5)
    loss = jax.jit(f)(jnp.asarray(video), jnp.asarray(text))
    assert loss.dtype == jnp.float64


def test_bad_inputs():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="one shape"):
    egonce.egonce_loss(x, jnp.ones((3, 3)), nouns=None, verbs=None, positives="diagonal")
  with pytest.raises(ValueError, match="nouns must be"):
    egonce.egonce_loss(x, x, nouns=jnp.ones((3, 5)), verbs=jnp.ones((4, 2)))
  with pytest.raises(ValueError, match="needs `verbs`"):
    egonce.egonce_loss(x, x, nouns=jnp.ones((4, 5)), verbs=None)
  with pytest.raises(ValueError, match="positives must be"):
    egonce.egonce_loss(x, x, nouns=jnp.ones((4, 5)), verbs=jnp.ones((4, 2)), positives="both")
  with pytest.raises(ValueError, match="sample_mask"):
    egonce.egonce_loss(x, x, nouns=None, verbs=None, positives="diagonal", sample_mask=jnp.ones(3))
  with pytest.raises(ValueError, match="children"):
    egonce.hierarchical_milnce_loss(x, jnp.ones((3, 2, 3)))
