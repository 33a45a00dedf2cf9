"""Every config file: every documented `FILE:ARG` loads; every `tiny` form trains a step and runs the tools on
ONE device, as on a user's laptop (the rest of the suite runs on 8 fake devices, which hides batch-of-one bugs).

Documented args are the `configs/<file>.py:ARG` commands written in the config's own docstring, in README.md and
in the per-family configs/<family>/README.md, so the list cannot drift from the docs.
"""
import ast
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                                             recursive=True))
_COMMAND = re.compile(r"(configs/[\w/]+\.py):([^\s'\"`\\)\]|]+)")


def documented_args() -> list[tuple[str, str]]:
  """(config path, ARG) for every documented command, and every config's `tiny`."""
  texts = [open(os.path.join(ROOT, p)).read() for p in glob.glob(os.path.join(ROOT, "**", "README.md"),
                                                                  recursive=True) if ".venv" not in p]
  for path in CONFIGS:
    texts.append(ast.get_docstring(ast.parse(open(os.path.join(ROOT, path)).read())) or "")
  found = {(path, "tiny") for path in CONFIGS}
  for text in texts:
    for path, arg in _COMMAND.findall(text):
      if path in CONFIGS and "<" not in arg and "..." not in arg:
        found.add((path, arg.rstrip(".,;:")))
  return sorted(found)


@pytest.mark.parametrize("path,arg", documented_args())
def test_documented_config_loads(path, arg):
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, f"{path}:{arg}"))
  assert config.task.name and config.model.name and int(config.total_steps) >= 0


def test_every_config_file_is_documented_with_a_command():
  for path in CONFIGS:
    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, path)).read())) or ""
    assert f"--config={path}:" in doc, f"{path}: its docstring shows no `--config={path}:ARG` command"


def _one_device_check(spec: str, workdir: str) -> None:
  """Runs in a subprocess with one CPU device: a training step, then the inspect and bench tools."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  from vlm.tools import bench as bench_lib  # pylint: disable=g-import-not-at-top
  from vlm.tools import inspect as inspect_lib  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1, jax.devices()
  config = config_lib.load_config(spec)
  with config.unlocked():
    config.total_steps = 1
    config.evals = {}  # the evaluators have their own tests; this checks the training path
  trainer.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  report = inspect_lib.inspect(config, with_flops=False)
  assert report["params_total"] > 0
  timing = bench_lib.bench(config, steps=5, warmup=0)
  assert timing["step_seconds_median"] > 0, timing
  print("ok", spec, report["params_total"])


@pytest.mark.parametrize("path", CONFIGS)
def test_tiny_trains_and_runs_the_tools_on_one_device(path, tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  spec = os.path.join(ROOT, f"{path}:tiny")
  proc = subprocess.run([sys.executable, __file__, spec, str(tmp_path / "workdir")], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{spec} on one device failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


if __name__ == "__main__":
  _one_device_check(sys.argv[1], sys.argv[2])
