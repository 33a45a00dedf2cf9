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
