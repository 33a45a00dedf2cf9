"""Metric writing: clu writers (TensorBoard + console) and a JSON-lines file, plus progress and ETA.

Process 0 writes TensorBoard event files and WORKDIR/metrics.jsonl; other processes only log to their
console (`just_logging=True`), so a pod run writes each file once.

metrics.jsonl has one JSON object per write, e.g. `{"step": 100, "train/loss": 1.23, "train/lr": 1e-4}`.
A resumed run appends: steps between the last checkpoint and the interruption appear twice, and readers
should keep the last record of a step (`read_jsonl` does).
"""
from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any, Mapping

from absl import logging
from clu import metric_writers
from etils import epath
import numpy as np

JSONL_NAME = "metrics.jsonl"


def _scalar(value: Any) -> float | int:
  value = np.asarray(value)
  return value.item() if value.size == 1 else float(value.mean())


class MetricLogger:
  """Writes scalars to clu's default writer and, on process 0, to metrics.jsonl."""

  def __init__(self, workdir: str, *, is_main: bool):
    self._writer = metric_writers.create_default_writer(
        workdir, just_logging=not is_main, asynchronous=True)
    self._path = epath.Path(workdir) / JSONL_NAME if is_main else None
    # Local files are appended line by line; object stores (gs://) cannot append, so their file is
    # rewritten from the records kept in memory at every flush.
    self._local = self._path is not None and not str(self._path).startswith(("gs://", "s3://"))
    self._records: list[str] = []
    if self._path is not None and not self._local and self._path.exists():
      self._records = self._path.read_text().splitlines()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: _scalar(v) for k, v in scalars.items()}
    self._writer.write_scalars(int(step), scalars)
    if self._path is not None:
      line = json.dumps({"step": int(step), **scalars})
      if self._local:
        _append_line(str(self._path), line)
      else:
        self._records.append(line)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self._writer.write_hparams(dict(hparams))

  def flush(self) -> None:
    self._writer.flush()
    if self._path is not None and not self._local:
      self._path.write_text("\n".join(self._records) + "\n")

  def close(self) -> None:
    self.flush()
    self._writer.close()


def _append_line(path: str, line: str) -> None:
  """Appends one line with a single O_APPEND write (whole or nothing on a local disk). A file whose last line was
  torn by a crash or a full disk gets a newline first, so the torn line never swallows the new one."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    prefix = ""
    if size:
      with open(path, "rb") as f:
        f.seek(size - 1)
        prefix = "" if f.read(1) == b"\n" else "\n"
    os.write(fd, (prefix + line + "\n").encode())
  finally:
    os.close(fd)


def read_jsonl(path: str) -> dict[int, dict[str, Any]]:
  """`{step: merged record}` from a metrics.jsonl; later records of a step win (resumed runs).

  A line that is not JSON (torn by a crash or a full disk) is skipped with a warning that counts them.
  """
  out: dict[int, dict[str, Any]] = {}
  torn = 0
  for line in epath.Path(path).read_text().splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      torn += 1
      continue
    out.setdefault(record["step"], {}).update(record)
  if torn:
    logging.warning("%s: skipped %d torn line(s) (a crash or a full disk while writing).", path, torn)
  return out


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """Flat `{'optim.lr': 1e-4, ...}` with scalar values (others as strings), for `write_hparams`."""
  items = config.items() if hasattr(config, "items") else []
  out = {}
  for key, value in items:
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(flatten_config(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      out[name] = value
    else:
      out[name] = str(value)
  return out


class Progress:
  """Steps per second and ETA between reports; the clock starts after the first (compiling) step."""

  def __init__(self, total_steps: int, batch_size: int):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_time = None
    self._last_step = None
    self._start = time.time()

  def start(self, step: int) -> None:
    self._last_time, self._last_step = time.time(), step

  def report(self, step: int) -> dict[str, float]:
    """Rates since the previous report (empty before `start`)."""
    if self._last_time is None:
      return {}
    now = time.time()
    steps, seconds = step - self._last_step, max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    if steps <= 0:
      return {}
    rate = steps / seconds
    eta = (self.total_steps - step) / rate
    logging.info("step %d/%d: %.3g steps/s, ETA %s (uptime %s).", step, self.total_steps, rate,
                 datetime.timedelta(seconds=round(eta)),
                 datetime.timedelta(seconds=round(now - self._start)))
    return {"train/steps_per_sec": rate, "train/examples_per_sec": rate * self.batch_size,
            "train/eta_hours": eta / 3600.0}
