"""DropToken as released: fixed count from the buckets, one permutation per batch, training only."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import droptoken


def test_kept_count_follows_the_release():
  assert droptoken.num_kept_tokens(8 * 14 * 14, 0.5) == 784  # video, 32x224x224 with 4x16x16 tubelets
  assert droptoken.num_kept_tokens(1200, 0.5) == 600  # waveform audio, 3.2 s at 48 kHz, 128-sample patches
  assert droptoken.num_kept_tokens(1200, 0.7) == 840  # floor, without float round-down to 839
  assert droptoken.num_kept_tokens(10, 0.55) == 5


def _tokens(b=3, n=10, d=2):
  # Token j of sample i is (i, j): the kept indices can be read back from the values.
  x = np.stack(np.meshgrid(np.arange(b), np.arange(n), indexing="ij"), -1).astype(np.float32)
  return jnp.asarray(x[..., :d])


@pytest.mark.parametrize("per_sample", [False, True])
def test_drop_tokens_gathers_a_permutation(per_sample):
  x = _tokens()
  kept, idx = jax.jit(lambda x, r: droptoken.drop_tokens(x, num_keep=6, rng=r, per_sample=per_sample))(
      x, jax.random.PRNGKey(0))
  idx = np.asarray(idx)
  assert kept.shape == (3, 6, 2) and idx.shape == (3, 6)
  np.testing.assert_array_equal(np.asarray(kept)[..., 1], idx)  # the values are the gathered positions
  np.testing.assert_array_equal(np.asarray(kept)[..., 0], np.broadcast_to(np.arange(3)[:, None], (3, 6)))
  for row in idx:
    assert len(set(row.tolist())) == 6  # no repeats
  shared = all((row == idx[0]).all() for row in idx)
  assert shared != per_sample  # one permutation for the batch, or one per sample


def test_module_drops_only_in_training():
  mod = droptoken.DropToken(keep_rate=0.5, max_buckets=10)
  x = _tokens()
  run = jax.jit(lambda x, r: (mod.apply({}, x, train=True, rngs={"dropout": r}), mod.apply({}, x, train=False)))
  (kept, aux), (same, eval_aux) = run(x, jax.random.PRNGKey(1))
  assert kept.shape == (3, 5, 2) and aux["kept_indices"].shape == (3, 5)
  np.testing.assert_array_equal(same, x)
  assert eval_aux == {}
  # The count comes from the configured buckets, not from the tokens present (capped at what is there).
  kept, _ = droptoken.DropToken(keep_rate=0.5, max_buckets=16).apply({}, x, train=True,
                                                                       rngs={"dropout": jax.random.PRNGKey(1)})
  assert kept.shape[1] == 8
  with pytest.raises(ValueError, match="num_keep"):
    droptoken.drop_tokens(x, num_keep=11, rng=jax.random.PRNGKey(0))
