"""inspect and bench on small configs: counts add up, FLOPs are positive, MFU is a ratio of measured figures."""
import os

import numpy as np
import pytest

from vlm import config_lib
from vlm.tools import bench
from vlm.tools import inspect as inspect_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inspect_tiny_vatt():
  config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/pretrain.py:tiny"))
  report = inspect_tool.inspect(config, with_flops=False)
  assert set(report["params_per_tower"]) == {"video", "audio", "text", "head"}
  assert sum(report["params_per_tower"].values()) == report["params_total"]
  assert report["tokens_per_modality"]["video"] == 4 * 4 * 4  # 8x32x32 frames, 2x8x8 tubelets
  assert report["tokens_per_modality"]["video_after_droptoken"] == 32
  info = report["param_sharding"]["video/tokenizer/conv/kernel"]
  assert info["shape"] == (2, 8, 8, 3, 64) and info["spec"] == "P(None, None, None, None, None)"


def test_inspect_flops_and_bench_on_toy_task():
  config = config_lib.load_config(os.path.join(ROOT, "tests/toy_task.py:steps=3,evals=false"))
  report = inspect_tool.inspect(config)
  # Toy model: Dense 16 -> 32, ReLU, Dense 32 -> 4. Its two matmuls are 2 (16 * 32 + 32 * 4) = 1280 FLOPs per
  # example; normalisation, softmax and loss add a few hundred. On the 8-device mesh XLA's cost analysis sees one
  # device's share, which inspect scales back up (it read 1/8 of this before).
  assert 1280 <= report["forward_flops_per_example"] <= 3 * 1280, report["forward_flops_per_example"]
  assert report["train_step_flops_per_example"] > 2 * report["forward_flops_per_example"]
  result = bench.bench(config, steps=5, warmup=1)
  # The whole step, not one device's eighth: at least the forward and input-side backward matmuls of 16 examples.
  assert result["model_flops_per_step"] >= config.input.batch_size * 2 * 1280
  assert len(result["step_seconds_all"]) == 5
  assert result["model_flops_per_step"] > 0 and result["peak_flops_per_s"] > 0
  # MFU pairs each step with the peak read right after it; the conservative figure uses the best peak read.
  assert len(result["peak_flops_per_s_all"]) == 5
  # The step runs on every device of the mesh (8 here): FLOPs are the whole step's, the peak is one device's.
  assert result["devices"] == 8
  per_step = [result["model_flops_per_step"] / t / (8 * p)
              for t, p in zip(result["step_seconds_all"], result["peak_flops_per_s_all"])]
  np.testing.assert_allclose(result["mfu"], np.median(per_step), rtol=1e-6)
  np.testing.assert_allclose(result["mfu_vs_best_peak"], result["model_flops_per_step"]
                             / result["step_seconds_median"] / (8 * max(result["peak_flops_per_s_all"])), rtol=1e-6)
  assert result["mfu_vs_best_peak"] <= max(per_step) + 1e-12
  assert result["examples_per_s"] == config.input.batch_size / result["step_seconds_median"]
  # A baseline doing twice the FLOPs in three times the time: 2x FLOPs, 3x time, 1.5x better than the FLOPs say.
  slower = dict(result, model_flops_per_step=2 * result["model_flops_per_step"],
                step_seconds_median=3 * result["step_seconds_median"])
  ratios = bench.compare(result, slower)
  np.testing.assert_allclose([ratios["flops_ratio"], ratios["step_time_ratio"], ratios["speedup_vs_flops_ideal"]],
                             [2.0, 3.0, 1.5])


def test_bench_attention_ratios():
  from vlm.tools import bench_attention  # pylint: disable=g-import-not-at-top
  r = bench_attention.run(tokens=24, batch=1, heads=1, head_dim=8, block_size=6, local_blocks=1, random_blocks=1,
                          steps=5)
  assert r["dense_edges"] == 25 * 25 and r["sparse_edges"] == 24 * (1 + 12) + 25
  np.testing.assert_allclose(r["edge_ratio"], 625 / 337)
  np.testing.assert_allclose(r["efficiency"], r["dense_seconds"] / r["block_sparse_seconds"] / r["edge_ratio"])
  for name in ("dense", "block_sparse"):  # process CPU time / wall time: some of one core, at most every core
    assert 0.0 < r[f"{name}_cores_busy"] <= os.cpu_count() + 0.5, r


def test_frame_probe_accuracy_reads_linear_labels_and_not_random_ones():
  from vlm.tools import frame_probe  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = rng.integers(4, size=800)
  x = rng.normal(size=(4, 16))[labels] + 0.5 * rng.normal(size=(800, 16))  # 4 linearly separable clusters
  clips = np.repeat(np.arange(100), 8)
  assert frame_probe.probe_accuracy(x, labels, clips) > 0.9
  assert frame_probe.probe_accuracy(x, rng.permutation(labels), clips) < 0.4  # chance 0.25
  with pytest.raises(ValueError, match="two clips"):
    frame_probe.probe_accuracy(x, labels, np.zeros(800, int))


@pytest.mark.parametrize("absolute", [True, False])
def test_frame_probe_sees_the_frame_only_through_absolute_positions(absolute):
  # At initialisation the relative position biases are zero, so without an absolute table the tokens of the same
  # patch in different frames differ only by content: the frame index is at chance; a random absolute table
  # (one entry per space-time token) makes it linearly readable.
  from vlm.tools import frame_probe  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, "configs/svitt/pretrain.py:tiny"))
  config.input.data.options = dict(num_train=64, num_test=32, num_images=64, num_frames=16, sample_rate=16_000)
  config.model.vision_layers, config.model.text_layers, config.model.fusion_layers = 1, 1, 1
  config.model.visual_prune_after = ()
  config.model.absolute_positions = absolute
  config.evals.retrieval.input.batch_size = 32
  r = frame_probe.frame_probe(config, None, batches=1)
  assert r["checkpoint"] == "initialisation" and r["frames"] == 4 and r["clips"] == 32
  assert (r["frame_probe_accuracy"] > 0.6) if absolute else (r["frame_probe_accuracy"] < 0.4), r


def test_tsne_keeps_clusters_apart_and_matches_the_perplexity():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vlm.tools import tsne  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 5, (3, 10))
  labels = np.repeat(np.arange(3), 30)
  x = centres[labels] + rng.normal(0, 1, (90, 10))
  p = tsne.joint_probabilities(x, 10.0)
  assert np.isclose(p.sum(), 1.0) and np.allclose(p, p.T)
  y = tsne.embed(x, perplexity=10.0, steps=300, seed=0)
  d = ((y[:, None] - y[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  assert (labels[d.argmin(1)] == labels).mean() > 0.95  # each point's nearest map neighbour is in its cluster
  within = np.mean([d[i, labels == labels[i]][np.isfinite(d[i, labels == labels[i]])].mean() for i in range(90)])
  between = np.mean([d[i, labels != labels[i]].mean() for i in range(90)])
  assert between > 4 * within
