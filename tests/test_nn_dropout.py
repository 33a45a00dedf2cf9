"""16-bit dropout masks: the kept fraction, the scaling, determinism and the errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import dropout as dropout_lib


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_mask_fraction_and_independence(rate):
  mask = np.asarray(dropout_lib.keep_mask(jax.random.PRNGKey(0), (301, 333), rate))  # odd size: half a word unused
  assert mask.shape == (301, 333) and mask.dtype == bool
  n = mask.size
  assert abs(mask.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
  # The two halves of one 32-bit draw are neighbours in the flat mask: they must not be correlated.
  flat = mask.reshape(-1)[: n - n % 2].reshape(-1, 2).astype(float)
  assert abs(np.corrcoef(flat[:, 0], flat[:, 1])[0, 1]) < 0.02


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
