r"""Runs vlm on a Cloud TPU VM (single host or pod slice): create-or-reuse, install, check, run on all workers,
tear down.

  # Everything: create (or reuse) the TPU, copy this checkout to every worker, install, check, train, delete.
  python launch/tpu_pod.py all --name=vlm-v4-32 --zone=us-central2-b --accelerator_type=v4-32 \
      --teardown=delete -- --config=configs/vatt/pretrain.py:BBS --workdir=gs://BUCKET/vatt/run1

  python launch/tpu_pod.py create|install|check|run|stop|delete|status --name=... --zone=... [-- vlm.main args]
  python launch/tpu_pod.py all ... --dry_run       # print the commands, run nothing (needs no gcloud)

Images and Python:
  The TPU VM runtime image defaults to the one Cloud TPU names for JAX on the accelerator's generation:
  v2 / v3 / v4: tpu-ubuntu2204-base; v5e (v5litepod-N): v2-alpha-tpuv5-lite; v5p: v2-alpha-tpuv5;
  v6e: v2-alpha-tpuv6e (--version overrides). These are Ubuntu 22.04 images whose system Python is 3.10, and
  the pinned stack needs 3.11 or newer (jax 0.10.2 and libtpu 0.0.42 declare Requires-Python >=3.11). So the
  install step never uses the image's Python: it installs uv 0.13.9 (PyPI, user site; the uv installer script as
  the fallback) and with it a standalone CPython 3.11.18 (uv-managed, under ~/.local/share/uv), and builds the
  venv from that. Why this and not the alternatives: it needs no sudo, apt or PPA (deadsnakes needs both, and apt
  on a freshly booted TPU VM races unattended-upgrades for the dpkg lock); the interpreter's exact patch release
  is pinned, so every worker runs the same build whatever the image ships; and it is the minor version CI tests
  (constraints.txt is resolved on 3.11). Any image with bash, glibc >= 2.31 (libtpu's manylinux_2_31 wheels) and
  either `python3 -m pip` or curl works.

Steps:
  create   `gcloud compute tpus tpu-vm describe`: a READY TPU is reused, a STOPPED one is started; if there is
           none, `... tpu-vm create` with --accelerator_type / --version (and --spot / --reserved).
  install  --repo URL: `git clone` (at --ref) on every worker; otherwise this checkout's HEAD (`git archive`) is
           copied with `tpu-vm scp --worker=all`. Then on every worker, each part guarded so a re-run skips what
           is done: uv (skipped when ~/.local/bin/uv is 0.13.9), CPython 3.11.18 (`uv python install` is a no-op
           when present), the venv ~/vlm_venv (kept when its Python is 3.11.18), and
           `uv pip install -c constraints.txt -c constraints-tpu.txt --exclude-newer SNAPSHOT -e .[tpu]`, skipped
           when the stamp ~/vlm_venv/.vlm_install matches the hash of setup.py, both constraints files and the
           Python/uv pins (--reinstall forces it). constraints.txt is CI's pin set; constraints-tpu.txt adds the
           libtpu build. --index_snapshot (default: today, 00:00 UTC) is one upload-time cut-off for the whole
           index, so the packages neither file pins resolve to the same versions on every worker.
  check    on every worker, before training: prints the worker's Python, jax, jaxlib and libtpu versions,
           jax.device_count() (after jax.distributed.initialize(), so the whole slice), and a hash of its
           installed package set (equal on all workers when their installs agree); it fails when Python is not
           3.11.18 or jax / jaxlib / libtpu differ from the constraints files.
  run      the same `python -m vlm.main ARGS --distributed` on every worker (`ssh --worker=all`), which
           starts `jax.distributed` by TPU auto-detection; output of all workers is streamed and also kept
           in ~/vlm_run.log on each worker. The workdir must be shared storage (gs://): each host writes its
           own checkpoint shards and data-iterator position, process 0 writes metrics.
  stop / delete   after `all`, chosen by --teardown (keep | stop | delete).

A dry-run transcript is in docs/launch.md.
"""
import argparse
import datetime
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

REMOTE_DIR = "$HOME/vlm"
REMOTE_VENV = "$HOME/vlm_venv"
UV_VERSION = "0.13.9"
PYTHON_VERSION = "3.11.18"
CONSTRAINTS = ("constraints.txt", "constraints-tpu.txt")
# The Cloud TPU runtime image for JAX, by the accelerator type's generation prefix (v5e's types are v5litepod-N).
IMAGES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
          "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


class Runner:
  """Runs (or, in dry-run mode, prints) shell commands."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def __call__(self, cmd: list[str], *, check: bool = True) -> int:
    print("+ " + shlex.join(cmd), flush=True)
    if self.dry_run:
      return 0
    status = subprocess.call(cmd)
    if check and status:
      raise SystemExit(f"command failed with status {status}: {shlex.join(cmd)}")
    return status

  def output(self, cmd: list[str]) -> tuple[int, str]:
    """Runs `cmd` and returns (status, stripped stdout); in dry-run mode prints it and returns (0, "")."""
    print("+ " + shlex.join(cmd), flush=True)
    if self.dry_run:
      return 0, ""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    return proc.returncode, proc.stdout.strip()


def default_image(accelerator_type: str) -> str:
  generation = accelerator_type.split("-")[0]
  if generation not in IMAGES:
    raise SystemExit(f"--accelerator_type={accelerator_type}: no default runtime image for generation "
                     f"{generation!r} (known: {', '.join(IMAGES)}); pass --version=IMAGE.")
  return IMAGES[generation]


def index_snapshot(value: str | None) -> str:
  """--index_snapshot as the RFC 3339 UTC time uv's --exclude-newer takes (a date means its 00:00 UTC)."""
  if value is None:
    value = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
  try:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
      when = datetime.datetime.fromisoformat(value).replace(tzinfo=datetime.timezone.utc)
    else:
      when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
      if when.tzinfo is None:
        raise ValueError("no time zone")
  except ValueError as e:
    raise SystemExit(f"--index_snapshot={value}: expected YYYY-MM-DD or an RFC 3339 time with a zone ({e}).")
  return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tpu(args, verb: str, *extra: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + list(extra)


def _ssh(args, command: str) -> list[str]:
  return _tpu(args, "ssh", "--worker=all", f"--command={command}")


def create(args, run: Runner) -> None:
  status, state = run.output(_tpu(args, "describe", "--format=value(state)"))
  if run.dry_run:
    print("# (create runs only if describe finds no TPU; a STOPPED one is started instead)", flush=True)
  elif status == 0 and state == "READY":
    print(f"[tpu_pod] reusing existing TPU {args.name}", flush=True)
    return
  elif status == 0 and state == "STOPPED":
    run(_tpu(args, "start"))
    return
  elif status == 0:
    raise SystemExit(f"TPU {args.name} exists in state {state}: wait until it is READY (or delete it) and re-run.")
  extra = [f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
  if args.spot:
    extra.append("--spot")
  if args.reserved:
    extra.append("--reserved")
  run(_tpu(args, "create", *extra))


def setup_script(snapshot: str, *, reinstall: bool = False) -> str:
  """The bash script every worker runs after the code is in REMOTE_DIR: uv, CPython, venv, packages, each
  skipped when already done."""
  constraints = " ".join(f"-c {c}" for c in CONSTRAINTS)
  stamp_inputs = " ".join(("setup.py",) + CONSTRAINTS)
  return "\n".join([
      "set -euo pipefail",
      'UV="$HOME/.local/bin/uv"',
      f'if [ "$("$UV" --version 2>/dev/null | cut -d" " -f2)" != {UV_VERSION} ]; then',
      f"  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user uv=={UV_VERSION} || "
      f"curl -LsSf https://astral.sh/uv/{UV_VERSION}/install.sh | "
      'env UV_UNMANAGED_INSTALL="$HOME/.local/bin" sh',
      "fi",
      f'"$UV" python install {PYTHON_VERSION}',
      f'if [ "$({REMOTE_VENV}/bin/python -c "import platform; print(platform.python_version())" 2>/dev/null)" '
      f"!= {PYTHON_VERSION} ]; then",
      f'  "$UV" venv --clear --managed-python --python {PYTHON_VERSION} {REMOTE_VENV}',
      "fi",
      f"cd {REMOTE_DIR}",
      f'stamp=$( (echo "python={PYTHON_VERSION} uv={UV_VERSION} extra=tpu"; cat {stamp_inputs}) '
      "| sha256sum | cut -c1-16)",
      *([f"rm -f {REMOTE_VENV}/.vlm_install"] if reinstall else []),
      f'if [ "$(cat {REMOTE_VENV}/.vlm_install 2>/dev/null)" = "$stamp" ]; then',
      '  echo "[setup] $(hostname): packages already installed (stamp $stamp)"',
      "else",
      f'  "$UV" pip install --python {REMOTE_VENV}/bin/python {constraints} --exclude-newer {snapshot} '
      '-e ".[tpu]"',
      f'  echo "$stamp" > {REMOTE_VENV}/.vlm_install',
      "fi",
  ])


def install(args, run: Runner) -> None:
  if args.repo:
    fetch = (f"rm -rf {REMOTE_DIR} && git clone {shlex.quote(args.repo)} {REMOTE_DIR} && "
             f"cd {REMOTE_DIR} && git checkout {shlex.quote(args.ref)}")
    run(_ssh(args, fetch))
  else:
    archive = f"{tempfile.gettempdir()}/vlm_{args.name}.tar.gz"
    run(["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"])
    scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:/tmp/vlm.tar.gz",
           "--worker=all", f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    run(scp)
    run(_ssh(args, f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf /tmp/vlm.tar.gz -C {REMOTE_DIR}"))
  run(_ssh(args, setup_script(index_snapshot(args.index_snapshot), reinstall=args.reinstall)))


# Runs on every worker at once (jax.distributed.initialize() waits for all of them). Reads the pins from the
# worker's own checkout, so it checks what that checkout's install step was asked for.
CHECK_PY = """\
import hashlib, importlib.metadata as md, platform, re, socket, sys
want = {"python": sys.argv[1]}
for path in sys.argv[2:]:
  for line in open(path):
    m = re.match(r"([A-Za-z0-9_.-]+)==([^\\s;#]+)", line.strip())
    if m and m[1].lower() in ("jax", "jaxlib", "libtpu"):
      want[m[1].lower()] = m[2]
have = {"python": platform.python_version()}
for name in ("jax", "jaxlib", "libtpu"):
  try:
    have[name] = md.version(name)
  except md.PackageNotFoundError:
    have[name] = "missing"
packages = sorted(f"{d.name}=={d.version}".lower() for d in md.distributions())
digest = hashlib.sha256("\\n".join(packages).encode()).hexdigest()[:12]
versions = ", ".join(f"{k} {v}" for k, v in have.items())
import jax
jax.distributed.initialize()
kind = jax.devices()[0].device_kind
print(f"[check] worker {jax.process_index()}/{jax.process_count()} {socket.gethostname()}: {versions}; "
      f"jax.device_count()={jax.device_count()} ({jax.local_device_count()} local, {kind}); "
      f"{len(packages)} packages, hash {digest}", flush=True)
bad = [f"{k} {have.get(k)} (want {v})" for k, v in want.items() if have.get(k) != v]
if bad:
  sys.exit(f"[check] {socket.gethostname()}: version mismatch: " + ", ".join(bad))
"""


def check(args, run: Runner) -> int:
  command = (f"cd {REMOTE_DIR} && {REMOTE_VENV}/bin/python - {PYTHON_VERSION} {' '.join(CONSTRAINTS)} "
             f"<<\"EOF\"\n{CHECK_PY}EOF")
  return run(_ssh(args, command), check=False)


def run_training(args, run: Runner) -> int:
  main_args = list(args.main_args)
  if not main_args:
    raise SystemExit("run: give vlm.main arguments after `--` (at least --config and --workdir).")
  command = (f"cd {REMOTE_DIR} && {REMOTE_VENV}/bin/python -m vlm.main "
             + shlex.join(main_args + ["--distributed"]) + " 2>&1 | tee -a ~/vlm_run.log; "
             "exit ${PIPESTATUS[0]}")
  return run(_ssh(args, command), check=False)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("action", choices=["all", "create", "install", "check", "run", "stop", "delete", "status"])
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument("--accelerator_type", default="v4-8")
  parser.add_argument("--version", default=None,
                      help="TPU VM runtime image (default by generation: v2/v3/v4 tpu-ubuntu2204-base, v5litepod "
                           "v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e); the install step "
                           f"brings its own CPython {PYTHON_VERSION}, so the image's Python does not matter")
  parser.add_argument("--spot", action="store_true")
  parser.add_argument("--reserved", action="store_true")
  parser.add_argument("--repo", default=None, help="git URL to clone on the workers (default: copy HEAD)")
  parser.add_argument("--ref", default="main")
  parser.add_argument("--index_snapshot", default=None,
                      help="upload-time cut-off for packages the constraints files do not pin (uv --exclude-newer):"
                           " YYYY-MM-DD (00:00 UTC) or an RFC 3339 time; default today")
  parser.add_argument("--reinstall", action="store_true",
                      help="install: resolve and install the packages even where the install stamp matches")
  parser.add_argument("--teardown", choices=["keep", "stop", "delete"], default="keep",
                      help="after `all`: leave the TPU, stop it, or delete it")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the commands instead of running them (needs no gcloud)")
  argv = list(sys.argv[1:] if argv is None else argv)
  # Everything after the first `--` belongs to vlm.main.
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.main_args = argv[split + 1:]
  if args.version is None:
    args.version = default_image(args.accelerator_type)
  index_snapshot(args.index_snapshot)  # a malformed value fails here, before any TPU is created
  if not args.dry_run and shutil.which("gcloud") is None:
    raise SystemExit("gcloud not found on PATH: install the Google Cloud CLI and run `gcloud auth login`, "
                     "or pass --dry_run to print the commands.")
  if args.action in ("all", "run") and not args.main_args:
    raise SystemExit(f"{args.action}: give vlm.main arguments after `--` (at least --config and --workdir).")
  run = Runner(args.dry_run)

  status = 0
  if args.action == "status":
    return run(_tpu(args, "describe"), check=False)
  if args.action in ("all", "create"):
    create(args, run)
  if args.action in ("all", "install"):
    install(args, run)
  if args.action in ("all", "check"):
    status = check(args, run)
    if status:
      raise SystemExit(f"[tpu_pod] check failed on a worker (status {status}); TPU {args.name} is kept. "
                       "Re-run `install` (with --reinstall to force the packages), then `check`.")
  if args.action in ("all", "run"):
    status = run_training(args, run)
    if not run.dry_run:
      print(f"[tpu_pod] training exited with status {status}", flush=True)
  if args.action == "stop" or (args.action == "all" and args.teardown == "stop"):
    run(_tpu(args, "stop", "--quiet"))
  if args.action == "delete" or (args.action == "all" and args.teardown == "delete"):
    run(_tpu(args, "delete", "--quiet"))
  return status


if __name__ == "__main__":
  sys.exit(main())
