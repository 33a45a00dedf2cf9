"""Token pruning by [CLS] attention (SViTT node sparsity) against numpy, with positions, masks and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import token_pruning as tp


def test_keep_count_is_ceil():
  assert tp.keep_count(784, 0.7) == 549  # ceil(548.8)
  assert tp.keep_count(10, 0.5) == 5 and tp.keep_count(10, 1.0) == 10 and tp.keep_count(3, 0.01) == 1
  for bad in (0.0, -0.1, 1.5):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
      tp.keep_count(10, bad)


def test_cls_attention_matches_numpy():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(2, 7, 3, 4)), rng.normal(size=(2, 7, 3, 4))
  mask = np.ones((2, 7), bool)
  mask[1, 5:] = False
  bias = rng.normal(size=(1, 3, 7, 7))
  got = np.asarray(tp.cls_attention(jnp.asarray(q), jnp.asarray(k), mask=jnp.asarray(mask), bias=jnp.asarray(bias)))
  logits = np.einsum("bhd,bshd->bhs", q[:, 0], k) / 2.0 + bias[:, :, 0]
  logits = np.where(mask[:, None], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(got, p.mean(1)[:, 1:], rtol=1e-5, atol=1e-6)
  assert got.shape == (2, 6) and np.all(got[1, 4:] == 0)


def test_prune_keeps_top_k_in_original_order_and_carries_positions():
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(2, 1 + 10, 4)).astype(np.float32)
  scores = rng.uniform(size=(2, 10)).astype(np.float32)
  positions = np.stack([np.arange(10) * 3, np.arange(10) + 100])
  out, pos, _ = tp.prune(jnp.asarray(tokens), jnp.asarray(scores), 0.35, positions=jnp.asarray(positions))
  assert out.shape == (2, 1 + 4, 4) and pos.shape == (2, 4)
  for i in range(2):
    top = np.sort(np.argsort(-scores[i])[:4])
    np.testing.assert_array_equal(out[i, 0], tokens[i, 0])  # [CLS] always kept
    np.testing.assert_array_equal(out[i, 1:], tokens[i, 1 + top])
    np.testing.assert_array_equal(pos[i], positions[i][top])
  # Pruning twice composes: positions keep pointing at the original tokens.
  out2, pos2, _ = tp.prune(out, jnp.asarray(rng.uniform(size=(2, 4))), 0.5, positions=pos)
  for i in range(2):
    for j, p in enumerate(np.asarray(pos2[i])):
      src = np.flatnonzero(positions[i] == p)[0]
      np.testing.assert_array_equal(out2[i, 1 + j], tokens[i, 1 + src])


def test_padded_tokens_go_first_and_gradients_reach_kept_tokens():
  tokens = jnp.arange(1 + 6, dtype=jnp.float32)[None, :, None] * jnp.ones((1, 1, 2))
  scores = jnp.asarray([[0.1, 0.9, 0.2, 0.8, 0.95, 0.3]])
  mask = jnp.asarray([[True, True, True, True, True, False, True]])  # local token 4 (score 0.95) is padding
  out, pos, new_mask = tp.prune(tokens, scores, 0.5, mask=mask)
  np.testing.assert_array_equal(pos[0], [1, 3, 5])
  assert bool(new_mask.all())
  grad = jax.grad(lambda t: tp.prune(t, scores, 0.5, mask=mask)[0].sum())(tokens)
  np.testing.assert_array_equal(grad[0, :, 0], [1, 0, 1, 0, 1, 0, 1])
  with pytest.raises(ValueError, match="one per local token"):
    tp.prune(tokens, scores[:, :3], 0.5)
