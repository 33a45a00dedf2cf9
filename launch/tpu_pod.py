r"""Runs vlm on a Cloud TPU VM (single host or pod slice): create-or-reuse, install, run on all workers, tear down.

  # Everything: create (or reuse) the TPU, copy this checkout to every worker, install, train, then delete.
  python launch/tpu_pod.py all --name=vlm-v4-32 --zone=us-central2-b --accelerator_type=v4-32 \
      --teardown=delete -- --config=configs/vatt/pretrain.py:BBS --workdir=gs://BUCKET/vatt/run1

  python launch/tpu_pod.py create|install|run|stop|delete|status --name=... --zone=... [-- vlm.main args]
  python launch/tpu_pod.py all ... --dry_run       # print the gcloud commands, run nothing

Steps:
  create   `gcloud compute tpus tpu-vm describe`; if the TPU does not exist, `... tpu-vm create` with
           --accelerator_type / --version (and --spot / --reserved).
  install  --repo URL: `git clone` (at --ref) on every worker; otherwise this checkout's HEAD
           (`git archive`) is copied with `tpu-vm scp --worker=all`. Then `pip install -e .[tpu]` in a venv.
  run      the same `python -m vlm.main ARGS --distributed` on every worker (`ssh --worker=all`), which
           starts `jax.distributed` by TPU auto-detection; output of all workers is streamed and also kept
           in ~/vlm_run.log on each worker. The workdir must be shared storage (gs://): each host writes its
           own checkpoint shards and data-iterator position, process 0 writes metrics.
  stop / delete   after `all`, chosen by --teardown (keep | stop | delete).
"""
import argparse
import os
import shlex
import subprocess
import sys
import tempfile

REMOTE_DIR = "~/vlm"
REMOTE_VENV = "~/vlm_venv"


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


def _tpu(args, verb: str, *extra: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd + list(extra)


def _ssh(args, command: str) -> list[str]:
  return _tpu(args, "ssh", "--worker=all", f"--command={command}")


def create(args, run: Runner) -> None:
  exists = run(_tpu(args, "describe", "--format=value(state)"), check=False) == 0
  if exists and not run.dry_run:
    print(f"[tpu_pod] reusing existing TPU {args.name}", flush=True)
    return
  if run.dry_run:
    print("# (create runs only if describe fails)", flush=True)
  extra = [f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
  if args.spot:
    extra.append("--spot")
  if args.reserved:
    extra.append("--reserved")
  run(_tpu(args, "create", *extra))


def install(args, run: Runner) -> None:
  if args.repo:
    fetch = (f"rm -rf {REMOTE_DIR} && git clone {shlex.quote(args.repo)} {REMOTE_DIR} && "
             f"cd {REMOTE_DIR} && git checkout {shlex.quote(args.ref)}")
    run(_ssh(args, fetch))
  else:
    archive = os.path.join(tempfile.gettempdir(), f"vlm_{os.getpid()}.tar.gz")
    run(["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"])
    scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:/tmp/vlm.tar.gz",
           "--worker=all", f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    run(scp)
    run(_ssh(args, f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf /tmp/vlm.tar.gz -C {REMOTE_DIR}"))
  setup = (f"python3 -m venv {REMOTE_VENV} && {REMOTE_VENV}/bin/pip install -q -U pip && "
           f"cd {REMOTE_DIR} && {REMOTE_VENV}/bin/pip install -q -e '.[tpu]'")
  run(_ssh(args, setup))


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
  parser.add_argument("action", choices=["all", "create", "install", "run", "stop", "delete", "status"])
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument("--accelerator_type", default="v4-8")
  parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime image")
  parser.add_argument("--spot", action="store_true")
  parser.add_argument("--reserved", action="store_true")
  parser.add_argument("--repo", default=None, help="git URL to clone on the workers (default: copy HEAD)")
  parser.add_argument("--ref", default="main")
  parser.add_argument("--teardown", choices=["keep", "stop", "delete"], default="keep",
                      help="after `all`: leave the TPU, stop it, or delete it")
  parser.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
  argv = list(sys.argv[1:] if argv is None else argv)
  # Everything after the first `--` belongs to vlm.main.
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.main_args = argv[split + 1:]
  run = Runner(args.dry_run)

  status = 0
  if args.action == "status":
    return run(_tpu(args, "describe"), check=False)
  if args.action in ("all", "create"):
    create(args, run)
  if args.action in ("all", "install"):
    install(args, run)
  if args.action in ("all", "run"):
    status = run_training(args, run)
    print(f"[tpu_pod] training exited with status {status}", flush=True)
  if args.action == "stop" or (args.action == "all" and args.teardown == "stop"):
    run(_tpu(args, "stop", "--quiet"))
  if args.action == "delete" or (args.action == "all" and args.teardown == "delete"):
    run(_tpu(args, "delete", "--quiet"))
  return status


if __name__ == "__main__":
  sys.exit(main())
