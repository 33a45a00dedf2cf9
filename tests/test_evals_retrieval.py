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
