"""Every config file: every documented `FILE:ARG` loads; on ONE device, as on a user's laptop (the rest of the
suite runs on 8 fake devices, which hides batch-of-one bugs), every `tiny` form runs the inspect tool and every
kind of run (model family x task) trains a step.

Documented args are the `configs/<file>.py:ARG` commands written in the config's own docstring, in README.md and
in the per-family configs/<family>/README.md, so the list cannot drift from the docs.
"""
import ast
import contextlib
import glob
import os
import re
import shlex
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


def documented_commands() -> list[list[str]]:
  """The `--config=...` and `--config.x=y` arguments of every documented `vlm.main` / `vlm.tools` command."""
  texts = [open(p).read() for p in glob.glob(os.path.join(ROOT, "**", "*.md"), recursive=True) if ".venv" not in p]
  texts += [ast.get_docstring(ast.parse(open(os.path.join(ROOT, p)).read())) or "" for p in CONFIGS]
  commands = []
  for text in texts:
    for command in re.findall(r"python -m vlm\.[\w.]+ (?:\\\n|[^\n`|])+", text):
      args = shlex.split(command.replace("\\\n", " "), comments=False)
      config = [x for x in args if x.startswith("--config")]
      if (config and config[0].startswith("--config=") and "<" not in command and "..." not in command
          and config[0].split("=", 1)[1].split(":")[0] in CONFIGS):
        commands.append(config)
  return commands


_OWN_DATA = ["--config.input.data.name=records", "--config.input.data.files=/data/train-*.tfrecord"]
_OWN_VOCAB = ["--config.input.tokenizer.vocab_file=/data/vocab.txt"]


def _parse_flags(args: list[str]):
  """Parses config flags as `vlm.main` does (ml_collections' config_flags), in a fresh flag set."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  argv = ["vlm.main", *args]
  saved, sys.argv = sys.argv, argv  # config_flags reads sys.argv when defined, to register the --config.x flags
  try:
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(argv)
  finally:
    sys.argv = saved
  return values.config


def test_every_documented_command_line_parses():
  commands = documented_commands()
  assert len(commands) > 10, commands
  with _chdir(ROOT):
    for args in commands:
      _parse_flags(args)


@pytest.mark.parametrize("path", CONFIGS)
def test_own_data_and_vocabulary_overrides_parse(path):
  """The README's own-data command works with every config (mixtures name their entries' sources instead)."""
  with _chdir(ROOT):
    plain = _parse_flags([f"--config={path}"])
    if plain.input.get("mixture"):
      entry = next(iter(plain.input.mixture))
      args = [f"--config.input.mixture.{entry}.data.name=records",
              f"--config.input.mixture.{entry}.data.files=/data/train-*.tfrecord"]
      assert _parse_flags([f"--config={path}", *args]).input.mixture[entry].data.files == "/data/train-*.tfrecord"
      return
    extra = _OWN_VOCAB if plain.input.get("tokenizer") else []
    config = _parse_flags([f"--config={path}", *_OWN_DATA, *extra])
    assert config.input.data.name == "records" and config.input.data.files == "/data/train-*.tfrecord"
    if extra:
      assert config.input.tokenizer.vocab_file == "/data/vocab.txt"


@contextlib.contextmanager
def _chdir(path):
  old = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(old)


@pytest.mark.parametrize("path,arg", documented_args())
def test_documented_config_loads(path, arg):
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, f"{path}:{arg}"))
  assert config.task.name and config.model.name and int(config.total_steps) >= 0


def test_every_config_file_is_documented_with_a_command():
  for path in CONFIGS:
    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, path)).read())) or ""
    assert f"--config={path}:" in doc, f"{path}: its docstring shows no `--config={path}:ARG` command"


def _kinds() -> dict[str, tuple[str, str]]:
  """config path -> (config.model.name, config.task.name) of its tiny form."""
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for path in CONFIGS:
    config = config_lib.load_config(os.path.join(ROOT, f"{path}:tiny"))
    out[path] = (config.model.name, config.task.name)
  return out


def one_device_training(kinds: dict[str, tuple[str, str]]) -> list[str]:
  """The configs whose tiny form trains a step here: the first of each (model, task) kind that no notebook
  trains already (tests/test_colabs.py runs the colabs on one real CPU device, each on a tiny config)."""
  in_colabs = set()
  for notebook in glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")):
    in_colabs |= {m.group(1) for m in _COMMAND.finditer(open(notebook).read())}
  covered = {kinds[p] for p in in_colabs if p in kinds}
  chosen, seen = [], set(covered)
  for path in CONFIGS:
    if kinds[path] not in seen:
      seen.add(kinds[path])
      chosen.append(path)
  return chosen


def _one_device_check(spec: str, workdir: str, train: bool, bench: bool) -> None:
  """Runs in a subprocess with one CPU device: the inspect tool, and (`train`) a training step, (`bench`) the
  bench tool."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  from vlm.tools import bench as bench_lib  # pylint: disable=g-import-not-at-top
  from vlm.tools import inspect as inspect_lib  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1, jax.devices()
  config = config_lib.load_config(spec)
  with config.unlocked():
    config.evals = {}  # the evaluators have their own tests; this checks the training path
  if train:
    # One step of the config's own schedule (total_steps and warm-up unchanged), then stop as a time slice would.
    trainer.train_and_evaluate(config, workdir, stop_after_steps=1)
    assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  report = inspect_lib.inspect(config, with_flops=False)
  assert report["params_total"] > 0
  if bench:
    timing = bench_lib.bench(config, steps=5, warmup=0)
    assert timing["step_seconds_median"] > 0, timing
  print("ok", spec, report["params_total"])


@pytest.mark.parametrize("half", [0, 1])
def test_every_tiny_runs_the_tools_and_each_kind_trains_on_one_device(half, tmp_path):
  """Two subprocesses (so the two test workers share the work), each one JAX start-up and one compile cache,
  each config in its own workdir; the training configs alternate between the two. The bench tool (a second
  compilation of the step) runs on the first training config only: it is family-agnostic, and
  tests/test_tools.py tests it on its own."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  training = one_device_training(_kinds())
  inspecting = [p for p in CONFIGS if p not in training]
  mine = [(p, True) for p in training[half::2]] + [(p, False) for p in inspecting[half::2]]
  args = []
  for i, (path, train) in enumerate(mine):
    args += [os.path.join(ROOT, f"{path}:tiny"), str(tmp_path / f"workdir{i}"), str(train),
             str(half == 0 and i == 0)]
  proc = subprocess.run([sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                        timeout=1200)
  assert proc.returncode == 0, f"a tiny config failed on one device:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
  assert proc.stdout.count("ok ") == len(mine), proc.stdout


if __name__ == "__main__":
  for spec_, workdir_, train_, bench_ in zip(*(sys.argv[1 + k::4] for k in range(4))):
    _one_device_check(spec_, workdir_, train_ == "True", bench_ == "True")
