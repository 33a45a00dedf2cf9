"""Stop tiny VATT mid-run and restart it: the resumed steps reproduce the uninterrupted run exactly.

This exercises the real pieces together: the built-in dataset through the tf.data pipeline (its position saved
with the checkpoint), DropToken and dropout keys folded from the step, BatchNorm statistics, Adam state.
"""
import os

import ml_collections

from vlm import config_lib
from vlm.train import metrics as metrics_lib
from vlm.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/pretrain.py:tiny"))
  config.total_steps = 6
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.optim.schedule.warmup_steps = 2
  config.model.dropout_rate = 0.1  # randomness that must be replayed
  config.input.data.options.num_train = 128
  config.input.data.options.num_test = 32
  config.input.shuffle_buffer = 64
  with config.unlocked():  # no evaluators: resumption is about the train steps (evaluators have their own tests)
    config.evals = ml_collections.ConfigDict()
  return config


def _losses(workdir):
  return {s: r["train/loss"] for s, r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")).items()
          if "train/loss" in r}


def test_vatt_resume_matches_uninterrupted_run(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  trainer.train_and_evaluate(_config(), straight)
  trainer.train_and_evaluate(_config(), resumed, stop_after_steps=3)
  assert sorted(_losses(resumed)) == [1, 2, 3]
  trainer.train_and_evaluate(_config(), resumed)
  reference, after = _losses(straight), _losses(resumed)
  assert [after[s] for s in (4, 5, 6)] == [reference[s] for s in (4, 5, 6)]
  # Steps 4-6 are not a replay of steps 1-3: the data moved on.
  assert len({reference[s] for s in range(1, 7)}) == 6


def test_hiervl_two_stream_resume_matches_uninterrupted_run(tmp_path):
  """HierVL's clips and episodes streams (the 5:1 cycle; step 6 is the parent step): a run stopped at step 4 and
  restarted continues both streams where they were, so steps 5-7 (parent step included) equal the straight run."""
  def config():
    c = config_lib.load_config(os.path.join(ROOT, "configs/hiervl/pretrain.py:tiny"))
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 7, 1, 4
    c.optim.schedule.warmup_steps = 2
    for data in [c.input.data] + [entry.data for entry in c.input.mixture.values()]:
      data.options.num_train, data.options.num_test, data.options.num_images = 64, 16, 0
    c.input.shuffle_buffer = 32
    with c.unlocked():
      c.evals = ml_collections.ConfigDict()
    return c

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  trainer.train_and_evaluate(config(), straight)
  trainer.train_and_evaluate(config(), resumed, stop_after_steps=4)
  trainer.train_and_evaluate(config(), resumed)
  ref = metrics_lib.read_jsonl(os.path.join(straight, "metrics.jsonl"))
  after = metrics_lib.read_jsonl(os.path.join(resumed, "metrics.jsonl"))
  assert [ref[s]["train/parent_step"] for s in range(1, 8)] == [0, 0, 0, 0, 0, 1, 0]
  assert [after[s]["train/loss"] for s in range(5, 8)] == [ref[s]["train/loss"] for s in range(5, 8)]
  assert after[6]["train/summary_loss"] == ref[6]["train/summary_loss"] > 0
