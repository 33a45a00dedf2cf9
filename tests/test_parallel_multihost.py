"""Multi-process training (2 processes x 4 CPU devices over gloo, via launch/local.py) matches 1 x 8 devices;
the TPU pod launcher's dry run prints the right gcloud commands.

The multi-process comparison is parameterised by config path, so it can run any config with a `tiny` form
(the fields in OVERRIDES must exist in it).
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from vlm import config_lib
from vlm.train import metrics as metrics_lib
from vlm.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["tests/toy_task.py:steps=3,evals=false"]
OVERRIDES = {"total_steps": 3, "log_every_steps": 1, "checkpoint_every_steps": 3}


def _load_launcher(name):
  spec = importlib.util.spec_from_file_location(f"launch_{name}", os.path.join(ROOT, "launch", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("config_path", CONFIGS)
def test_two_processes_match_one_process(config_path, tmp_path):
  overrides = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  multi = str(tmp_path / "2x4")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes=2", "--devices_per_process=4",
       "--timeout_s=240", "--", f"--config={config_path}", f"--workdir={multi}", *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-6000:]
  assert "[p1]" in proc.stdout  # both processes' logs are streamed, prefixed

  config = config_lib.load_config(os.path.join(ROOT, config_path))
  for key, value in OVERRIDES.items():
    config[key] = value
  single = str(tmp_path / "1x8")
  trainer.train_and_evaluate(config, single)

  losses = [{s: r["train/loss"] for s, r in metrics_lib.read_jsonl(os.path.join(d, "metrics.jsonl")).items()
             if "train/loss" in r} for d in (multi, single)]
  assert sorted(losses[0]) == sorted(losses[1]) == list(range(1, OVERRIDES["total_steps"] + 1))
  np.testing.assert_allclose([losses[0][s] for s in sorted(losses[0])],
                             [losses[1][s] for s in sorted(losses[1])], rtol=1e-5)
  # Each process saved its own data position with the checkpoint; only process 0 wrote metrics.
  step_dir = os.path.join(multi, "checkpoints", str(OVERRIDES["total_steps"]), "data")
  assert sorted(os.listdir(step_dir))[-2:] == ["process_0.json", "process_1.json"]


def test_local_launcher_fails_when_a_process_fails(tmp_path):
  local = _load_launcher("local")
  status = local.launch([f"--workdir={tmp_path}"], num_processes=2, devices_per_process=1, timeout_s=60,
                        grace_s=5, module="vlm_no_such_module")
  assert status == 1


def test_tpu_pod_dry_run_prints_the_gcloud_commands(capsys):
  pod = _load_launcher("tpu_pod")
  status = pod.main(["all", "--name=vlm-test", "--zone=us-central2-b", "--accelerator_type=v4-32",
                     "--teardown=delete", "--dry_run", "--", "--config=configs/x.py:tiny",
                     "--workdir=gs://bucket/run"])
  out = capsys.readouterr().out
  assert status == 0
  assert "gcloud compute tpus tpu-vm describe vlm-test --zone=us-central2-b" in out
  assert "tpu-vm create vlm-test --zone=us-central2-b --accelerator-type=v4-32" in out
  assert "tpu-vm scp" in out and "pip install -q -e" in out
  run_line = next(line for line in out.splitlines() if "vlm.main" in line)
  assert "--worker=all" in run_line and "--distributed" in run_line and "gs://bucket/run" in run_line
  assert "tpu-vm delete vlm-test --zone=us-central2-b --quiet" in out
