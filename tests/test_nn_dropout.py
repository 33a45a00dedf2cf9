"""Hashed dropout masks: the kept fraction, independence, the scaling, determinism and the errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import dropout as dropout_lib


def _corr(a, b):
  return abs(np.corrcoef(a.reshape(-1).astype(float), b.reshape(-1).astype(float))[0, 1])


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_mask_fraction_and_independence(rate):
  shape = (64, 12, 37, 41)  # odd trailing sizes: no power-of-two strides to hide a pattern behind
  mask = np.asarray(dropout_lib.keep_mask(jax.random.PRNGKey(0), shape, rate))
  assert mask.shape == shape and mask.dtype == bool
  n = mask.size
  assert abs(mask.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
  # Neighbours along every axis (consecutive hash counters, and rows that share the inner counter) and the mask
  # of another key must be uncorrelated; 4 sigma of a correlation estimate over ~1.2M pairs is ~0.004.
  for axis in range(4):
    a, b = np.split(mask, [mask.shape[axis] - 1], axis=axis)[0], np.roll(mask, -1, axis=axis)
    b = np.split(b, [mask.shape[axis] - 1], axis=axis)[0]
    assert _corr(a, b) < 0.01, axis
  other = np.asarray(dropout_lib.keep_mask(jax.random.PRNGKey(1), shape, rate))
  assert _corr(mask, other) < 0.01
  # Every 4-bit window of consecutive elements should be equally likely as under independent draws.
  flat = mask.reshape(-1)[: n - n % 4].reshape(-1, 4).astype(int)
  codes = np.bincount(flat @ np.array([8, 4, 2, 1]), minlength=16)
  ones = np.array([bin(c).count("1") for c in range(16)])
  expected = len(flat) * (1 - rate) ** ones * rate ** (4 - ones)
  chi2 = ((codes - expected) ** 2 / expected).sum()
  assert chi2 < 45.0  # 15 degrees of freedom: p < 1e-4 beyond 45


def test_keep_mask_is_deterministic_and_shape_general():
  key = jax.random.PRNGKey(3)
  a = dropout_lib.keep_mask(key, (5, 7), 0.3)
  np.testing.assert_array_equal(a, dropout_lib.keep_mask(key, (5, 7), 0.3))
  assert dropout_lib.keep_mask(key, (), 0.3).shape == ()
  assert dropout_lib.keep_mask(key, (9,), 0.3).shape == (9,)
  assert dropout_lib.keep_mask(key, (2, 1, 1), 0.3).shape == (2, 1, 1)


def test_dropout_scales_survivors_and_is_identity_when_off():
  x = jnp.ones((64, 128))
  y = np.asarray(dropout_lib.dropout(x, 0.25, jax.random.PRNGKey(1), deterministic=False))
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.03
  np.testing.assert_array_equal(dropout_lib.dropout(x, 0.25, None, deterministic=True), x)
  out = dropout_lib.Dropout(0.5).apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(2)})
  again = dropout_lib.Dropout(0.5).apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(out, again)
  np.testing.assert_array_equal(dropout_lib.Dropout(0.5).apply({}, x, True), x)


def test_dropout_errors():
  with pytest.raises(ValueError, match="rate=1.0"):
    dropout_lib.keep_mask(jax.random.PRNGKey(0), (4,), 1.0)
  with pytest.raises(ValueError, match="needs a random key"):
    dropout_lib.dropout(jnp.ones(3), 0.1, None, deterministic=False)


def test_keep_mask_is_the_same_however_it_is_sharded():
  # The hash reads each element's global index, so a mask built under jit with its output sharded over the 8 fake
  # devices (batch and head axes split) equals the mask built on one device.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  key, shape = jax.random.PRNGKey(5), (8, 4, 33, 35)
  whole = np.asarray(dropout_lib.keep_mask(key, shape, 0.1))
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharded = jax.jit(lambda k: dropout_lib.keep_mask(k, shape, 0.1),
                    out_shardings=NamedSharding(mesh, P("data", "model")))(key)
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(sharded), whole)
