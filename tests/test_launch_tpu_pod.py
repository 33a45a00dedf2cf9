"""The TPU pod launcher: its dry run (the gcloud commands, the Python and constraints the install step uses, the
check step), the install script's guards run under bash against stand-in uv / python3, the check script on this
machine, and setup.py's python_requires against its dependencies' Requires-Python."""
import ast
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import stat
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGV = ["all", "--name=vlm-test", "--zone=us-central2-b", "--accelerator_type=v4-32", "--teardown=delete",
        "--index_snapshot=2026-12-01", "--dry_run", "--", "--config=configs/x.py:tiny", "--workdir=gs://bucket/run"]


def _launcher():
  spec = importlib.util.spec_from_file_location("launch_tpu_pod", os.path.join(ROOT, "launch", "tpu_pod.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _setup_kwargs() -> dict:
  """The literal keyword arguments of setup.py's setuptools.setup(...) call, read without running setuptools."""
  with open(os.path.join(ROOT, "setup.py")) as f:
    tree = ast.parse(f.read())
  call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "setup")
  # Only literal values (packages=find_packages(...) is a call).
  return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords
          if isinstance(kw.value, (ast.Constant, ast.List, ast.Tuple, ast.Dict))}


def _floor(spec: SpecifierSet) -> Version:
  """The lowest Python minor release a Requires-Python specifier admits."""
  return next(v for v in (Version(f"3.{minor}") for minor in range(6, 30)) if v in spec)


def _dry_run(capsys, argv=ARGV):
  status = _launcher().main(argv)
  return status, capsys.readouterr().out


def test_python_requires_agrees_with_jax_and_every_dependency():
  kwargs = _setup_kwargs()
  ours = SpecifierSet(kwargs["python_requires"])
  jax_requires = SpecifierSet(importlib.metadata.metadata("jax")["Requires-Python"])
  assert _floor(ours) == _floor(jax_requires), (kwargs["python_requires"], str(jax_requires))
  # The floor is the highest floor among the installed dependencies (jax's today).
  floors = {}
  for line in kwargs["install_requires"]:
    name = Requirement(line).name
    requires_python = importlib.metadata.metadata(name)["Requires-Python"]
    if requires_python:
      floors[name] = _floor(SpecifierSet(requires_python))
  assert _floor(ours) == max(floors.values()), floors
  assert platform.python_version() in ours


def test_tpu_python_and_libtpu_pins_fit_the_stack():
  pod = _launcher()
  assert pod.PYTHON_VERSION in SpecifierSet(_setup_kwargs()["python_requires"])
  assert pod.PYTHON_VERSION in SpecifierSet(importlib.metadata.metadata("jax")["Requires-Python"])
  pins = {}
  for path in pod.CONSTRAINTS:
    with open(os.path.join(ROOT, path)) as f:
      for line in f:
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
          assert m[1].lower() not in pins, f"{m[1]} is pinned in more than one constraints file"
          pins[m[1].lower()] = m[2]
  assert pins["jax"] == importlib.metadata.version("jax")
  # The libtpu build pinned for TPU hosts is one that jax's own `tpu` extra accepts.
  tpu_extra = [Requirement(r) for r in importlib.metadata.requires("jax") if 'extra == "tpu"' in r]
  libtpu = next(r for r in tpu_extra if r.name == "libtpu")
  assert Version(pins["libtpu"]) in libtpu.specifier, (pins["libtpu"], str(libtpu.specifier))
  jaxlib = next(r for r in tpu_extra if r.name == "jaxlib")
  assert Version(pins["jaxlib"]) in jaxlib.specifier


def test_dry_run_prints_the_plan(capsys, monkeypatch):
  monkeypatch.setenv("PATH", "")  # no gcloud (nor anything else): the dry run must not need it
  status, out = _dry_run(capsys)
  assert status == 0
  assert "gcloud compute tpus tpu-vm describe vlm-test --zone=us-central2-b" in out
  assert ("tpu-vm create vlm-test --zone=us-central2-b --accelerator-type=v4-32 --version=tpu-ubuntu2204-base"
          in out)
  assert "tpu-vm scp" in out
  # The install step builds the venv from a uv-managed CPython 3.11.18, never from the image's python3.
  assert "\"$UV\" python install 3.11.18" in out
  assert "venv --clear --managed-python --python 3.11.18 $HOME/vlm_venv" in out
  assert "python3 -m venv" not in out
  install = next(line for line in out.splitlines() if "pip install --python $HOME/vlm_venv/bin/python" in line)
  assert "-c constraints.txt -c constraints-tpu.txt" in install
  assert "--exclude-newer 2026-12-01T00:00:00Z" in install and '-e ".[tpu]"' in install
  for path in ("constraints.txt", "constraints-tpu.txt"):
    assert os.path.exists(os.path.join(ROOT, path))
  # `check` runs on every worker, after the install and before training.
  lines = out.splitlines()
  check = next(i for i, line in enumerate(lines) if "python - 3.11.18 constraints.txt constraints-tpu.txt" in line)
  run = next(i for i, line in enumerate(lines) if "vlm.main" in line)
  assert lines.index(install) < check < run
  assert "--worker=all" in lines[check]
  assert "jax.device_count()" in out
  assert "--worker=all" in lines[run] and "--distributed" in lines[run] and "gs://bucket/run" in lines[run]
  assert "tpu-vm delete vlm-test --zone=us-central2-b --quiet" in out


def test_check_verb_and_image_defaults(capsys):
  status, out = _dry_run(capsys, ["check", "--name=vlm-test", "--zone=z", "--dry_run"])
  assert status == 0
  assert "--worker=all" in out and "jax.device_count()" in out and "vlm.main" not in out
  assert "tpu-vm create" not in out and "pip install" not in out
  pod = _launcher()
  assert pod.default_image("v5litepod-16") == "v2-alpha-tpuv5-lite"
  assert pod.default_image("v6e-8") == "v2-alpha-tpuv6e"
  assert pod.default_image("v5p-8") == "v2-alpha-tpuv5"
  with pytest.raises(SystemExit, match="--accelerator_type=v9-8"):
    pod.default_image("v9-8")
  with pytest.raises(SystemExit, match="--index_snapshot=yesterday"):
    pod.index_snapshot("yesterday")
  assert pod.index_snapshot("2026-01-02T03:04:05+01:00") == "2026-01-02T02:04:05Z"


def test_without_gcloud_a_real_run_says_so(monkeypatch):
  monkeypatch.setenv("PATH", "")
  with pytest.raises(SystemExit, match="gcloud not found"):
    _launcher().main([a for a in ARGV if a != "--dry_run"])


def _write_exe(path, text):
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="needs bash")
def test_install_script_skips_what_is_done(tmp_path):
  """The worker's install script under bash, with stand-ins for python3 (whose `pip install --user uv` drops a
  fake uv into ~/.local/bin) and uv (which logs its arguments): the second run only re-checks."""
  pod = _launcher()
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  (home / "vlm").mkdir(parents=True)
  bin_dir.mkdir()
  for name in ("setup.py",) + pod.CONSTRAINTS:
    shutil.copy(os.path.join(ROOT, name), home / "vlm" / name)
  fake_uv = f"""#!/bin/bash
echo "$*" >> "$HOME/uv.log"
case "$1" in
  --version) echo "uv {pod.UV_VERSION} (stand-in)";;
  venv) d="${{@: -1}}"; mkdir -p "$d/bin"; printf '#!/bin/bash\\necho {pod.PYTHON_VERSION}\\n' > "$d/bin/python"
        chmod +x "$d/bin/python";;
esac
"""
  _write_exe(bin_dir / "python3", f"""#!/bin/bash
echo "python3 $*" >> "$HOME/bootstrap.log"
mkdir -p "$HOME/.local/bin"
cat > "$HOME/.local/bin/uv" <<'UV'
{fake_uv}UV
chmod +x "$HOME/.local/bin/uv"
""")
  env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
  script = pod.setup_script("2026-12-01T00:00:00Z")

  def run_once():
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(home / "uv.log") as f:
      log = f.read().splitlines()
    os.remove(home / "uv.log")
    return proc.stdout, log

  _, first = run_once()
  with open(home / "bootstrap.log") as f:
    assert f.read().split() == ["python3", "-m", "pip", "install", "-q", "--user", f"uv=={pod.UV_VERSION}"]
  # No uv yet, so its version is not asked of it: python, venv and packages are installed.
  assert [line.split()[0] for line in first] == ["python", "venv", "pip"]
  assert first[1].endswith(f"--managed-python --python {pod.PYTHON_VERSION} {home}/vlm_venv")
  assert "-c constraints.txt -c constraints-tpu.txt --exclude-newer 2026-12-01T00:00:00Z -e .[tpu]" in first[2]

  os.remove(home / "bootstrap.log")
  out, second = run_once()
  assert not (home / "bootstrap.log").exists()  # uv is there at the pinned version
  assert [line.split()[0] for line in second] == ["--version", "python"]  # no venv, no package install
  assert "packages already installed" in out

  # A changed constraints file changes the stamp: the packages are installed again, the venv is kept.
  with open(home / "vlm" / "constraints-tpu.txt", "a") as f:
    f.write("# changed\n")
  _, third = run_once()
  assert [line.split()[0] for line in third] == ["--version", "python", "pip"]


def test_check_script_reports_and_fails_on_a_mismatch(tmp_path):
  """The check script on this machine (one process, CPU), jax.distributed.initialize() made a no-op."""
  pod = _launcher()
  script = tmp_path / "check.py"
  script.write_text("import jax\njax.distributed.initialize = lambda: None\n" + pod.CHECK_PY)
  good = tmp_path / "good.txt"
  good.write_text(f"jax=={importlib.metadata.version('jax')}\njaxlib=={importlib.metadata.version('jaxlib')}\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(script), platform.python_version(), str(good)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert re.search(r"\[check\] worker 0/1 .*python \d+\.\d+\.\d+, jax .*jax\.device_count\(\)=\d+", proc.stdout)
  tpu = tmp_path / "tpu.txt"
  tpu.write_text("libtpu==0.0.42.1\n")
  proc = subprocess.run([sys.executable, str(script), "3.11.18", str(good), str(tpu)], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert "libtpu missing (want 0.0.42.1)" in proc.stderr
  if platform.python_version() != "3.11.18":
    assert "(want 3.11.18)" in proc.stderr
