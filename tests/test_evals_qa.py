"""QA accuracy per question kind (answer groups) against a hand count."""
import numpy as np
import pytest

from vlm.evals import qa

ANSWERS = ["left", "right", "red", "yes", "no"]
GROUPS = {"direction": ["left", "right"], "colour": ["red"], "yes/no": ["yes", "no"]}


def test_accuracy_per_answer_group_matches_hand_count():
  gt = np.array([0, 1, 1, 2, 3, 4])
  pred = np.array([0, 0, 1, 2, 4, 4])  # direction 2 of 3 right, colour 1 of 1, yes/no 1 of 2
  scores = np.eye(len(ANSWERS))[pred] + 0.01 * np.arange(len(ANSWERS))[::-1]  # argmax = pred
  out = qa.accuracies(scores, gt, ANSWERS, GROUPS)
  assert out["accuracy"] == pytest.approx(100 * 4 / 6)
  assert out["accuracy/direction"] == pytest.approx(100 * 2 / 3)
  assert out["accuracy/colour"] == pytest.approx(100.0)
  assert out["accuracy/yes/no"] == pytest.approx(50.0)


def test_groups_without_questions_are_left_out():
  out = qa.accuracies(np.eye(5)[[0]], np.array([0]), ANSWERS, GROUPS)
  assert set(out) == {"accuracy", "accuracy/direction"}


def test_question_kinds_take_precedence_over_answer_groups():
  # Two "colour order" questions answered with a colour: by answer they would count as 'colour'.
  gt = np.array([0, 2, 2, 3])
  pred = np.array([0, 2, 1, 4])  # direction right; first order question right, second wrong; yes/no wrong
  kinds = np.array([0, 2, 2, -1])  # the last question has no kind: only in the overall accuracy
  scores = np.eye(len(ANSWERS))[pred]
  out = qa.accuracies(scores, gt, ANSWERS, GROUPS, kinds, ["direction", "colour", "colour order"])
  assert out == pytest.approx({"accuracy": 50.0, "accuracy/direction": 100.0, "accuracy/colour order": 50.0})
  with pytest.raises(ValueError, match="outside the 2 kinds"):
    qa.accuracies(scores, gt, ANSWERS, GROUPS, kinds, ["direction", "colour"])

