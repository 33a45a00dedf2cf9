"""Differentiable Top-K selection by perturbed maximisation (Berthet et al. 2020), TW-BERT's frame selector.

Choosing the K highest of T scores s is the linear program argmax_{M in C} <M, s> over the polytope C of
[K, T] indicators (TW-BERT supplement B, equation b). Its perturbed version replaces the hard solution by the
expectation over Gaussian noise Z [T]:

  forward   Y(s) = E_Z[ M*(s + sigma Z) ],  estimated by the mean over `num_samples` draws, where M*(.) is the
            hard Top-K indicator with its K rows in temporal (ascending index) order: row k is one-hot on the
            k-th kept frame, so `Y @ frames` keeps the frames' order (equation a, M^T V).
  backward  dY / ds = E_Z[ M*(s + sigma Z) Z^T ] / sigma  (Berthet et al., proposition 3.1), so the
            vector-Jacobian product with an upstream g [K, T] is
            grad_s = E_Z[ <g, M*(s + sigma Z)> Z ] / sigma,
            estimated with the forward pass's own draws.

The release (TW-BERT's `PerturbedTopKFunction`) contracts g with the estimator per frame,
sum_k g[k, t] E[M[k, t] Z_t] / sigma, which keeps only the t = t' terms of the outer product above; the test
against finite differences of the smoothed expectation (tests/test_nn_perturbed_topk.py) tells the two apart.
Defaults are the release's: 500 draws, sigma 0.05. Evaluation selects the hard Top-K (deterministic, same
temporal order) unless asked otherwise; the draws come from the caller's key (in training, the step's).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def check_args(num_frames: int, k: int, num_samples: int, sigma: float, what: str = "perturbed Top-K") -> None:
  """Raises ValueError for a selection the operator cannot make (k outside [1, T], no draws, sigma <= 0)."""
  if not 1 <= k <= num_frames:
    raise ValueError(f"{what}: keeping k={k} of {num_frames} frames; expected 1 <= k <= {num_frames}.")
  if num_samples < 1:
    raise ValueError(f"{what}: num_samples={num_samples}; expected at least 1 draw.")
  if not sigma > 0:
    raise ValueError(f"{what}: sigma={sigma}; expected a positive noise scale.")


def hard_topk_indices(scores: jax.Array, k: int) -> jax.Array:
  """scores [..., T] -> the K highest scores' indices [..., K] in ascending (temporal) order."""
  _, idx = jax.lax.top_k(scores, k)
  return jnp.sort(idx, axis=-1)


def hard_topk(scores: jax.Array, k: int) -> jax.Array:
  """scores [..., T] -> one-hot indicators [..., K, T] of the K highest, rows in temporal order."""
  return jax.nn.one_hot(hard_topk_indices(scores, k), scores.shape[-1], dtype=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _perturbed(scores: jax.Array, noise: jax.Array, k: int, sigma: float) -> jax.Array:
  return _perturbed_fwd(scores, noise, k, sigma)[0]


def _perturbed_fwd(scores, noise, k, sigma):
  idx = hard_topk_indices(scores[:, None, :] + sigma * noise, k)  # [B, S, K]
  indicators = jax.nn.one_hot(idx, scores.shape[-1], dtype=jnp.float32).mean(axis=1)  # [B, K, T]
  return indicators, (idx, noise)


def _perturbed_bwd(k, sigma, residuals, g):
  del k
  idx, noise = residuals
  # <g, M*_s> for each draw s: the upstream value at each kept (row, frame) pair, summed over rows.
  picked = jnp.take_along_axis(g[:, None, :, :], idx[..., None], axis=-1)[..., 0]  # [B, S, K]
  weight = picked.sum(axis=-1)  # [B, S]
  grad = jnp.einsum("bs,bst->bt", weight, noise) / (noise.shape[1] * sigma)
  return grad.astype(g.dtype), jnp.zeros_like(noise)


_perturbed.defvjp(_perturbed_fwd, _perturbed_bwd)


def perturbed_topk(scores: jax.Array, k: int, key: jax.Array | None, *, num_samples: int = 500,
                   sigma: float = 0.05, perturbed: bool = True) -> jax.Array:
  """Top-K frame indicators, differentiable in the scores (module docstring).

  Args:
    scores: [B, T] frame scores (any leading shape is flattened into B).
    k: frames kept, 1 <= k <= T.
    key: PRNG key of the draws (needed when `perturbed`).
    num_samples: noise draws per row (500 as released).
    sigma: noise scale (0.05 as released).
    perturbed: False gives the hard Top-K (evaluation); its gradient is zero.

  Returns:
    [B, K, T] float32: each row a distribution over frames (one-hot when hard), rows in temporal order.
  """
  *lead, t = scores.shape
  check_args(t, k, num_samples, sigma)
  flat = scores.reshape(-1, t).astype(jnp.float32)
  if not perturbed:
    out = hard_topk(jax.lax.stop_gradient(flat), k)
  else:
    if key is None:
      raise ValueError("perturbed Top-K needs a PRNG key for its noise draws.")
    noise = jax.random.normal(key, (flat.shape[0], num_samples, t), jnp.float32)
    out = _perturbed(flat, noise, k, float(sigma))
  return out.reshape(*lead, k, t)
