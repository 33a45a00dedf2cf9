"""Classification metrics against brute-force references, view averaging and the frame shuffle."""
import numpy as np

from vlm.evals import classification


def test_topk_matches_brute_force_with_pessimistic_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(200, 6)).astype(float)  # many ties
  label = rng.integers(0, 6, size=200)
  for k in (1, 3, 5):
    want = np.mean([(scores[i] >= scores[i, label[i]]).sum() <= k for i in range(200)]) * 100
    assert classification.topk_accuracy(scores, label, k) == want


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
  np.testing.assert_allclose(classification.mean_average_precision(scores, targets), want, rtol=1e-9)
  perfect = classification.mean_average_precision(targets[:, :4] + 0.0, targets[:, :4])
  assert perfect == 100.0


def test_frame_permutations_shuffle_every_view_and_metrics_suffix():
  perms = classification.frame_permutations(12, 8, seed=0)
  assert perms.shape == (12, 8)
  assert all(sorted(p) == list(range(8)) and list(p) != list(range(8)) for p in perms)
  np.testing.assert_array_equal(perms, classification.frame_permutations(12, 8, seed=0))
  scores = np.eye(3)[[0, 1, 2, 0]]
  out = classification.Evaluator.metrics(scores, np.array([0, 1, 2, 1]), suffix="_x")
  assert out["top1_x"] == 75.0 and set(out) == {"top1_x", "top5_x", "mAP_x"}
