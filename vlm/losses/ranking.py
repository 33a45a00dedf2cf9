"""Max-margin ranking loss with per-pair margins (EgoVLP / HierVL's EPIC-KITCHENS-100 MIR fine-tuning).

With S [N, N] the cosine similarities of N texts (rows) and their N videos (columns), pair i matched at S_ii and
w_i the semantic relevance of that training pair (1 for a clip and its own narration; less when the caption was
drawn from other relevant clips'), the loss is the hinge on both directions over every off-diagonal entry:

  L = 1 / (2 N (N - 1)) * sum_i sum_{j != i} [ relu(w_i m - (S_ii - S_ij)) + relu(w_i m - (S_ii - S_ji)) ]

with margin m (0.4 in the release's configs/ft/epic.json). The weights scale each row's margin (the release's
`AdaptiveMaxMarginRankingLoss`, whose `fix_norm` drops the diagonal terms before averaging, as here). Negatives are
the whole batch passed in: under `jit` on global arrays, the global batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def max_margin_ranking_loss(sim: jax.Array, weight: jax.Array | None = None, *, margin: float = 0.4
                            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The adaptive max-margin ranking loss of the module docstring.

  Args:
    sim: [N, N] text x video similarities; (row i, column i) is a matched pair.
    weight: optional [N] relevance of each matched pair (scales its margin); None: all 1.
    margin: m.

  Returns:
    (loss, extras): scalar; extras 'violations' (the fraction of the 2N(N-1) hinge terms that are positive) and
    'top1' (rows whose own column scores highest, ties counted wrong).
  """
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f"max_margin_ranking_loss: expected a square [N, N] similarity matrix, got {sim.shape}.")
  n = sim.shape[0]
  if n < 2:
    raise ValueError("max_margin_ranking_loss needs at least 2 pairs (the negatives are the batch's others).")
  sim = sim.astype(jnp.float32)
  w = jnp.ones((n,), jnp.float32) if weight is None else jnp.asarray(weight, jnp.float32).reshape(-1)
  if w.shape != (n,):
    raise ValueError(f"max_margin_ranking_loss: weight must have shape ({n},), got {w.shape}.")
  diag = jnp.diagonal(sim)[:, None]  # [N, 1]
  m = (w * margin)[:, None]
  off = 1.0 - jnp.eye(n, dtype=jnp.float32)
  rows = jax.nn.relu(m - (diag - sim)) * off  # text i against the other videos
  cols = jax.nn.relu(m - (diag - sim.T)) * off  # video i against the other texts
  count = 2.0 * n * (n - 1)
  loss = (rows.sum() + cols.sum()) / count
  violations = (jnp.sum((rows > 0) * off) + jnp.sum((cols > 0) * off)) / count
  others = jnp.where(off > 0, sim, -jnp.inf).max(axis=1)
  top1 = jnp.mean(jnp.diagonal(sim) > others)
  return loss, {"violations": violations, "top1": top1}
