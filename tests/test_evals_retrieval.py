"""Re-ranking by a cross-modal matcher (the recall metrics: tests/test_evals_metrics.py)."""
import numpy as np

from vlm.evals import metrics
from vlm.evals import retrieval


def test_rerank_orders_the_top_k_by_the_matcher_and_keeps_the_rest():
  rng = np.random.default_rng(0)
  sim = rng.normal(size=(6, 6))
  np.fill_diagonal(sim, sim.max(axis=1) - 0.1)  # the target is second or lower in every row: R@1 = 0
  calls = []

  def oracle(q, g):  # a matcher that knows the truth
    calls.append(len(q))
    return (q == g).astype(float)

  out = retrieval.rerank(sim, 3, oracle)
  assert calls == [18]  # 6 queries x 3 candidates in one call
  assert metrics.retrieval_metrics(out)["R@1"] == 100.0
  top = np.argsort(-sim, axis=1)[:, :3]
  for i in range(6):
    rest = [j for j in range(6) if j not in top[i]]
    assert out[i, top[i]].min() > out[i, rest].max()  # re-ranked candidates stay above the others
    np.testing.assert_array_equal(out[i, rest], sim[i, rest])  # whose order is the first stage's
  useless = retrieval.rerank(sim, 3, lambda q, g: np.zeros(len(q)))  # a matcher at chance: ties, pessimistic
  assert metrics.retrieval_metrics(useless)["R@1"] == 0.0
