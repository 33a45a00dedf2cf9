"""DropToken (VATT section 3.3): train on a random subset of the input tokens.

As released (docs/design.md, VATT: DropToken; `vatt/modeling/backbones/video/vitx3d.py:_random_patch_selection`):
  * the number kept is fixed, `int(keep_rate * max_buckets)`, where max_buckets is the number of positional
    buckets the tower was configured with (8*14*14 = 1568 -> 784 for video, 1200 -> 600 for audio at rate 0.5),
    not the number of tokens actually present;
  * one random permutation is shared by the whole batch (every sample keeps the same positions);
  * it runs after the positional embedding is added and before the aggregation token is prepended, and only
    in training.
`per_sample=True` draws an independent permutation per sample instead.

The release's `patch_sampling_rate` is the kept fraction; the paper's "drop rate of 50%" is 1 - keep_rate.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def num_kept_tokens(max_buckets: int, keep_rate: float) -> int:
  """`int(keep_rate * max_buckets)` as released (floor; +1e-6 so 0.7 * 1200 gives 840, not 839)."""
  return int(keep_rate * max_buckets + 1e-6)


def drop_tokens(x: jax.Array, *, num_keep: int, rng: jax.Array, per_sample: bool = False
                ) -> tuple[jax.Array, jax.Array]:
  """Keeps `num_keep` randomly chosen tokens.

  Args:
    x: [B, N, D] tokens.
    num_keep: K <= N tokens to keep.
    rng: PRNG key.
    per_sample: one permutation per sample instead of one for the batch.

  Returns:
    (kept [B, K, D], indices [B, K] int32 into the N input tokens, in the random order they were drawn).
  """
  b, n = x.shape[:2]
  if not 0 < num_keep <= n:
    raise ValueError(f"num_keep={num_keep} must be in [1, {n}].")
  if per_sample:
    idx = jnp.argsort(jax.random.uniform(rng, (b, n)), axis=1)[:, :num_keep]
  else:
    idx = jnp.broadcast_to(jax.random.permutation(rng, n)[:num_keep], (b, num_keep))
  idx = idx.astype(jnp.int32)
  return jnp.take_along_axis(x, idx[:, :, None], axis=1), idx


class DropToken(nn.Module):
  """Random token subset in training; identity at eval.

  Attributes:
    keep_rate: fraction of `max_buckets` kept (release `patch_sampling_rate`); >= 1 disables DropToken.
    max_buckets: number of positional buckets of the tower (the count the kept number is computed from).
    per_sample: independent permutation per sample (default: one shared by the batch, as released).
    rng_collection: PRNG stream to draw from.
  """
  keep_rate: float
  max_buckets: int
  per_sample: bool = False
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """[B, N, D] -> ([B, K, D], aux) with aux['kept_indices'] [B, K] when tokens were dropped."""
    if not train or self.keep_rate >= 1.0:
      return x, {}
    num_keep = min(num_kept_tokens(self.max_buckets, self.keep_rate), x.shape[1])
    kept, idx = drop_tokens(x, num_keep=num_keep, rng=self.make_rng(self.rng_collection),
                            per_sample=self.per_sample)
    return kept, {"kept_indices": idx}
