"""The frame_selection evaluator's figures (vlm/evals/frame_selection.py) on hand-made cases, and the `first` op."""
import numpy as np
import tensorflow as tf

from vlm.data import pp
from vlm.evals import frame_selection


def test_selection_metrics_count_kept_frames_inside_partial_events():
  frame_index = np.array([[0, 2, 4, 6], [0, 2, 4, 6], [0, 2, 4, 6]])  # 4 of 8 record frames
  start, end = np.array([2, 0, 0]), np.array([5, 8, 4])  # clip 1: no event (the whole clip)
  selected = np.array([[1, 2], [0, 3], [0, 3]])  # clip 0: frames 2, 4 (both inside); clip 2: 0 in, 6 out
  m = frame_selection.selection_metrics(selected, frame_index, start, end)
  assert m["num_event_clips"] == 2.0
  np.testing.assert_allclose(m["in_event"], 100 * 3 / 4)
  np.testing.assert_allclose(m["chance_in_event"], 100 * (2 / 4 + 2 / 4) / 2)
  none = frame_selection.selection_metrics(selected[1:2], frame_index[1:2], start[1:2], end[1:2])
  assert none["num_event_clips"] == 0.0


def test_entropy_in_bits_over_valid_words():
  uniform = np.full((1, 1, 1, 2, 4), 0.25)
  peaked = np.zeros((1, 1, 1, 2, 4))
  peaked[..., 0] = 1.0
  weights = np.concatenate([uniform, peaked], axis=3)  # words 0, 1 uniform (2 bits), 2, 3 one-hot (0 bits)
  np.testing.assert_allclose(frame_selection.frame_entropy_bits(weights, np.array([[1, 1, 1, 1]])), 1.0)
  np.testing.assert_allclose(frame_selection.frame_entropy_bits(weights, np.array([[1, 1, 0, 0]])), 2.0)


def test_first_takes_the_first_element_or_the_default():
  op = pp.get_op("first")("a", "b")
  out = op({"a": tf.constant([3, 4]), "b": tf.zeros([0], tf.int64), "c": tf.constant([1])})
  assert int(out["a"]) == 3 and int(out["b"]) == -1 and out["a"].shape == () and out["c"].shape == (1,)
