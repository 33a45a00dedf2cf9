"""Flags and helpers shared by the command-line tools.

`--config` and `--json` are defined here, once, so that tool modules can import each other (and tests can import
them all) without defining a flag twice; each tool defines only its own extra flags.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from absl import flags
import jax
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and argument: FILE:ARG.", lock_config=True)
JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")


def cost_flops(compiled) -> float:
  """FLOPs of a compiled computation over all the devices it runs on, from XLA's cost analysis.

  XLA analyses the partitioned (SPMD) program that each device runs: a matmul whose batch is sharded over 8
  devices reports 1/8 of its FLOPs. So the per-device count is multiplied by the number of devices in the
  computation (read from its input shardings); work every device repeats (a replicated optimizer update) is thus
  counted once per device.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
    analysis = analysis[0] if analysis else {}
  devices = max((len(s.device_set) for s in jax.tree.leaves(compiled.input_shardings)), default=1)
  return float((analysis or {}).get("flops", 0.0)) * devices


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
  """Median wall time of fn() (blocked until ready) over `repeats` runs, and every run's time."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def allocator() -> str:
  """The malloc in use: the preloaded allocator this process has mapped ('glibc malloc' when none)."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:  # not Linux
    return "system malloc"
  for name, label in (("tbbmalloc_proxy", "oneTBB tbbmalloc"), ("tcmalloc", "tcmalloc"), ("jemalloc", "jemalloc"),
                      ("mimalloc", "mimalloc")):
    if name in maps:
      return label
  return "glibc malloc"
