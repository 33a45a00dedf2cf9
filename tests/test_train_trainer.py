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


def _restore_or_init(config, directory):
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  spec = trainer.build_state_spec(config, task, setup, config.total_steps)
  ckpt = checkpointing.Checkpointer(directory)
  state, data_state = trainer.restore_or_init(config, task, spec, ckpt)
  ckpt.close()
  return state, data_state, spec


def test_init_path_loads_params_only(straight, tmp_path):
  state, data_state, _ = _restore_or_init(_config(**{"init.path": straight[0]}), str(tmp_path / "checkpoints"))
  saved, _ = _params(straight[0], 6, _config())
  assert int(state.step) == 0 and data_state is None
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.params),
                         jax.device_get(saved.params))


def test_init_assignment_map_renames_and_keeps_fresh(straight, tmp_path):
  """A rule with None keeps that parameter fresh while the rest is read under its own name; a rule matching
  nothing, or a source path the checkpoint lacks, is an error naming it."""
  saved, _ = _params(straight[0], 6, _config())
  saved = flax_flat(jax.device_get(saved.params))
  fresh, _, _ = _restore_or_init(_config(), str(tmp_path / "fresh"))
  config = _config(**{"init.path": straight[0], "init.assignment_map": ((r"Dense_1/bias", None),)})
  state, _, _ = _restore_or_init(config, str(tmp_path / "a"))
  got = flax_flat(jax.device_get(state.params))
  np.testing.assert_array_equal(got["Dense_1/kernel"], saved["Dense_1/kernel"])
  np.testing.assert_array_equal(got["Dense_0/bias"], saved["Dense_0/bias"])
  np.testing.assert_array_equal(got["Dense_1/bias"], flax_flat(jax.device_get(fresh.params))["Dense_1/bias"])
  with pytest.raises(ValueError, match=r"config.init.assignment_map: 'Dense_9/.\*' matches no parameter"):
    _restore_or_init(_config(**{"init.path": straight[0], "init.assignment_map": ((r"Dense_9/.*", None),)}),
                     str(tmp_path / "b"))
  renamed = ((r"Dense_0/(.*)", r"Missing_0/\1"),)
  with pytest.raises(ValueError, match=r"Dense_0/bias <- Missing_0/bias: not in the checkpoint"):
    _restore_or_init(_config(**{"init.path": straight[0], "init.assignment_map": renamed}), str(tmp_path / "c"))


def test_family_load_seeds_a_run_from_scratch_only(straight, tmp_path):
  """The family's `load` (here tests/toy_task.py's, driven by config.init.options) fills a fresh state, placed
  in the params' shardings; a workdir checkpoint wins over it; without options the init is fresh."""
  config = _config(**{"init.options.fill": 0.5})
  state, _, spec = _restore_or_init(config, str(tmp_path / "checkpoints"))
  for leaf, sharding in zip(jax.tree.leaves(state.params), jax.tree.leaves(spec.shardings.params)):
    np.testing.assert_array_equal(np.asarray(leaf), 0.5)
    assert leaf.sharding == sharding
  resumed, _, _ = _restore_or_init(config, os.path.join(straight[0], "checkpoints"))
  assert int(resumed.step) == 6 and not np.all(np.asarray(jax.tree.leaves(resumed.params)[0]) == 0.5)
  fresh, _, _ = _restore_or_init(_config(), str(tmp_path / "other"))
  assert not np.all(np.asarray(jax.tree.leaves(fresh.params)[0]) == 0.5)


def flax_flat(tree):
  from vlm.train import init as init_lib  # pylint: disable=g-import-not-at-top
  return init_lib.flatten(tree)


def test_non_finite_parameters_stop_before_they_are_saved(tmp_path):
  """lr=1e39: step 1's loss and gradients are finite but the parameters it produces overflow; nothing is saved."""
  config = _config("steps=6,lr=1e39,evals=false", checkpoint_every_steps=1, **{"optim.schedule.warmup_steps": 0})
  with pytest.raises(FloatingPointError, match=r"Non-finite parameters at step 1 .*param_norm=inf.*\(none\) is intact"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]


def test_keep_checkpoints_must_keep_one(tmp_path):
  with pytest.raises(ValueError, match=r"config.keep_checkpoints=0: expected at least 1"):
    trainer.train_and_evaluate(_config(keep_checkpoints=0), str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
  config = _config("steps=6,nan_at=4,evals=false", checkpoint_every_steps=2)
  with pytest.raises(FloatingPointError,
                     match=r"Non-finite loss and gradients and parameters and optimizer state at step 5 .*last "
                           r"checkpoint \(step 4, finite parameters\) is intact"):
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


@pytest.mark.parametrize("arg, message", [
    ("configs/vatt/pretrain.py:tinyy", "vatt has no size 'tinyy'"),
    ("configs/vatt/no_such_config.py:tiny", "No such file or directory"),
])
def test_bad_config_is_reported_before_the_data_stack_starts(tmp_path, arg, message):
  """A misspelt variant or a missing config file fails before TensorFlow is imported (vlm/registry.py)."""
  proc = subprocess.run([sys.executable, "-m", "vlm.main", f"--config={arg}", f"--workdir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "JAX process" not in proc.stderr  # logged once TensorFlow and the trainer are imported
  assert not os.listdir(tmp_path)


def test_sigterm_saves_stops_and_resumes_exactly(straight, tmp_path):
  """SIGTERM while fetching batch 3 (the data iterator sends it): step 3 finishes, is saved, and the run stops
  with `Interrupted`; the same command then resumes to the end with the straight run's parameters."""
  import threading  # pylint: disable=g-import-not-at-top
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers need the main thread")
  config = _config("steps=6,signal_at=3")
  with pytest.raises(trainer.Interrupted, match=r"signal 15 at step 3 of 6; checkpoint 3 saved"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == ["3"]
  trainer.train_and_evaluate(_config(), str(tmp_path))
  resumed, _ = _params(str(tmp_path), 6, _config())
  reference, _ = _params(straight[0], 6, _config())
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                         jax.device_get(reference.params))


def test_main_exits_75_on_sigterm(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "vlm.main", f"--config={TOY}:steps=6,signal_at=3,evals=false",
                         f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == trainer.Interrupted.EXIT_CODE, proc.stderr[-3000:]
  assert "== Interrupted: Stopped by signal 15 at step 3" in proc.stdout
  assert "== Results" not in proc.stdout


def test_a_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
  """A live run (another process) holds run.lock: the trainer refuses before building anything; after that run
  is killed with SIGKILL the lock is stale (dead pid) and the next run takes it over and releases it at the end."""
  from vlm.train import lock as lock_lib  # pylint: disable=g-import-not-at-top
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from vlm.train import lock; l = lock.WorkdirLock(sys.argv[1]); "
       "l.acquire(); print('locked', flush=True); time.sleep(120)", str(tmp_path)],
      cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(lock_lib.WorkdirBusyError, match=r"is in use by another run .*delete .*run.lock"):
      trainer.train_and_evaluate(_config("steps=2,evals=false"), str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")
  finally:
    holder.kill()
    holder.wait()
  trainer.train_and_evaluate(_config("steps=2,evals=false"), str(tmp_path))
  assert not os.path.exists(tmp_path / "run.lock")


def test_metrics_jsonl_survives_a_torn_last_line(tmp_path):
  """A crash (or full disk) mid-write leaves half a line: the next run appends on a new line, the reader skips
  and counts the torn one."""
  path = tmp_path / metrics_lib.JSONL_NAME
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/lo')
  logger = metrics_lib.MetricLogger(str(tmp_path), is_main=True)
  logger.write_scalars(3, {"train/loss": 1.5})
  logger.close()
  assert path.read_text().splitlines()[-1] == '{"step": 3, "train/loss": 1.5}'
  assert metrics_lib.read_jsonl(str(path)) == {1: {"step": 1, "train/loss": 2.0}, 3: {"step": 3, "train/loss": 1.5}}


def test_a_failed_background_save_stops_the_run_naming_the_cause(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"))

  def fail():
    raise OSError(28, "No space left on device")
  ckpt._mngr.check_for_errors = fail  # pylint: disable=protected-access  (what orbax reports after ENOSPC)
  with pytest.raises(checkpointing.CheckpointSaveError,
                     match=r"failed: OSError: \[Errno 28\] No space left on device.*last complete checkpoint is none"):
    ckpt.check()
