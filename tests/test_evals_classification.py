"""The classification evaluator's metrics (the metric functions themselves: tests/test_evals_metrics.py)."""
import numpy as np

from vlm.evals import classification


def test_metrics_of_view_averaged_scores_carry_the_suffix():
  scores = np.eye(3)[[0, 1, 2, 0]]
  out = classification.Evaluator.metrics(scores, np.array([0, 1, 2, 1]), suffix="_x")
  assert out["top1_x"] == 75.0 and set(out) == {"top1_x", "top5_x", "mAP_x"}
