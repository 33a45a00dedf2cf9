r"""Time the jitted train step of a config and report its model-FLOP utilisation (MFU) in one run.

  python -m vlm.tools.bench --config=configs/vatt/pretrain.py:BBS --config.input.batch_size=4 [--json]
  python -m vlm.tools.bench --config=configs/vatt/pretrain.py:BBS --objective=video_tower   # one tower only

Steps:
  1. the train step (forward + backward + optimizer update, the trainer's own jitted step with its shardings and
     donated state) on a synthetic batch of `config.input.batch_size`, compiled, warmed up, then timed
     `--steps` times (median, at least 5);
  2. peak: after every timed step, the FLOP/s of a large matmul on this device (median of 5 runs; 2048^2 float32
     on CPU, 8192^2 bfloat16 on accelerators, or --peak_dtype / --peak_n);
  3. model FLOPs of one step from XLA's cost analysis of the compiled step (all devices: `common.cost_flops`);
  4. examples/s, achieved FLOP/s = FLOPs / median step time, and MFU: the median over the timed steps of
     (FLOPs / that step's time) / (the peak measured right after it x the number of devices). Step and peak take
     turns so that both see the same machine: on a shared 2-core VM the matmul rate moved between 78 and 169
     GFLOP/s within one minute, and a peak taken once before (or the best of before and after) paired a step with
     a machine state it never ran in. `mfu_vs_best_peak` (achieved / the highest peak read) is the conservative
     bound, also printed.

Memory allocator (CPU): XLA:CPU allocates and frees hundreds of MB per step; under glibc malloc that memory goes
back to the kernel and is faulted in again (a third of the VATT-B step was system time here). The command
line preloads oneTBB's allocator (vlm/allocator.py; `VLM_MALLOC=system` opts out); tcmalloc preloaded by hand
(`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4`) measured 1.3-1.55x faster than glibc on a
12-layer ViT-B step. The report names the allocator in use.

`--baseline=FILE:ARG` (with `--baseline_objective`, `--baseline.x=y` overrides) times a second config in the same
run and prints the ratios that compare two models: FLOPs ratio (baseline / this, from XLA's cost analysis),
step-time ratio (baseline / this: the measured speed-up) and their quotient (1.0 = the speed-up the FLOPs
promise), e.g. TubeViT-B against a dense ViT-B, or sparse against dense attention:

  python -m vlm.tools.bench --config=configs/tubevit/kinetics.py:B --baseline=configs/tubevit/kinetics.py:B,dense

`--objective=NAME` times a partial objective the task exposes in `task.bench_objectives()` (e.g. VATT's
`video_tower`: the video transformer alone, trained through a stand-in loss) instead of the full loss.
No data pipeline runs: inputs are random arrays with the task's `dummy_batch` shapes.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from vlm import protocols
from vlm.tools import common

_STEPS = flags.DEFINE_integer("steps", 7, "Timed steps after compilation and warm-up (median reported; >= 5).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_OBJECTIVE = flags.DEFINE_string("objective", None, "A partial objective from task.bench_objectives().")
_PEAK_N = flags.DEFINE_integer("peak_n", 0, "Matmul size for the peak (0: 2048 on CPU, 8192 elsewhere).")
_BASELINE = config_flags.DEFINE_config_file("baseline", None, "Optional second config (FILE:ARG) timed in the "
                                           "same run for FLOPs and step-time ratios.", lock_config=True)
_BASELINE_OBJECTIVE = flags.DEFINE_string("baseline_objective", None, "--objective for the baseline config.")
_PEAK_DTYPE = flags.DEFINE_string("peak_dtype", "", "Matmul dtype for the peak ('' : float32 on CPU, else bf16).")


class MatmulPeak:
  """The MFU denominator, measured, not quoted: FLOP/s of an n x n x n matmul on the default device.

  Built (and compiled, warmed up) once; each call measures again: `meter(repeats)` is the median FLOP/s of
  `repeats` runs.
  """

  def __init__(self, n: int = 0, dtype: str = ""):
    cpu = jax.default_backend() == "cpu"
    self.n = n or (2048 if cpu else 8192)
    self.dtype = dtype or ("float32" if cpu else "bfloat16")
    ka, kb = jax.random.split(jax.random.key(0))
    self._a = jax.random.normal(ka, (self.n, self.n), self.dtype)
    self._b = jax.random.normal(kb, (self.n, self.n), self.dtype)
    self._matmul = jax.jit(lambda x, y: x @ y)
    for _ in range(3):  # compile, then warm up
      jax.block_until_ready(self._matmul(self._a, self._b))

  @property
  def name(self) -> str:
    return f"{self.n}^3 {self.dtype}"

  def __call__(self, repeats: int = 5) -> float:
    med, _ = common.median_seconds(lambda: self._matmul(self._a, self._b), repeats)
    return 2.0 * self.n ** 3 / med


def measure_matmul_peak(n: int = 0, dtype: str = "", repeats: int = 10) -> dict[str, Any]:
  """Median FLOP/s of an n x n x n matmul measured now (one reading; `bench` interleaves readings with steps)."""
  meter = MatmulPeak(n, dtype)
  return {"peak_flops_per_s": meter(repeats), "peak_matmul": meter.name}


def synthetic_batch(task, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`task.dummy_batch` shapes filled with plausible values: floats in [-1, 1], masks 1, ids in [1, 100)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, value in task.dummy_batch(batch_size).items():
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
      continue
    if "mask" in key:
      out[key] = np.ones_like(value)
    elif value.dtype.kind == "f":
      out[key] = rng.uniform(-1, 1, value.shape).astype(value.dtype)
    else:
      out[key] = rng.integers(1, 100, value.shape).astype(value.dtype)
  return out


def objective_task(task, name: str):
  """`task.bench_objectives()[name]`: an object with the task protocol's dummy_batch / init_variables / loss_fn."""
  objectives = task.bench_objectives() if isinstance(task, protocols.PartialObjectives) else {}
  if name not in objectives:
    raise ValueError(f"--objective={name!r}: the task offers {sorted(objectives) or 'none'}.")
  return objectives[name]


def bench(config, *, steps: int = 7, warmup: int = 2, objective: str | None = None, peak_n: int = 0,
          peak_dtype: str = "") -> dict[str, Any]:
  """Measures the peak, then the train step; returns every figure (see the module docstring)."""
  from vlm.parallel import multihost  # pylint: disable=g-import-not-at-top
  from vlm.train import step as step_lib  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  if steps < 5:
    raise ValueError(f"--steps={steps}: at least 5 timed steps are needed for a meaningful median.")
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  if objective:
    task = objective_task(task, objective)
  spec = trainer.build_state_spec(config, task, setup, int(config.get("total_steps", 1) or 1))
  batch_size = int(config.input.batch_size)
  batch = multihost.global_batch(synthetic_batch(task, batch_size // jax.process_count()), setup.batch_sharding)
  with setup.context():
    state = spec.init()
    train_step = step_lib.make_train_step(task, spec.tx, spec.schedule, int(config.get("seed", 0)))
    jitted = step_lib.jit_train_step(train_step, spec.shardings, setup.batch_sharding, setup.mesh)
    start = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    flops = common.cost_flops(compiled)  # the whole step, every device's share
    devices = setup.mesh.size  # the MFU denominator is the per-device peak times this
    holder = {"state": state}

    def run():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics

    for _ in range(warmup):
      jax.block_until_ready(run())
    meter = MatmulPeak(peak_n, peak_dtype)
    times, peaks = [], []
    for _ in range(steps):  # step and peak take turns (module docstring, item 4)
      times.append(common.median_seconds(run, 1)[0])
      peaks.append(meter())
  med = statistics.median(times)
  achieved = flops / med
  return {
      "config": f"{config.model.get('name', '?')} / {objective or config.task.get('name', '?')}",
      "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
      "allocator": common.allocator(),
      "batch_size": batch_size,
      "compile_seconds": compile_s,
      "step_seconds_median": med,
      "step_seconds_all": times,
      "examples_per_s": batch_size / med,
      "model_flops_per_step": flops,
      "achieved_flops_per_s": achieved,
      "peak_matmul": meter.name,
      "devices": devices,
      "peak_flops_per_s": statistics.median(peaks),  # one device
      "peak_flops_per_s_all": peaks,
      "mfu": statistics.median(flops / t / (p * devices) for t, p in zip(times, peaks)),
      "mfu_vs_best_peak": achieved / (max(peaks) * devices),
  }


def compare(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
  """Ratios of two `bench` reports: FLOPs and step time of the baseline over the candidate, and their quotient."""
  flops_ratio = baseline["model_flops_per_step"] / report["model_flops_per_step"]
  time_ratio = baseline["step_seconds_median"] / report["step_seconds_median"]
  return {"flops_ratio": flops_ratio, "step_time_ratio": time_ratio,
          "speedup_vs_flops_ideal": time_ratio / flops_ratio}


def _print_report(report: dict[str, Any]) -> None:
  print(f"== {report['config']} on {report['device']}, batch {report['batch_size']}, {report['allocator']}")
  print(f"compile {report['compile_seconds']:.1f}s; step median {report['step_seconds_median'] * 1e3:.1f} ms "
        f"over {len(report['step_seconds_all'])} steps -> {report['examples_per_s']:.2f} examples/s")
  print(f"model FLOPs per step (XLA cost analysis): {report['model_flops_per_step'] / 1e9:.2f} GFLOP")
  peaks = [p / 1e9 for p in report["peak_flops_per_s_all"]]
  per_device = f" per device, x{report['devices']}" if report["devices"] > 1 else ""
  print(f"achieved {report['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; peak ({report['peak_matmul']} matmul after "
        f"each step) median {report['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (range {min(peaks):.1f}-{max(peaks):.1f})"
        f"{per_device}")
  print(f"MFU {report['mfu']:.3f} (median over steps of step FLOP/s / the peak read after it); "
        f"against the best peak read: {report['mfu_vs_best_peak']:.3f}")


def main(argv):
  del argv
  kwargs = dict(steps=_STEPS.value, warmup=_WARMUP.value, peak_n=_PEAK_N.value, peak_dtype=_PEAK_DTYPE.value)
  report = bench(common.CONFIG.value, objective=_OBJECTIVE.value, **kwargs)
  if _BASELINE.value is not None:
    baseline = bench(_BASELINE.value, objective=_BASELINE_OBJECTIVE.value, **kwargs)
    report = {"candidate": report, "baseline": baseline, **compare(report, baseline)}
  if common.JSON.value:
    json.dump(report, sys.stdout, indent=1)
    print()
    return
  if "baseline" not in report:
    _print_report(report)
    return
  _print_report(report["candidate"])
  print("-- baseline:")
  _print_report(report["baseline"])
  print(f"baseline / candidate: FLOPs {report['flops_ratio']:.2f}x, step time {report['step_time_ratio']:.2f}x; "
        f"speed-up / FLOPs ideal = {report['speedup_vs_flops_ideal']:.2f}")


if __name__ == "__main__":
  from vlm import allocator  # pylint: disable=g-import-not-at-top
  allocator.reexec_with_fast_malloc()
  flags.mark_flag_as_required("config")
  app.run(main)
