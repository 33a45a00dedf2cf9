"""Dropout whose keep mask is a keyed integer hash of each element's index: ~20x cheaper than threefry bits.

Why: on XLA:CPU, `jax.random.bits` (threefry, 20 rounds) costs ~10 ns per 32-bit word on the 2-core test machine,
and dropout masks are the largest random tensors of a step (VATT-B: the [4, 12, 785, 785] attention-probability
mask of every layer took 147 ms, half the cost of the attention itself). `keep_mask` draws only two 32-bit seeds
from the key with threefry, then hashes each element's index with them through two rounds of MurmurHash3's
`fmix32` finaliser (a bijection with full avalanche): 6.6 ms for that mask. Other choices measured: splitting each
threefry word into two 16-bit uniforms (the previous kernel, 1.8x over flax), and the 'rbg' / 'unsafe_rbg' key
implementations (no faster than threefry on CPU).

The bits are a hash, not a cryptographic stream: good enough for dropout (the test checks the kept fraction and
that neighbours, rows and masks of different keys are uncorrelated), and, like threefry's, a function of the key
and the element's global index only, so a mask is the same however the array is sharded. The keep probability is
exact to 2**-32; survivors are scaled by 1 / (1 - rate), as in flax.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which every input bit flips ~half the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def keep_threshold(rate: float) -> np.uint32:
  """The uint32 below which a hashed element is kept: (1 - rate) 2**32, rounded (exact to 2**-32)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate={rate}; expected 0 <= rate < 1.")
  return np.uint32(min(round((1.0 - rate) * 2 ** 32), 2 ** 32 - 1))


def hashed_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 array of `shape`: each element's index hashed with two seeds drawn from `rng` (module docstring)."""
  shape = tuple(int(v) for v in shape)
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  # Counter = (index along axis 0, flat index within the rest). The second stays below 2**32 for any real
  # activation (it is one example's size); the first enters after one mixing round, so global arrays larger than
  # 2**32 elements (a pod's batch of attention maps) never repeat a mask.
  full = shape or (1,)  # a scalar mask is hashed as one element
  inner = jnp.zeros(full, jnp.uint32)
  stride = 1
  for axis in range(len(full) - 1, 0, -1):
    inner = inner + jax.lax.broadcasted_iota(jnp.uint32, full, axis) * jnp.uint32(stride % 2 ** 32)
    stride *= full[axis]
  outer = jax.lax.broadcasted_iota(jnp.uint32, full, 0)
  h = _fmix32(inner ^ seeds[0]) + outer * jnp.uint32(0x9E3779B9)  # odd multiplier: rows get distinct offsets
  return _fmix32(h ^ seeds[1]).reshape(shape)


def keep_mask(rng: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
  """Bool mask of `shape`, True with probability 1 - rate (to 2**-32), hashed from two seeds drawn from `rng`."""
  threshold = keep_threshold(rate)
  return hashed_bits(rng, shape) < threshold


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, *, deterministic: bool) -> jax.Array:
  """Inverted dropout: zero with probability `rate`, scale survivors by 1 / (1 - rate)."""
  if deterministic or rate == 0.0:
    return x
  if rng is None:
    raise ValueError("dropout needs a random key when it is active (deterministic=False, rate > 0).")
  keep = keep_mask(rng, x.shape, rate)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Dropout(nn.Module):
  """Drop-in for `nn.Dropout(rate)(x, deterministic=...)`, drawing from the 'dropout' rng collection."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"), deterministic=False)


def drop_path(module: nn.Module, y: jax.Array, rates: tuple[float, ...], layer: int | jax.Array, train: bool
              ) -> jax.Array:
  """Stochastic depth: the whole residual branch `y` [B, ...] dropped per example at layer `layer`'s rate.

  `rates` holds every layer's rate (read at the layer's index: a Python int when unrolled, traced under scan);
  survivors are scaled by 1 / (1 - rate). Draws from `module`'s 'dropout' rng only where the rate is positive.
  """
  if not train or not any(r > 0.0 for r in rates):
    return y
  shape = (y.shape[0],) + (1,) * (y.ndim - 1)
  if isinstance(layer, (int, np.integer)):  # unrolled: a static rate, and no draw at all where it is 0
    rate = rates[layer]
    if rate == 0.0:
      return y
    keep = keep_mask(module.make_rng("dropout"), shape, rate)
    return jnp.where(keep, y / (1.0 - rate), 0.0)
  # Scanned: the rate is read at the traced index, as exact tables (the threshold and divisor of each rate).
  thresholds = np.array([keep_threshold(r) for r in rates], np.uint32)
  divisors = np.array([1.0 - r for r in rates], np.float32)
  keep = hashed_bits(module.make_rng("dropout"), shape) < jnp.asarray(thresholds)[layer]
  keep = keep | jnp.asarray(np.array(rates) == 0.0)[layer]
  return jnp.where(keep, y / jnp.asarray(divisors)[layer].astype(y.dtype), 0.0)


def linear_rates(max_rate: float, num_layers: int) -> tuple[float, ...]:
  """Per-layer stochastic-depth rates rising linearly from 0 to `max_rate` (BEiT, TimeSformer); () for none."""
  if not max_rate:
    return ()
  return tuple(max_rate * i / max(1, num_layers - 1) for i in range(num_layers))
