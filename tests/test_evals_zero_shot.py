"""Zero-shot classification by prompts (Charades-Ego) and graded-relevance retrieval (EPIC-KITCHENS MIR): their
metrics by hand, and both evaluators end to end on the tiny HierVL configs' built-in data."""
import os

import jax
import ml_collections
import numpy as np
import pytest

from vlm import config_lib
from vlm.evals import retrieval
from vlm.evals import zero_shot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_zero_shot_metrics_hand_computed():
  scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.6], [0.3, 0.2, 0.1]])
  targets = np.eye(3, dtype=bool)[[0, 1, 2]]
  m = zero_shot.zero_shot_metrics(scores, targets)
  assert m["top1"] == pytest.approx(100 / 3)  # only example 0's class scores highest
  assert m["top5"] == 100.0
  # Per class (column): class 0's positive (0.9) ranks first -> AP 1; class 1's (0.5) first -> 1; class 2's
  # (0.1) second, below example 1's 0.6 -> 1/2.
  assert m["mAP"] == pytest.approx(100 * (1 + 1 + 1 / 2) / 3)
  assert m["chance_mAP"] == pytest.approx(100 / 3)  # a video-blind scorer: each class's positive rate


def test_prompts_and_targets_are_checked():
  assert zero_shot.prompts(["circle moving left"], "a video of {}") == ["a video of circle moving left"]
  with pytest.raises(ValueError, match="template"):
    zero_shot.prompts(["x"], "no slot")
  assert zero_shot.targets_from({"label": np.array([2, 0])}, 3).tolist() == [[0, 0, 1], [1, 0, 0]]
  with pytest.raises(ValueError, match="outside"):
    zero_shot.targets_from({"label": np.array([3])}, 3)
  with pytest.raises(KeyError, match="label"):
    zero_shot.targets_from({}, 3)


def _tiny(name: str, tmp_path):
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, f"configs/hiervl/{name}.py:tiny"))
  options = dict(data_dir=str(tmp_path), num_train=8, num_test=48, num_images=0, num_frames=4, fps=10.0,
                 sample_rate=1000, episode_len=4, num_shards=1)
  evals = next(iter(config.evals.values()))
  with config.unlocked():
    evals.input.data = dict(name="builtin", split="test", options=options)
  task = trainer.build_task(config)
  setup = trainer.setup_mesh(config)
  variables = {"params": task.init_variables(jax.random.key(0), task.dummy_batch(2))["params"]}
  return config, evals, task, setup.mesh, variables


def test_zero_shot_evaluator_on_builtin_classes(tmp_path):
  config, evals, task, mesh, variables = _tiny("charades_ego", tmp_path)
  m = zero_shot.Evaluator(config, evals, task, mesh).run(variables, step=0)
  assert m["num_examples"] == 48 and m["num_classes"] == 12
  assert 0 <= m["mAP"] <= 100 and 0 <= m["top1"] <= m["top5"] <= 100
  with pytest.raises(ValueError, match="template"):
    zero_shot.Evaluator(config, ml_collections.ConfigDict(dict(evals.to_dict(), prompt="x")), task, mesh)


def test_retrieval_with_graded_relevance_on_builtin_narrations(tmp_path):
  config, evals, task, mesh, variables = _tiny("epic_mir", tmp_path)
  m = retrieval.Evaluator(config, evals, task, mesh).run(variables, step=0)
  for key in ("t2v_mAP", "v2t_mAP", "mAP", "t2v_nDCG", "v2t_nDCG", "nDCG", "chance_mAP", "chance_nDCG"):
    assert 0 <= m[key] <= 100, key
  assert m["mAP"] == pytest.approx((m["t2v_mAP"] + m["v2t_mAP"]) / 2)
  assert m["num_queries"] <= m["num_pairs"] == 48  # unique narrations query
  with pytest.raises(ValueError, match="relevance"):
    retrieval.Evaluator(config, ml_collections.ConfigDict(dict(evals.to_dict(), relevance="iou")), task, mesh)
