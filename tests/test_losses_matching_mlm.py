"""VTM negatives and loss (vlm/losses/matching.py) and BERT MLM corruption and loss (vlm/losses/mlm.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.losses import matching
from vlm.losses import mlm


def test_negatives_are_never_the_pair_and_hard_ones_follow_the_similarity():
  b = 6
  sim = np.zeros((b, b), np.float32)
  sim[np.arange(b), (np.arange(b) + 1) % b] = 20.0  # text i is confusable with video i + 1 only
  draws_v, draws_t = [], []
  for s in range(50):
    v, t = matching.sample_negatives(jax.random.key(s), jnp.asarray(sim))
    draws_v.append(np.asarray(v))
    draws_t.append(np.asarray(t))
  draws_v, draws_t = np.stack(draws_v), np.stack(draws_t)
  assert (draws_v != np.arange(b)).all() and (draws_t != np.arange(b)).all()
  assert np.mean(draws_v == (np.arange(b) + 1) % b) > 0.99  # the hard negative video
  assert np.mean(draws_t == (np.arange(b) - 1) % b) > 0.99  # video j is confusable with text j - 1
  # Uniform (equation 14 as written): every other item appears, the pair never does.
  uni = np.stack([np.asarray(matching.sample_negatives(jax.random.key(s), jnp.asarray(sim), hard=False)[0])
                  for s in range(200)])
  assert (uni != np.arange(b)).all() and len(np.unique(uni[:, 0])) == b - 1
  valid = jnp.asarray([True, True, False, True, True, True])
  masked = np.stack([np.asarray(matching.sample_negatives(jax.random.key(s), jnp.asarray(sim), valid=valid)[0])
                     for s in range(50)])
  assert (masked != 2).all()
  with pytest.raises(ValueError, match="at least 2"):
    matching.sample_negatives(jax.random.key(0), jnp.zeros((1, 1)))


def test_vtm_loss_is_the_two_way_cross_entropy():
  logits = np.array([[0.3, 1.2], [2.0, -1.0], [0.0, 0.5], [1.0, 1.0]], np.float32)
  labels = np.array([1, 0, 0, 1])
  loss, extra = matching.vtm_loss(jnp.asarray(logits), jnp.asarray(labels))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(float(loss), -np.mean(np.log(p[np.arange(4), labels])), rtol=1e-6)
  assert float(extra["accuracy"]) == pytest.approx(0.5)  # rows 0 and 1 right; the tie in row 3 picks class 0
  np.testing.assert_allclose(float(extra["matched_prob"]), np.mean(p[[0, 3], 1]), rtol=1e-6)


def test_mask_tokens_80_10_10_and_never_specials_or_padding():
  b, l = 64, 64
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 100, (b, l))
  ids[:, 0] = 2  # [CLS]
  mask = np.ones((b, l), np.int32)
  mask[:, 48:] = 0
  ids[:, 47] = 3  # [SEP]
  ids[mask == 0] = 0
  out, selected = mlm.mask_tokens(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask), mask_id=4,
                                  vocab_size=100, probability=0.5, special_ids=(0, 1, 2, 3, 4), first_regular_id=5)
  out, selected = np.asarray(out), np.asarray(selected)
  maskable = (mask > 0) & (ids > 4)
  assert not selected[~maskable].any()
  assert (out[~selected] == ids[~selected]).all()
  assert abs(selected.sum() / maskable.sum() - 0.5) < 0.03
  as_mask = (out == 4) & selected
  kept = (out == ids) & selected
  other = selected & ~as_mask & ~kept
  n = selected.sum()
  assert abs(as_mask.sum() / n - 0.8) < 0.03
  # The random 10% may land on the original word (1 in 95 here), which then counts as kept.
  assert abs(kept.sum() / n - 0.1 - 0.1 / 95) < 0.02 and abs(other.sum() / n - 0.1 * 94 / 95) < 0.02
  assert (out[other] >= 5).all() and (out[other] < 100).all()
  with pytest.raises(ValueError, match="probability"):
    mlm.mask_tokens(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask), mask_id=4, vocab_size=100,
                    probability=1.0)


def test_mlm_loss_counts_only_selected_positions():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  targets = rng.integers(0, 7, (2, 5))
  selected = np.zeros((2, 5), bool)
  selected[0, 1] = selected[1, 3] = selected[1, 4] = True
  loss, extra = mlm.mlm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(selected))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), nll[selected].mean(), rtol=1e-6)
  assert float(extra["num_selected"]) == 3
  none, _ = mlm.mlm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((2, 5), bool))
  assert float(none) == 0.0
