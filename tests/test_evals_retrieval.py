"""Retrieval metrics against hand-computed ranks."""
import numpy as np
import pytest

from vlm.evals import retrieval


def test_ranks_and_recalls_match_hand_computation():
  # Row i is a text query, column i its video. Query 0: target best (rank 0). Query 1: one distractor above
  # (rank 1). Query 2: two distractors above (rank 2).
  sim = np.array([[0.9, 0.1, 0.2],
                  [0.8, 0.5, 0.1],
                  [0.7, 0.6, 0.3]])
  np.testing.assert_array_equal(retrieval.ranks_from_similarity(sim), [0, 1, 2])
  m = retrieval.retrieval_metrics(sim)
  assert m["R@1"] == pytest.approx(100 / 3)
  assert m["R@5"] == 100.0
  assert m["MedR"] == 2.0
  assert m["MeanR"] == 2.0


def test_ties_are_pessimistic_so_collapsed_embeddings_score_at_chance():
  sim = np.ones((50, 50))
  m = retrieval.retrieval_metrics(sim)
  assert m["R@1"] == 0.0
  assert m["MedR"] == 50.0


def test_random_embeddings_near_chance_and_identity_perfect():
  rng = np.random.default_rng(0)
  x = retrieval.l2_normalize(rng.normal(size=(200, 16)))
  y = retrieval.l2_normalize(rng.normal(size=(200, 16)))
  assert retrieval.retrieval_metrics(x @ y.T)["R@1"] < 5.0
  assert retrieval.retrieval_metrics(x @ x.T)["R@1"] == 100.0


def test_rejects_non_square():
  with pytest.raises(ValueError, match="square"):
    retrieval.ranks_from_similarity(np.zeros((2, 3)))


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
  assert retrieval.retrieval_metrics(out)["R@1"] == 100.0
  top = np.argsort(-sim, axis=1)[:, :3]
  for i in range(6):
    rest = [j for j in range(6) if j not in top[i]]
    assert out[i, top[i]].min() > out[i, rest].max()  # re-ranked candidates stay above the others
    np.testing.assert_array_equal(out[i, rest], sim[i, rest])  # whose order is the first stage's
  useless = retrieval.rerank(sim, 3, lambda q, g: np.zeros(len(q)))  # a matcher at chance: ties, pessimistic
  assert retrieval.retrieval_metrics(useless)["R@1"] == 0.0
