"""Multiple-choice questions (EgoMCQ / SummaryMCQ): answers against a brute-force numpy reference, ties, chance,
candidate pools, and the evaluator end to end on the built-in episodes."""
import numpy as np
import pytest

from vlm.evals import multiple_choice as mc


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_summary_questions_against_a_reference_and_at_the_extremes():
  rng = np.random.default_rng(0)
  e, d = 40, 8
  episode = _unit(rng.normal(size=(e, d)))
  summary = _unit(episode + 0.9 * rng.normal(size=(e, d)))  # noisy: some right, some wrong
  right = mc.summary_questions(summary, episode, 5, np.random.default_rng(1))
  # Reference: the same draws, scored by an explicit loop.
  ref_rng, want = np.random.default_rng(1), []
  for i in range(e):
    others = ref_rng.choice([j for j in range(e) if j != i], 4, replace=False)
    scores = [float(summary[i] @ episode[j]) for j in [i, *others]]
    want.append(all(scores[0] > s for s in scores[1:]))
  assert right.tolist() == want and 0 < right.mean() < 1
  assert mc.summary_questions(episode, episode, 5, np.random.default_rng(2)).all()  # perfect embeddings
  same = np.ones((e, d)) / np.sqrt(d)
  assert not mc.summary_questions(same, same, 5, np.random.default_rng(2)).any()  # ties are wrong: no free chance
  with pytest.raises(ValueError, match="3 episodes cannot give 5 candidates"):
    mc.summary_questions(summary[:3], episode[:3], 5, rng)


def test_clip_questions_inter_and_intra_pools():
  rng = np.random.default_rng(0)
  e, n, d = 12, 4, 16
  clip = _unit(rng.normal(size=(e, n, d)))
  real = np.ones((e, n), bool)
  real[0, 2:] = False  # an episode with two real clips (two padding slots)
  right, asked = mc.clip_questions(clip, clip, real, 5, np.random.default_rng(1), intra=False)
  assert len(right) == real.sum() and right.all() and (asked == 5).all()
  right, asked = mc.clip_questions(clip, clip, real, 5, np.random.default_rng(1), intra=True)
  # Intra: at most the episode's own real clips (4, or 2 for episode 0), never a padding slot.
  assert right.all() and asked.tolist() == [2, 2] + [4] * (real.sum() - 2)
  # A narration that describes another clip of its own episode fails intra but passes inter when episodes differ.
  swapped = clip.copy()
  swapped[:, [0, 1]] = clip[:, [1, 0]]
  inter, _ = mc.clip_questions(swapped + 0.3 * clip, clip, real, 5, np.random.default_rng(3), intra=False)
  intra, _ = mc.clip_questions(swapped, clip, real, 5, np.random.default_rng(3), intra=True)
  assert intra.mean() < 0.6 and inter.mean() > 0.8


def test_summary_narration_gap_against_a_loop():
  rng = np.random.default_rng(0)
  narration = _unit(rng.normal(size=(6, 3, 5)))
  real = np.ones((6, 3), bool)
  real[1, 2] = False
  summary = _unit(narration[:, :2].mean(1) + 0.1 * rng.normal(size=(6, 5)))
  gaps = []
  for i in range(6):
    mean = lambda j: _unit(narration[j][real[j]].mean(0))
    gaps.append(summary[i] @ mean(i) - np.mean([summary[i] @ mean(j) for j in range(6) if j != i]))
  assert np.isclose(mc.summary_narration_gap(summary, narration, real), np.mean(gaps))
  assert mc.summary_narration_gap(summary, narration, real) > 0.3


def test_accuracy_and_standard_error():
  acc, se = mc.accuracy(np.array([1, 0, 1, 1]))
  assert acc == 75.0 and np.isclose(se, 100 * np.sqrt(0.75 * 0.25 / 4))


def test_evaluator_on_builtin_episodes(tmp_path):
  """The tiny HierVL config's mcq evaluator at initialisation: every question asked, chance as documented."""
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(
      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/hiervl/pretrain.py:tiny"))
  options = dict(data_dir=str(tmp_path), num_train=8, num_test=40, num_images=0, num_frames=4, fps=10.0,
                 sample_rate=1000, episode_len=4, num_shards=1)
  with config.unlocked():
    config.evals.mcq.input.data.options = options
    config.evals.mcq.input.data.split = "test"
  task = trainer.build_task(config)
  setup = trainer.setup_mesh(config)
  variables = {"params": task.init_variables(jax.random.key(0), task.dummy_batch(2))["params"]}
  evaluator = mc.Evaluator(config, config.evals.mcq, task, setup.mesh)
  m = evaluator.run(variables, step=0)
  assert m["summary_questions"] == 10 and m["clip_inter_questions"] == 40 and m["clip_intra_questions"] == 40
  assert m["summary_chance"] == 20 and m["clip_inter_chance"] == 20 and m["clip_intra_chance"] == 25
  for q in mc.QUESTIONS:
    assert 0 <= m[f"{q}_accuracy"] <= 100
  with pytest.raises(ValueError, match="questions="):
    mc.Evaluator(config, ml_collections.ConfigDict(dict(config.evals.mcq.to_dict(), questions=("egomcq",))), task,
                 setup.mesh)
