"""End-to-end trainer tests on the toy task (tests/toy_task.py), 8 fake CPU devices.

One straight 6-step run (module fixture) serves as the reference for resume, re-sharding, eval mode and
mismatch tests, so the file compiles few programs.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from vlm import config_lib
from vlm.train import checkpointing
from vlm.train import metrics as metrics_lib
from vlm.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "toy_task.py")


def _config(arg="steps=6", **fields):
  config = config_lib.load_config(f"{TOY}:{arg}")
  for key, value in fields.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def _losses(workdir):
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return {s: r["train/loss"] for s, r in records.items() if "train/loss" in r}


def _params(workdir, step, config):
  """Params of a checkpoint, restored onto the mesh of `config`."""
  setup = trainer.setup_mesh(config)
  spec = trainer.build_state_spec(config, trainer.build_task(config), setup, config.total_steps)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), keep=None)
  state, data_state = ckpt.restore(step, spec.abstract)
  ckpt.close()
  return state, data_state


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """6 steps on mesh data=8, checkpoints at 3 and 6, evals at 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  results = trainer.train_and_evaluate(_config(), workdir)
  return workdir, results


def test_metrics_checkpoints_and_events_are_written(straight):
  workdir, results = straight
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert sorted(records) == [1, 2, 3, 4, 5, 6]
  for key in ("train/loss", "train/grad_norm", "train/param_norm", "train/lr", "train/accuracy"):
    assert all(key in records[s] for s in records), key
  assert "train/steps_per_sec" in records[6]
  assert "eval/toy/accuracy" in records[3] and "eval/toy/accuracy" in records[6]
  assert results["eval/toy/accuracy"] == records[6]["eval/toy/accuracy"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  data = json.load(open(os.path.join(workdir, "checkpoints", "3", "data", "process_0.json")))
  assert data == {"process_count": 1, "state": {"index": 3}}
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == 6


def test_train_step_learns(tmp_path):
  config = _config("steps=40,evals=false", log_every_steps=5, checkpoint_every_steps=100)
  trainer.train_and_evaluate(config, str(tmp_path))
  records = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert records[40]["train/loss"] < 0.6 * records[5]["train/loss"]
  assert records[40]["train/accuracy"] > 0.7


def test_resume_reproduces_the_straight_run(straight, tmp_path):
  workdir = str(tmp_path)
  trainer.train_and_evaluate(_config(), workdir, stop_after_steps=3)
  assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 3
  trainer.train_and_evaluate(_config(), workdir)
  reference, resumed = _losses(straight[0]), _losses(workdir)
  assert [resumed[s] for s in (4, 5, 6)] == [reference[s] for s in (4, 5, 6)]


def test_checkpoint_restores_onto_another_mesh(straight, tmp_path):
  workdir, _ = straight
  on_8x1, _ = _params(workdir, 6, _config())
  config_4x2 = _config(sharding="fsdp", mesh=(("data", 4), ("fsdp", 2), ("tensor", 1)))
  on_4x2, data_state = _params(workdir, 6, config_4x2)
  kernel = on_4x2.params["Dense_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  assert kernel.addressable_shards[0].data.shape == (8, 32)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(on_8x1), jax.device_get(on_4x2))
  assert data_state == {"index": 6}
  # And training continues there: from the (8, 1) checkpoint of step 3, steps 4-6 on (4, 2).
  shutil.copytree(os.path.join(workdir, "checkpoints", "3"), tmp_path / "checkpoints" / "3")
  trainer.train_and_evaluate(config_4x2, str(tmp_path))
  reference, resumed = _losses(workdir), _losses(str(tmp_path))
  np.testing.assert_allclose([resumed[s] for s in (4, 5, 6)], [reference[s] for s in (4, 5, 6)], rtol=1e-5)


def test_eval_mode_restores_the_latest_checkpoint(straight):
  workdir, results = straight
  evaluated = trainer.evaluate(_config(), workdir)
  assert evaluated == {k: v for k, v in results.items() if k.startswith("eval/")}


def test_init_checkpoint_loads_params_only(straight, tmp_path):
  config = _config(init_checkpoint=straight[0])
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  spec = trainer.build_state_spec(config, task, setup, config.total_steps)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  state, data_state = trainer.restore_or_init(config, task, spec, ckpt)
  ckpt.close()
  saved, _ = _params(straight[0], 6, _config())
  assert int(state.step) == 0 and data_state is None
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.params),
                         jax.device_get(saved.params))


def test_pretrained_weights_hook_seeds_a_run_from_scratch_only(straight, tmp_path):
  """`task.init_params_from_pretrained` (e.g. SViTT's HF BEiT / BERT) fills a fresh state, placed in the params'
  shardings; a workdir checkpoint wins over it, and None leaves the fresh init."""
  config = _config()
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  spec = trainer.build_state_spec(config, task, setup, config.total_steps)
  task.init_params_from_pretrained = lambda params: jax.tree.map(lambda p: np.full(p.shape, 0.5, p.dtype), params)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))
  state, _ = trainer.restore_or_init(config, task, spec, ckpt)
  ckpt.close()
  for leaf, sharding in zip(jax.tree.leaves(state.params), jax.tree.leaves(spec.shardings.params)):
    np.testing.assert_array_equal(np.asarray(leaf), 0.5)
    assert leaf.sharding == sharding
  ckpt = checkpointing.Checkpointer(os.path.join(straight[0], "checkpoints"), read_only=True)
  resumed, _ = trainer.restore_or_init(config, task, spec, ckpt)
  assert int(resumed.step) == 6 and not np.all(np.asarray(jax.tree.leaves(resumed.params)[0]) == 0.5)
  task.init_params_from_pretrained = lambda params: None
  fresh, _ = trainer.restore_or_init(config, task, spec, checkpointing.Checkpointer(str(tmp_path / "other")))
  assert not np.all(np.asarray(jax.tree.leaves(fresh.params)[0]) == 0.5)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
  config = _config("steps=6,nan_at=4,evals=false", checkpoint_every_steps=2)
  with pytest.raises(FloatingPointError, match=r"at step 5 .*last checkpoint \(step 4\) is intact"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  state, data_state = _params(str(tmp_path), 4, config)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(jax.device_get(state.params)))
  assert data_state == {"index": 4}
  assert sorted(_losses(str(tmp_path))) == [1, 2, 3, 4]


def test_workdir_with_another_models_checkpoint_is_rejected(straight, tmp_path):
  shutil.copytree(os.path.join(straight[0], "checkpoints"), tmp_path / "checkpoints")
  config = _config(**{"model.hidden": 48})
  with pytest.raises(ValueError, match=r"Dense_0/kernel: checkpoint \(16, 32\) vs model \(16, 48\)"):
    trainer.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_data_shards(tmp_path):
  with pytest.raises(ValueError, match="12 is not divisible by the 8 data shards"):
    trainer.train_and_evaluate(_config("steps=2,batch=12"), str(tmp_path))


def test_misspelt_config_override_is_an_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "vlm.main", f"--config={TOY}", f"--workdir={tmp_path}", "--config.totl_steps=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "totl_steps" in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
