"""The shared metric code against brute-force and hand-computed references: top-k, mAP, retrieval ranks, the
shuffled-frame probe's orders and paired drop, and the L2 normalisation the evaluators use."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm.evals import frame_shuffle
from vlm.evals import metrics
from vlm.losses import contrastive


def test_topk_matches_brute_force_with_pessimistic_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(200, 6)).astype(float)  # many ties
  label = rng.integers(0, 6, size=200)
  for k in (1, 3, 5):
    want = np.mean([(scores[i] >= scores[i, label[i]]).sum() <= k for i in range(200)]) * 100
    assert metrics.topk_accuracy(scores, label, k) == want


def _ap_by_sorting(s, y):
  order = np.argsort(-s, kind="stable")
  y = y[order]
  hits = np.cumsum(y)
  return np.sum((hits / np.arange(1, len(y) + 1))[y > 0]) / y.sum()


def test_map_matches_sorted_reference_without_ties_and_skips_empty_classes():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(50, 5))
  targets = (rng.random((50, 5)) < 0.3).astype(int)
  targets[:, 4] = 0  # no positives: left out
  want = 100 * np.mean([_ap_by_sorting(scores[:, c], targets[:, c]) for c in range(4)])
  np.testing.assert_allclose(metrics.mean_average_precision(scores, targets), want, rtol=1e-9)
  perfect = metrics.mean_average_precision(targets[:, :4] + 0.0, targets[:, :4])
  assert perfect == 100.0


def test_frame_permutations_shuffle_every_clip_and_permute_frames_applies_them():
  perms = frame_shuffle.frame_permutations(np.random.default_rng(0), (64, 3), 4)
  assert perms.shape == (64, 3, 4) and perms.dtype == np.int32
  flat = perms.reshape(-1, 4)
  assert all(sorted(p) == [0, 1, 2, 3] and list(p) != [0, 1, 2, 3] for p in flat)
  # Every clip draws its own order: with 23 non-identity orders of 4 frames, 192 draws cover most of them.
  assert len({tuple(p) for p in flat}) >= 20
  np.testing.assert_array_equal(perms, frame_shuffle.frame_permutations(np.random.default_rng(0), (64, 3), 4))
  assert frame_shuffle.frame_permutations(np.random.default_rng(0), (5, 1), 1).tolist() == [[[0]]] * 5
  cfg = ml_collections.ConfigDict({"shuffle_seed": 0})
  in_order = frame_shuffle.frame_orders(cfg, shuffle=False)((2, 3, 4, 8, 8, 3))
  np.testing.assert_array_equal(in_order, np.broadcast_to(np.arange(4), (2, 3, 4)))
  stream = frame_shuffle.frame_orders(cfg, shuffle=True)  # seeded: the same orders as the generator it wraps
  np.testing.assert_array_equal(stream((64, 3, 4)), perms)
  assert not np.array_equal(stream((64, 3, 4)), perms)  # the next batch draws fresh orders
  # permute_frames puts frame perm[b, v, i] at position i of clip (b, v).
  video = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4, 1, 1, 1) * jnp.ones((1, 1, 1, 2, 2, 3))
  perm = frame_shuffle.frame_permutations(np.random.default_rng(1), (2, 3), 4)
  out = np.asarray(frame_shuffle.permute_frames(video, jnp.asarray(perm)))
  for b in range(2):
    for v in range(3):
      np.testing.assert_array_equal(out[b, v, :, 0, 0, 0], (b * 3 + v) * 4 + perm[b, v])


def test_ranks_and_recalls_match_hand_computation():
  # Row i is a text query, column i its video. Query 0: target best (rank 0). Query 1: one distractor above
  # (rank 1). Query 2: two distractors above (rank 2).
  sim = np.array([[0.9, 0.1, 0.2],
                  [0.8, 0.5, 0.1],
                  [0.7, 0.6, 0.3]])
  np.testing.assert_array_equal(metrics.ranks_from_similarity(sim), [0, 1, 2])
  m = metrics.retrieval_metrics(sim)
  assert m["R@1"] == pytest.approx(100 / 3)
  assert m["R@5"] == 100.0
  assert m["MedR"] == 2.0
  assert m["MeanR"] == 2.0


def test_ties_are_pessimistic_so_collapsed_embeddings_score_at_chance():
  sim = np.ones((50, 50))
  m = metrics.retrieval_metrics(sim)
  assert m["R@1"] == 0.0
  assert m["MedR"] == 50.0


def test_random_embeddings_near_chance_and_identity_perfect():
  rng = np.random.default_rng(0)
  x = contrastive.l2_normalize(rng.normal(size=(200, 16)))
  y = contrastive.l2_normalize(rng.normal(size=(200, 16)))
  assert metrics.retrieval_metrics(x @ y.T)["R@1"] < 5.0
  assert metrics.retrieval_metrics(x @ x.T)["R@1"] == 100.0


def test_rejects_non_square():
  with pytest.raises(ValueError, match="square"):
    metrics.ranks_from_similarity(np.zeros((2, 3)))


def test_shuffle_drop_standard_error_matches_the_discordant_pair_formula():
  # For paired 0/1 outcomes the drop is (b - c) / n and the sample variance of the differences is
  # ((b + c) - (b - c)^2 / n) / (n - 1), b = right only in order, c = right only shuffled.
  rng = np.random.default_rng(0)
  plain, shuffled = rng.random(300) < 0.6, rng.random(300) < 0.5
  b, c, n = np.sum(plain & ~shuffled), np.sum(~plain & shuffled), 300
  drop, se = frame_shuffle.paired_drop(plain, shuffled)
  assert drop == pytest.approx(100 * (b - c) / n)
  assert se == pytest.approx(100 * np.sqrt(((b + c) - (b - c) ** 2 / n) / (n - 1) / n))
  assert frame_shuffle.paired_drop(plain, plain) == (0.0, 0.0)  # a model blind to order: no drop, no spread
  with pytest.raises(ValueError, match="same examples"):
    frame_shuffle.paired_drop(plain, shuffled[:10])


# ------------------------------------------------------------------ graded relevance (EPIC-KITCHENS-100 MIR)


def test_tag_relevance_is_the_mean_of_verb_and_noun_iou():
  nouns = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
  verbs = np.array([[1, 0], [1, 0], [0, 1]])
  rel = metrics.tag_relevance(nouns, verbs, nouns, verbs)
  # (0, 1): verbs equal (IoU 1), nouns {0} vs {0, 1} (IoU 1/2) -> 3/4; (0, 2): nothing shared -> 0.
  np.testing.assert_allclose(rel, [[1, 0.75, 0], [0.75, 1, 0], [0, 0, 1]])
  assert metrics.tag_relevance(np.zeros((1, 3)), np.zeros((1, 2)), nouns, verbs).max() == 0  # empty union: 0


def test_relevance_map_and_ndcg_hand_computed():
  # One query: the first-ranked item is irrelevant, the second fully relevant, the third half relevant.
  sim, rel = np.array([[0.9, 0.8, 0.1]]), np.array([[0.0, 1.0, 0.5]])
  m = metrics.relevance_metrics(sim, rel)
  assert m["mAP"] == pytest.approx(50.0)  # one relevant item, at rank 2
  # k = 2 relevant items: DCG = 0 / log2(2) + 1 / log2(3); ideal = 1 / log2(2) + 0.5 / log2(3).
  assert m["nDCG"] == pytest.approx(100 * (1 / np.log2(3)) / (1 + 0.5 / np.log2(3)))
  perfect = metrics.relevance_metrics(np.array([[0.1, 0.9, 0.5]]), rel)
  assert perfect == pytest.approx({"mAP": 100.0, "nDCG": 100.0})
  # Ties are pessimistic: an equal score puts the irrelevant item first.
  tie = metrics.relevance_metrics(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]]))
  assert tie == pytest.approx({"mAP": 50.0, "nDCG": 0.0})


def _reference_map(sim, rel):
  """EPIC's formula by argsort (no ties in the inputs): sum_k p(k) rel(k) / #relevant, rel(k) = [rel == 1]."""
  out = []
  for s, r in zip(sim, rel):
    r = r[np.argsort(-s)] == 1
    if r.any():
      out.append(np.sum(np.cumsum(r)[r] / (np.flatnonzero(r) + 1)) / r.sum())
  return 100 * np.mean(out)


def _reference_ndcg(sim, rel):
  out = []
  for s, r in zip(sim, rel):
    k = int((r > 0).sum())
    if k:
      disc = np.log2(np.arange(k) + 2)
      out.append(np.sum(r[np.argsort(-s)][:k] / disc) / np.sum(np.sort(r)[::-1][:k] / disc))
  return 100 * np.mean(out)


def test_relevance_metrics_match_sorted_references_on_random_rankings():
  rng = np.random.default_rng(3)
  nouns = np.eye(4)[rng.integers(0, 4, 40)]
  verbs = np.eye(3)[rng.integers(0, 3, 40)]
  rel = metrics.tag_relevance(nouns, verbs, nouns, verbs)
  sim = rng.normal(size=(40, 40)) + 2 * rel  # informative but imperfect
  m = metrics.relevance_metrics(sim, rel)
  assert m["mAP"] == pytest.approx(_reference_map(sim, rel))
  assert m["nDCG"] == pytest.approx(_reference_ndcg(sim, rel))
  blind = metrics.relevance_metrics(np.zeros_like(sim), rel)
  assert blind["mAP"] < m["mAP"] and blind["nDCG"] < m["nDCG"]
  with pytest.raises(ValueError, match="one shape"):
    metrics.relevance_metrics(sim, rel[:3])
