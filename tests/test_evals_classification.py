"""Classification metrics against brute-force references, view averaging and the frame shuffle."""
import jax.numpy as jnp
import ml_collections
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


def test_frame_permutations_shuffle_every_clip_and_metrics_suffix():
  perms = classification.frame_permutations(np.random.default_rng(0), (64, 3), 4)
  assert perms.shape == (64, 3, 4) and perms.dtype == np.int32
  flat = perms.reshape(-1, 4)
  assert all(sorted(p) == [0, 1, 2, 3] and list(p) != [0, 1, 2, 3] for p in flat)
  # Every clip draws its own order: with 23 non-identity orders of 4 frames, 192 draws cover most of them.
  assert len({tuple(p) for p in flat}) >= 20
  np.testing.assert_array_equal(perms, classification.frame_permutations(np.random.default_rng(0), (64, 3), 4))
  assert classification.frame_permutations(np.random.default_rng(0), (5, 1), 1).tolist() == [[[0]]] * 5
  cfg = ml_collections.ConfigDict({"shuffle_seed": 0})
  in_order = classification.frame_orders(cfg, shuffle=False)((2, 3, 4, 8, 8, 3))
  np.testing.assert_array_equal(in_order, np.broadcast_to(np.arange(4), (2, 3, 4)))
  stream = classification.frame_orders(cfg, shuffle=True)  # seeded: the same orders as the generator it wraps
  np.testing.assert_array_equal(stream((64, 3, 4)), perms)
  assert not np.array_equal(stream((64, 3, 4)), perms)  # the next batch draws fresh orders
  # permute_frames puts frame perm[b, v, i] at position i of clip (b, v).
  video = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4, 1, 1, 1) * jnp.ones((1, 1, 1, 2, 2, 3))
  perm = classification.frame_permutations(np.random.default_rng(1), (2, 3), 4)
  out = np.asarray(classification.permute_frames(video, jnp.asarray(perm)))
  for b in range(2):
    for v in range(3):
      np.testing.assert_array_equal(out[b, v, :, 0, 0, 0], (b * 3 + v) * 4 + perm[b, v])
  scores = np.eye(3)[[0, 1, 2, 0]]
  out = classification.Evaluator.metrics(scores, np.array([0, 1, 2, 1]), suffix="_x")
  assert out["top1_x"] == 75.0 and set(out) == {"top1_x", "top5_x", "mAP_x"}
