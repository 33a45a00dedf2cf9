"""Perturbed Top-K (vlm/nn/perturbed_topk.py): forward indicators, the VJP against independent references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import perturbed_topk as ptk


def _numpy_estimator(scores, noise, k, sigma, g):
  """Berthet et al.'s Jacobian E[M*(s + sigma Z) Z^T] / sigma as an explicit outer product, then g . J."""
  b, s, t = noise.shape
  grad = np.zeros((b, t))
  for i in range(b):
    jac = np.zeros((k, t, t))  # d Y[k, t] / d s[t']
    for j in range(s):
      z = noise[i, j]
      kept = np.sort(np.argsort(-(scores[i] + sigma * z), kind="stable")[:k])
      m = np.zeros((k, t))
      m[np.arange(k), kept] = 1.0
      jac += m[:, :, None] * z[None, None, :]
    jac /= s * sigma
    grad[i] = np.einsum("kt,ktu->u", g[i], jac)
  return grad


def test_forward_is_the_mean_of_hard_indicators_in_temporal_order():
  scores = jnp.array([[0.1, 0.9, 0.3, 0.8, 0.2]])
  hard = ptk.perturbed_topk(scores, 3, None, perturbed=False)
  np.testing.assert_array_equal(np.asarray(hard[0]).argmax(-1), [1, 2, 3])  # temporal, not by score
  np.testing.assert_array_equal(np.asarray(hard).sum(-1), 1.0)
  soft = ptk.perturbed_topk(scores, 3, jax.random.key(0), num_samples=64, sigma=0.05)
  np.testing.assert_allclose(np.asarray(soft).sum(-1), 1.0, rtol=1e-6)
  # Margins of 0.1 against sigma 0.05: the hard choice dominates every row.
  np.testing.assert_array_equal(np.asarray(soft[0]).argmax(-1), [1, 2, 3])
  # Same key, same draws (the step's key decides them); another key, other draws.
  again = ptk.perturbed_topk(scores, 3, jax.random.key(0), num_samples=64, sigma=0.05)
  np.testing.assert_array_equal(np.asarray(soft), np.asarray(again))
  # Leading dimensions are kept.
  assert ptk.perturbed_topk(jnp.zeros((2, 3, 6)), 2, jax.random.key(1), num_samples=4).shape == (2, 3, 2, 6)


def test_vjp_equals_the_numpy_outer_product_estimator():
  rng = np.random.default_rng(0)
  b, t, k, s, sigma = 2, 6, 3, 50, 0.3
  scores = rng.normal(size=(b, t)).astype(np.float32)
  noise = rng.normal(size=(b, s, t)).astype(np.float32)
  g = rng.normal(size=(b, k, t)).astype(np.float32)
  _, vjp = jax.vjp(lambda x: ptk._perturbed(x, jnp.asarray(noise), k, sigma), jnp.asarray(scores))
  ours = np.asarray(vjp(jnp.asarray(g))[0])
  np.testing.assert_allclose(ours, _numpy_estimator(scores, noise, k, sigma, g), rtol=1e-4, atol=1e-5)
  # The release's per-frame contraction (only the t = t' terms) is a different quantity.
  diag = np.einsum("bkt,bkt->bt", g, np.stack([
      np.einsum("skt,st->kt", np.asarray(jax.nn.one_hot(ptk.hard_topk_indices(
          jnp.asarray(scores[i] + sigma * noise[i]), k), t)), noise[i]) for i in range(b)]) / (s * sigma))
  assert np.abs(ours - diag).max() > 0.1


def test_vjp_matches_finite_differences_of_the_smoothed_expectation():
  """Common random numbers: F(s) = mean_z <g, M*(s + sigma z)> over one fixed large set of draws, differenced
  at s +- h e_j; its slope is the gradient of the smoothed objective that the estimator targets."""
  rng = np.random.default_rng(1)
  t, k, s, sigma, h = 5, 2, 400_000, 0.5, 0.05
  scores = np.array([[0.3, -0.2, 0.5, 0.0, 0.1]], np.float32)
  g = rng.normal(size=(1, k, t)).astype(np.float32)
  noise = jnp.asarray(rng.normal(size=(1, s, t)).astype(np.float32))
  objective = lambda x: jnp.sum(jnp.asarray(g) * ptk._perturbed(x, noise, k, sigma))
  grad = np.asarray(jax.grad(objective)(jnp.asarray(scores)))[0]
  fd = []
  for j in range(t):
    e = np.zeros_like(scores)
    e[0, j] = h
    fd.append(float(objective(jnp.asarray(scores + e)) - objective(jnp.asarray(scores - e))) / (2 * h))
  # Both are Monte Carlo figures of the same slope; their gap is below 1e-2 at 4e5 draws.
  tol = 0.03 * np.abs(fd).max() + 0.02
  np.testing.assert_allclose(grad, fd, atol=tol)
  # The release's per-frame contraction misses the slope by far more (0.4 here).
  kept = np.asarray(jax.nn.one_hot(ptk.hard_topk_indices(jnp.asarray(scores)[:, None] + sigma * noise, k), t))[0]
  diag = np.einsum("kt,kt->t", g[0], np.einsum("skt,st->kt", kept, np.asarray(noise)[0]) / (s * sigma))
  assert np.abs(diag - np.asarray(fd)).max() > 5 * tol


def test_two_frame_gradient_matches_the_closed_form():
  """T = 2, K = 1: E[Y[0, 0]] = Phi((s0 - s1) / (sigma sqrt 2)), so dE/ds0 = phi(.) / (sigma sqrt 2)."""
  sigma, delta, s = 0.2, 0.1, 200_000
  scores = jnp.array([[delta, 0.0]])
  first = lambda x: ptk.perturbed_topk(x, 1, jax.random.key(3), num_samples=s, sigma=sigma)[0, 0, 0]
  value, grad = jax.value_and_grad(first)(scores)
  u = delta / (sigma * math.sqrt(2))
  np.testing.assert_allclose(float(value), 0.5 * (1 + math.erf(u / math.sqrt(2))), atol=5e-3)
  slope = math.exp(-u * u / 2) / math.sqrt(2 * math.pi) / (sigma * math.sqrt(2))
  np.testing.assert_allclose(np.asarray(grad)[0], [slope, -slope], rtol=0.05)


def test_hard_selection_has_no_gradient_and_bad_arguments_are_named():
  grad = jax.grad(lambda x: ptk.perturbed_topk(x, 1, None, perturbed=False)[0, 0, 0])(jnp.array([[1.0, 0.0]]))
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
  with pytest.raises(ValueError, match="k=4 of 3 frames"):
    ptk.perturbed_topk(jnp.zeros((1, 3)), 4, jax.random.key(0))
  with pytest.raises(ValueError, match="num_samples=0"):
    ptk.perturbed_topk(jnp.zeros((1, 3)), 1, jax.random.key(0), num_samples=0)
  with pytest.raises(ValueError, match="sigma=0"):
    ptk.perturbed_topk(jnp.zeros((1, 3)), 1, jax.random.key(0), sigma=0.0)
  with pytest.raises(ValueError, match="PRNG key"):
    ptk.perturbed_topk(jnp.zeros((1, 3)), 1, None)
