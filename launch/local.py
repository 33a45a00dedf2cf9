r"""Runs `python -m vlm.main` as N processes on this machine, as a multi-host job would run.

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      --config=tests/toy_task.py:steps=6 --workdir=/tmp/toy_2x4

Every process gets `--distributed --coordinator_address=127.0.0.1:<free port> --num_processes=N
--process_id=i` and, with --devices_per_process, `XLA_FLAGS=--xla_force_host_platform_device_count=<k>` and
`JAX_PLATFORMS=cpu`, so N processes x k fake CPU devices form one global mesh (collectives over gloo). Output
is streamed line by line with a `[p<i>]` prefix (and kept in --log_dir if given).

If any process fails, the others would wait forever in a collective: they get --grace_s seconds, then are
terminated. The whole run is bounded by --timeout_s. Exit status: 0 when all succeed, else the first
non-zero status (124 on timeout). Run from the repository root (configs and dotted names resolve from it).
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices_per_process: int | None) -> dict[str, str]:
  env = dict(os.environ)
  if devices_per_process:
    # Replace any device count already in XLA_FLAGS (e.g. the 8 of tests/conftest.py).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
    env["JAX_PLATFORMS"] = "cpu"
  return env


def _stream(proc: subprocess.Popen, prefix: str, log_file) -> None:
  for line in iter(proc.stdout.readline, ""):
    sys.stdout.write(f"{prefix} {line}")
    sys.stdout.flush()
    if log_file:
      log_file.write(line)
      log_file.flush()


def launch(main_args: list[str], *, num_processes: int, devices_per_process: int | None,
           timeout_s: float, grace_s: float = 20.0, log_dir: str | None = None,
           module: str = "vlm.main") -> int:
  """Starts the processes, streams their output and returns the combined exit status."""
  port = free_port()
  env = process_env(devices_per_process)
  procs, threads, logs = [], [], []
  for i in range(num_processes):
    cmd = [sys.executable, "-u", "-m", module, *main_args, "--distributed",
           f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}", f"--process_id={i}"]
    log_file = None
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
      log_file = open(os.path.join(log_dir, f"process_{i}.log"), "w")
      logs.append(log_file)
    # Own process group, so a timeout can end the process and anything it started, and nothing else.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    procs.append(proc)
    thread = threading.Thread(target=_stream, args=(proc, f"[p{i}]", log_file), daemon=True)
    thread.start()
    threads.append(thread)
  print(f"[launch] {num_processes} processes, coordinator 127.0.0.1:{port}: "
        f"{' '.join([module, *main_args])}", flush=True)

  deadline = time.time() + timeout_s
  status, failed_at = 0, None
  while any(p.poll() is None for p in procs):
    now = time.time()
    for i, p in enumerate(procs):
      if p.returncode not in (None, 0) and failed_at is None:
        print(f"[launch] process {i} exited with status {p.returncode}; stopping the others in {grace_s}s.",
              flush=True)
        status, failed_at = p.returncode, now
    if now > deadline:
      print(f"[launch] timeout after {timeout_s}s; terminating.", flush=True)
      status = 124
      break
    if failed_at is not None and now - failed_at > grace_s:
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, 15)
      except ProcessLookupError:
        pass
  for p in procs:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, 9)
      p.wait()
  for t in threads:
    t.join(timeout=5)
  for f in logs:
    f.close()
  if status == 0:
    status = next((p.returncode for p in procs if p.returncode), 0)
  print(f"[launch] exit statuses {[p.returncode for p in procs]} -> {status}", flush=True)
  return status


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=None,
                      help="fake CPU devices per process (sets XLA_FLAGS and JAX_PLATFORMS=cpu)")
  parser.add_argument("--timeout_s", type=float, default=600.0)
  parser.add_argument("--grace_s", type=float, default=20.0)
  parser.add_argument("--log_dir", default=None)
  parser.add_argument("--module", default="vlm.main")
  argv = list(sys.argv[1:] if argv is None else argv)
  # Everything after the first `--` belongs to vlm.main.
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  args.main_args = argv[split + 1:]
  return launch(args.main_args, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                timeout_s=args.timeout_s, grace_s=args.grace_s, log_dir=args.log_dir, module=args.module)


if __name__ == "__main__":
  sys.exit(main())
