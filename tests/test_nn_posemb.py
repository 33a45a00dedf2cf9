"""Factorised positional embeddings and their resizing (polyharmonic spline as VATT's release, cubic option)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import interpolate

from vlm.nn import posemb


def test_spline_matches_scipy_rbf_interpolator_1d():
  # Order-3 polyharmonic spline with a linear term == scipy's cubic RBF with degree 1 (tfa interpolate_spline).
  values = np.random.default_rng(0).normal(size=(14, 5))
  centers, queries = np.arange(14) / 14, np.arange(20) / 20  # VATT: 14 -> 20 buckets (224 -> 320 crops)
  want = interpolate.RBFInterpolator(centers[:, None], values, kernel="cubic", degree=1)(queries[:, None])
  np.testing.assert_allclose(posemb.polyharmonic_spline_weights(centers, queries) @ values, want, atol=1e-9)
  np.testing.assert_allclose(posemb.spline_resize_matrix(14, 20) @ values, want, atol=1e-5)


def test_spline_matches_scipy_scattered_2d():
  rng = np.random.default_rng(1)
  centers, queries, values = rng.uniform(size=(30, 2)), rng.uniform(size=(11, 2)), rng.normal(size=(30, 3))
  want = interpolate.RBFInterpolator(centers, values, kernel="cubic", degree=1)(queries)
  np.testing.assert_allclose(posemb.polyharmonic_spline_weights(centers, queries) @ values, want, atol=1e-8)


def test_spline_interpolates_and_reproduces_linear_functions():
  w = posemb.spline_resize_matrix(8, 8)
  np.testing.assert_allclose(w, np.eye(8), atol=1e-5)  # same grid: the known values
  lin = 3.0 * np.arange(8) / 8 - 1.0
  np.testing.assert_allclose(posemb.spline_resize_matrix(8, 13) @ lin, 3.0 * np.arange(13) / 13 - 1.0, atol=1e-5)
  np.testing.assert_allclose(posemb.spline_resize_matrix(1, 4), np.ones((4, 1)))  # one bucket: constant


def test_resize_table_methods():
  table = jnp.asarray(np.random.default_rng(2).normal(size=(14, 6)), jnp.float32)
  assert posemb.resize_table(table, 14) is table
  spline = posemb.resize_table(table, 20)
  np.testing.assert_allclose(spline, posemb.spline_resize_matrix(14, 20) @ np.asarray(table), atol=1e-5)
  cubic = posemb.resize_table(table, 20, method="cubic")
  assert cubic.shape == (20, 6)
  const = jnp.ones((14, 6))
  np.testing.assert_allclose(posemb.resize_table(const, 20, method="cubic"), np.ones((20, 6)), atol=1e-5)
  with pytest.raises(ValueError, match="resize method"):
    posemb.resize_table(table, 20, method="linear")


def test_factorized_posemb_sum_layernorm_and_resize():
  mod = posemb.FactorizedPosEmb(buckets=(2, 3, 3))
  x = jnp.zeros((1, 18, 8))
  variables = jax.jit(lambda r: mod.init(r, x, grid=(2, 3, 3)))(jax.random.PRNGKey(0))
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  p = {k: getattr(v, "value", v) for k, v in p.items()}
  t, h, w = (p[f"{n}_embedding"] for n in ("temporal", "vertical", "horizontal"))
  assert t.shape == (2, 8) and h.shape == (3, 8)
  assert 0.1 < np.std(np.concatenate([t, h, w])) < 0.6  # truncated normal, std hidden**-0.5 = 0.35

  def expected(t, h, w):
    s = t[:, None, None] + h[None, :, None] + w[None, None, :]
    s = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-6)  # LN, scale 1, bias 0
    return s.reshape(-1, 8)

  run = jax.jit(lambda v, x1, x2: (mod.apply(v, x1, grid=(2, 3, 3)), mod.apply(v, x2, grid=(2, 5, 4))))
  same, resized = run(variables, x, jnp.zeros((1, 40, 8)))
  np.testing.assert_allclose(same[0], expected(t, h, w), atol=1e-4)
  # A 2x5x4 grid resamples the vertical and horizontal tables per axis; the temporal one is used as is.
  np.testing.assert_allclose(resized[0], expected(t, posemb.spline_resize_matrix(3, 5) @ h,
                                                  posemb.spline_resize_matrix(3, 4) @ w), atol=1e-4)
  with pytest.raises(ValueError, match="axes"):
    mod.apply(variables, x, grid=(18,))
