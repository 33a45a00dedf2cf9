"""The side-by-side harness against HF transformers' PyTorch twin, on tiny shapes: both steps run and train, and
both sides count the same work."""
import jax
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from vlm.tools import peer_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = dict(num_layers=2, hidden_size=64, mlp_dim=128, num_heads=2, patch_size=8)


def test_timesformer_twin_runs_and_counts_the_same_flops():
  r = peer_bench.compare(sizes=TINY, frames=2, image_size=32, batch=2, steps=2, warmup=1, threads=1)
  assert r["tokens"] == 1 + 2 * 16
  assert r["ours_step_seconds_median"] > 0 and r["peer_step_seconds_median"] > 0
  assert r["speedup_peer_over_ours"] == pytest.approx(r["peer_step_seconds_median"] / r["ours_step_seconds_median"])
  # XLA also counts norms, softmax and the update; torch's counter only the matmuls, which dominate.
  assert 0.6 < r["flops_ratio_peer_over_ours"] <= 1.05, r


def test_steps_update_the_weights_on_both_sides():
  ours = peer_bench.OurStep(TINY, 2, 32, 1)
  peer = peer_bench.PeerStep(TINY, 2, 32, 1, threads=1)
  before_ours = [x.copy() for x in jax.tree_util.tree_leaves(jax.device_get(ours.state[0]))]
  before_peer = [p.detach().clone() for p in peer.model.parameters()]
  ours(), peer()
  after_ours = jax.tree_util.tree_leaves(jax.device_get(ours.state[0]))
  assert any((a != b).any() for a, b in zip(before_ours, after_ours))
  assert any((a != b).any() for a, b in zip(before_peer, peer.model.parameters()))
