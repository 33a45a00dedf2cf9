"""Console output of the command line (`vlm.main`): the run's own lines, not its libraries' chatter.

By default (no `--verbosity` on the command line) the console shows:
  * every line vlm logs itself (devices, mesh, parameter count, progress with ETA, evaluation results) and the
    metric lines of clu's logging writer (`[step] train/loss=..., ...`), the line `write_scalars` produces;
  * orbax's one line per finished checkpoint save (`Finished saving checkpoint ... to <workdir>/checkpoints/N`);
  * WARNING and above from every library, except jax's platform probing (which backends could not start: the
    devices actually used are in vlm's own line `JAX process 0/1, local devices [...]`).
Dropped: other libraries' INFO lines (orbax writes dozens per checkpoint save and restore, clu a table of every
parameter array, jax its backend probing) and TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, cuInit),
written to the process's stderr by native code before Python logging can see them. Later TensorFlow C++ lines
are limited to errors (`TF_CPP_MIN_LOG_LEVEL=2`, unless the environment sets it).

`--verbosity=N` (absl's flag, also `-v N`) turns all of this off and leaves absl's own behaviour: `--verbosity=0`
shows every library's INFO lines, `--verbosity=1` DEBUG, `--verbosity=-1` warnings only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator

from absl import flags
from absl import logging as absl_logging

_VLM_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# clu's LoggingWriter: the console form of `MetricLogger.write_scalars` (vlm/train/metrics.py).
_METRIC_WRITER = os.path.join("clu", "metric_writers", "logging_writer.py")
# Loggers whose warnings are start-up probing, not about the run.
_PROBING_LOGGERS = ("jax._src.xla_bridge",)
# Library INFO lines a user wants to see: one per completed checkpoint (orbax's async save thread).
_KEPT_LIBRARY_INFO = ("Finished saving checkpoint",)


def verbose_requested() -> bool:
  """Whether `--verbosity` / `-v` was given on the command line (flags must be parsed)."""
  return bool(flags.FLAGS["verbosity"].present)


class ConsoleFilter(logging.Filter):
  """Passes vlm's own records, the metric writer's, and other libraries' warnings (see the module docstring)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name.startswith(_PROBING_LOGGERS):
      return record.levelno >= logging.ERROR
    if record.levelno >= logging.WARNING:
      return True
    # absl logs every module through its one "absl" logger: the caller's file tells whose line it is.
    path = record.pathname or ""
    if path.startswith(_VLM_DIR) or path.endswith(_METRIC_WRITER) or record.name.split(".")[0] == "vlm":
      return True
    message = record.getMessage()
    return any(kept in message for kept in _KEPT_LIBRARY_INFO)


def setup_console(verbose: bool) -> None:
  """Installs `ConsoleFilter` on absl's handler unless `verbose`; call it after the flags are parsed."""
  handler = absl_logging.get_absl_handler()
  for existing in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
    handler.removeFilter(existing)
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler.addFilter(ConsoleFilter())


@contextlib.contextmanager
def native_stderr_swallowed(enabled: bool = True) -> Iterator[None]:
  """Swallows what native code writes to the process's stderr (fd 2) inside the block, e.g. TensorFlow's import.

  Those lines are written by C++ logging before any Python filter or TF_CPP_MIN_LOG_LEVEL applies. If the block
  raises, they are written out after all: they may say why it failed.
  """
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  captured = tempfile.TemporaryFile()
  os.dup2(captured.fileno(), 2)
  failed = True
  try:
    yield
    failed = False
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    if failed:
      captured.seek(0)
      os.write(2, captured.read())
    captured.close()
