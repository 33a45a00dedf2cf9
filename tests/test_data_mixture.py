"""Dataset mixtures: weights, determinism, resume state, validation errors."""
import ml_collections
import numpy as np
import pytest

from vlm.data import mixture


class _Counter:
  """A fake per-dataset iterator: batch i holds the value start + i."""

  def __init__(self, start=0):
    self.i = start

  def __next__(self):
    self.i += 1
    return {"x": np.full((4,), self.i - 1)}

  def get_state(self):
    return {"i": self.i}


def test_weights_determinism_and_resume():
  make = lambda state=None: mixture.MixtureIterator(
      {"a": _Counter((state or {}).get("a", 0)), "b": _Counter((state or {}).get("b", 0))},
      {"a": 3.0, "b": 1.0}, seed=5, step=(state or {}).get("step", 0))
  it = make()
  batches = [next(it) for _ in range(400)]
  picks = np.array([b["dataset"][0] for b in batches])
  assert abs((picks == 0).mean() - 0.75) < 0.07
  assert all((b["dataset"] == b["dataset"][0]).all() for b in batches)
  again = make()
  assert [next(again)["dataset"][0] for _ in range(400)].count(0) == (picks == 0).sum()
  # Resume after 10 batches: the next batches equal the uninterrupted run's.
  it = make()
  for _ in range(10):
    next(it)
  state = it.get_state()
  resumed = make({"step": state["step"], "a": state["datasets"]["a"]["i"], "b": state["datasets"]["b"]["i"]})
  for want in batches[10:30]:
    got = next(resumed)
    assert got["dataset"][0] == want["dataset"][0] and (got["x"] == want["x"]).all()


def _config(mix):
  return ml_collections.ConfigDict(dict(seed=0, input=dict(batch_size=4, data=dict(name="builtin"), mixture=mix)))


def test_dataset_config_merges_overrides_and_names_follow_mixture_order():
  c = _config({"videos": dict(weight=1.0, data=dict(split="train"), num_frames=8),
               "images": dict(weight=2.0, data=dict(split="train_images"), num_frames=1)})
  assert mixture.mixture_names(c) == ["images", "videos"]
  sub = mixture.dataset_config(c, "images")
  assert sub.input.num_frames == 1 and sub.input.data.split == "train_images" and sub.input.data.name == "builtin"
  assert "mixture" not in sub.input


@pytest.mark.parametrize("mix,match", [
    ({"a": dict(weight=0.0, data=dict(split="x"))}, r"mixture\['a'\].weight = 0.0"),
    ({"a": dict(weight="1", data=dict(split="x"))}, "expected a number > 0"),
    ({"a": dict(weight=1.0)}, r"mixture\['a'\] has a weight but no dataset"),
    ({}, "mixture is empty"),
])
def test_validation_errors(mix, match):
  with pytest.raises(ValueError, match=match):
    mixture.mixture_names(_config(mix))


def test_duplicate_names_are_errors():
  c = ml_collections.ConfigDict(dict(seed=0, input=dict(batch_size=4, mixture=[
      dict(name="a", weight=1.0, data=dict(split="x")), dict(name="a", weight=1.0, data=dict(split="y"))])))
  with pytest.raises(ValueError, match="'a' appears twice"):
    mixture.mixture_names(c)


def test_cycle_schedule_is_a_fixed_pattern_that_resumes():
  make = lambda step=0, a=0, b=0: mixture.MixtureIterator({"clips": _Counter(a), "episodes": _Counter(b)},
                                                          {"clips": 5, "episodes": 1}, seed=0, step=step,
                                                          schedule="cycle")
  it = make()
  picks = [int(next(it)["dataset"][0]) for _ in range(18)]
  assert picks == [0, 0, 0, 0, 0, 1] * 3  # a parent batch after every 5 child batches
  it = make()
  for _ in range(8):
    next(it)
  s = it.get_state()
  resumed = make(s["step"], s["datasets"]["clips"]["i"], s["datasets"]["episodes"]["i"])
  got = [(int(b["dataset"][0]), int(b["x"][0])) for b in (next(resumed) for _ in range(6))]
  assert got == [(0, 7), (0, 8), (0, 9), (1, 1), (0, 10), (0, 11)]  # 7 clip and 1 episode batch before
  with pytest.raises(ValueError, match="integer weights"):
    mixture.MixtureIterator({"a": _Counter(), "b": _Counter()}, {"a": 2.5, "b": 1}, seed=0, schedule="cycle")
  with pytest.raises(ValueError, match="mixture_schedule='random'"):
    mixture.MixtureIterator({"a": _Counter()}, {"a": 1}, seed=0, schedule="random")
