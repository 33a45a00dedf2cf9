"""One training run per workdir: a lock file that refuses a second run, and never blocks a restart.

`WorkdirLock(workdir)` (process 0 only; a context manager) creates `<workdir>/run.lock` atomically (O_EXCL) with
the owner's host, pid and start time, and refreshes its modification time every `heartbeat_seconds` from a daemon
thread. A second run finds the file and:
  * refuses, naming the owner, when the owner is alive: same host and its pid exists, or another host whose
    heartbeat is younger than `stale_seconds`;
  * takes the lock over (with a warning) when it is stale: the pid is gone (kill -9, a crash, a reboot) or, for
    another host, no heartbeat for `stale_seconds` (a preempted VM).
Releasing deletes the file. Object-store workdirs (gs://...) have no atomic create here and are not locked.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

from absl import logging

LOCK_NAME = "run.lock"


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """See the module docstring."""

  def __init__(self, workdir: str, *, heartbeat_seconds: float = 30.0, stale_seconds: float = 180.0):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.enabled = "://" not in workdir
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self._stop = threading.Event()
    self._thread = None

  def _owner(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

  def _stale_reason(self) -> str | None:
    """Why the existing lock may be taken over, or None when its owner is alive."""
    try:
      with open(self.path) as f:
        owner = json.load(f)
      age = time.time() - os.path.getmtime(self.path)
    except (OSError, ValueError):
      return "the lock file is unreadable (a crash while writing it)"
    if owner.get("host") == socket.gethostname():
      if owner.get("pid") == os.getpid():
        return "it is this process's own lock"
      return None if _alive(int(owner.get("pid", -1))) else f"its process {owner.get('pid')} is gone"
    return None if age < self.stale_seconds else f"no heartbeat from {owner.get('host')} for {age:.0f} s"

  def acquire(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        reason = self._stale_reason()
        if reason is None:
          with open(self.path) as f:
            owner = f.read().strip()
          raise WorkdirBusyError(
              f"The workdir {os.path.dirname(self.path)} is in use by another run ({owner}). Two runs on one "
              "workdir would overwrite each other's checkpoints: wait for it to finish, stop it, or use another "
              f"--workdir. If no run is active, delete {self.path}.") from None
        logging.warning("Taking over the stale lock %s: %s.", self.path, reason)
        os.remove(self.path)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self._owner(), f)
      self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock-heartbeat")
      self._thread.start()
      return self
    raise WorkdirBusyError(f"Could not take the lock {self.path} (another run took it at the same moment).")

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      try:
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    if not self.enabled or self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=5)
    self._thread = None
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> bool:
    self.release()
    return False
