"""The adaptive max-margin ranking loss against an independent numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.losses import ranking


def _reference(sim: np.ndarray, weight: np.ndarray, margin: float) -> float:
  """The release's flattened form: both directions stacked, the diagonal dropped, one mean."""
  n = len(sim)
  terms = []
  for i in range(n):
    for j in range(n):
      if i != j:
        terms.append(max(0.0, weight[i] * margin - (sim[i, i] - sim[i, j])))
  for i in range(n):
    for j in range(n):
      if i != j:
        terms.append(max(0.0, weight[i] * margin - (sim[i, i] - sim[j, i])))
  return float(np.mean(terms))


@pytest.mark.parametrize("margin", [0.4, 0.1])
def test_matches_reference_with_weights(margin):
  rng = np.random.default_rng(0)
  sim = rng.uniform(-1, 1, (6, 6))
  weight = rng.uniform(0, 1, 6)
  loss, ex = ranking.max_margin_ranking_loss(jnp.asarray(sim), jnp.asarray(weight), margin=margin)
  np.testing.assert_allclose(float(loss), _reference(sim, weight, margin), rtol=1e-5)
  assert 0 < float(ex["violations"]) <= 1


def test_separated_pairs_cost_nothing_and_gradient_pushes_apart():
  sim = np.full((4, 4), -0.5) + np.eye(4) * 1.0  # matched 0.5, others -0.5: margin 0.4 satisfied
  loss, ex = ranking.max_margin_ranking_loss(jnp.asarray(sim))
  assert float(loss) == 0 and float(ex["top1"]) == 1
  close = jnp.asarray(np.eye(3) * 0.1)  # matched 0.1, others 0: every term violates
  grad = jax.grad(lambda s: ranking.max_margin_ranking_loss(s)[0])(close)
  assert np.all(np.diag(grad) < 0)  # raising the match lowers the loss
  assert np.all(np.asarray(grad)[~np.eye(3, dtype=bool)] > 0)  # raising a negative raises it


def test_zero_weight_rows_have_no_margin():
  sim = jnp.zeros((3, 3))  # all equal: a margin > 0 is violated, a zero margin is not
  loss, _ = ranking.max_margin_ranking_loss(sim, jnp.zeros(3))
  assert float(loss) == 0


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match="square"):
    ranking.max_margin_ranking_loss(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="weight"):
    ranking.max_margin_ranking_loss(jnp.zeros((3, 3)), jnp.ones(2))
  with pytest.raises(ValueError, match="at least 2"):
    ranking.max_margin_ranking_loss(jnp.zeros((1, 1)))
