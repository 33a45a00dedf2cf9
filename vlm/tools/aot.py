r"""Compile a config's real train step for a TPU topology on any machine (ahead of time) and check it fits.

  python -m vlm.tools.aot --config=configs/vatt/pretrain.py:BBS --topology=v5e:4x4 [--json]
  python -m vlm.tools.aot --config=configs/vatt/pretrain.py:tiny --topology=v5e:2x2 --preset=fsdp
  python -m vlm.tools.aot --config=configs/tubevit/kinetics.py:size=B --topology=v5p:4x4x4 \
      --config.sharding=fsdp --config.mesh="(('data', 1), ('fsdp', -1), ('tensor', 1))" \
      --config.input.batch_size=256

Needs libtpu (`pip install -e ".[tpu]"`, i.e. jax[tpu]), not a TPU: `jax.experimental.topologies` describes the
topology's chips as compile-only devices, and XLA:TPU compiles for them on the CPU. Multi-host topologies
(v5e:4x4, v5p:4x4x4, v4:4x4x8, ...) compile the same way: the program is the one every host would run.

What is compiled: the trainer's own train step (`step.make_train_step` + `step.jit_train_step`: forward, backward,
optimizer update, the TrainState donated), on the mesh `trainer.setup_mesh` builds from config.mesh /
config.sharding over the topology's devices, with the TrainState `trainer.build_state_spec` describes. Inputs are
abstract (ShapeDtypeStructs carrying their shardings); the batch has `task.dummy_batch`'s shapes at
config.input.batch_size (global). Nothing is allocated. Three things differ from a run on the TPU itself, all so
that the program traced here is the one the TPU would trace:
  * `trainer.abstract_variables` places its small init batch with `multihost.global_array_from_full`, which a
    compile-only client cannot do; while the state spec is built that helper returns ShapeDtypeStructs (the init
    batch is only ever traced by `eval_shape`);
  * model code that picks a kernel by `jax.default_backend()` sees 'tpu' (the process's backend is the CPU);
  * `Setup.context()` puts the mesh in context as an abstract mesh (`jax.sharding.use_abstract_mesh`, which is
    all flax's activation constraints read) instead of `jax.set_mesh`, under which eager values (the trainer's
    init key) would be placed on the compile-only devices.
`--eval` also compiles the forward pass in eval mode (`task.loss_fn(train=False)`) at the same batch.

Printed (or `--json`): per-device memory from `compiled.memory_analysis()` (arguments, outputs, outputs aliased to
donated arguments, temporaries, generated code; live = arguments + outputs - aliased + temporaries + code) against
the chip's HBM (HBM_GIB), FLOPs from `compiled.cost_analysis()` (per device and for the step), the XLA TPU cost
model's estimated step time (`optimal_seconds`) and the MFU it implies against the chip's bf16 peak
(PEAK_BF16_TFLOPS; a negative `optimal_seconds` means the cost model could not estimate some op, and none is
shown), a roofline bound (max of FLOPs / peak and bytes accessed / HBM bandwidth: a lower bound on the step
time, so an upper bound on MFU), the parameter / optimizer-state sharding, and a verdict line:
`fits: yes (X GiB of Y GiB per chip, Z% headroom)` or `fits: NO (needs X GiB, chip has Y GiB)`.
The live figure is what XLA allocates for the step's buffers; the TPU runtime keeps a little HBM for itself, so
treat a headroom under ~5% as marginal.

libtpu takes /tmp/libtpu_lockfile, so a second AOT process fails while one runs; on a machine without TPUs,
ALLOW_MULTIPLE_LIBTPU_LOAD=1 lets several run at once (tests/test_tools_aot.py sets it).
"""
from __future__ import annotations

import collections
import contextlib
import json
import sys
import time
from typing import Any
from unittest import mock

from absl import app
from absl import flags
import jax
import numpy as np

from vlm.tools import common

_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v5e:2x2, v5e:4x4, v5p:2x2x1, "
                                "v5p:4x4x4, v4:2x2x1, v4:4x4x8, v6e:2x2 (as jax.experimental.topologies names it).")
_PRESET = flags.DEFINE_enum("preset", None, ["dp", "fsdp", "fsdp_tp"],
                            "Shorthand that sets config.sharding and a matching config.mesh: dp -> data=-1; "
                            "fsdp -> fsdp=-1; fsdp_tp -> fsdp=-1, tensor=--tensor. Unset: the config's own.")
_TENSOR = flags.DEFINE_integer("tensor", 2, "Size of the 'tensor' mesh axis for --preset=fsdp_tp.")
_EVAL = flags.DEFINE_bool("eval", False, "Also compile the eval-mode forward pass (loss_fn, train=False).")

GiB = 1024 ** 3

# HBM per chip, GiB, with the page that states it (Google Cloud TPU system-architecture pages).
HBM_GIB: dict[str, tuple[float, str]] = {
    "v4": (32, "cloud.google.com/tpu/docs/v4: 32 GiB HBM2 per chip"),
    "v5e": (16, "cloud.google.com/tpu/docs/v5e: 16 GiB HBM2 per chip"),
    "v5p": (95, "cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e per chip"),
    "v6e": (32, "cloud.google.com/tpu/docs/v6e: 32 GiB HBM per chip"),
}
# Peak dense bf16 matmul rate per chip, TFLOP/s, same pages.
PEAK_BF16_TFLOPS: dict[str, tuple[float, str]] = {
    "v4": (275, "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16 per chip"),
    "v5e": (197, "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16 per chip"),
    "v5p": (459, "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16 per chip"),
    "v6e": (918, "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16 per chip"),
}
# HBM bandwidth per chip, GB/s (1e9 bytes), same pages: only for the roofline bound (`_derive`).
HBM_GBPS: dict[str, float] = {"v4": 1200, "v5e": 819, "v5p": 2765, "v6e": 1640}
# jax's device_kind -> chip name of the tables above.
_DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                 "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
_EXAMPLE_TOPOLOGIES = "v5e:2x2, v5e:4x4, v5e:16x16, v5p:2x2x1, v5p:4x4x4, v4:2x2x1, v4:4x4x8, v6e:2x2"


# ============================================================================================== topology
def libtpu_version() -> str | None:
  """The installed libtpu's version, or None when it is not installed."""
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version("libtpu")
  except Exception:  # pylint: disable=broad-except
    return None


def topology_devices(name: str) -> list[Any]:
  """The compile-only devices of TPU topology `name` (one per chip; v4 as megacore chips).

  Raises:
    ValueError: libtpu is missing, or it does not know `name` (before anything is built or compiled).
  """
  if libtpu_version() is None:
    raise ValueError("AOT compilation for TPU needs libtpu: pip install -e '.[tpu]' (jax[tpu]); it runs on a "
                     "CPU-only machine, no TPU needed.")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {"chip_config_name": "megacore"} if name.lower().startswith("v4") else {}  # 1 device per v4 chip
  try:
    topology = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError / JaxRuntimeError)
    if "lockfile" in str(e):
      raise ValueError(f"--topology={name!r}: another process holds libtpu (/tmp/libtpu_lockfile). Run one AOT "
                       "compile at a time, or, on a machine without TPUs, set ALLOW_MULTIPLE_LIBTPU_LOAD=1."
                       ) from None
    raise ValueError(f"--topology={name!r}: libtpu {libtpu_version()} does not know this topology "
                     f"({type(e).__name__}: {str(e).splitlines()[0]}). Names look like {_EXAMPLE_TOPOLOGIES}."
                     ) from None
  return list(topology.devices)


def chip_name(device: Any) -> str:
  """'v4' | 'v5e' | 'v5p' | 'v6e' from a device's `device_kind` (else the kind itself)."""
  return _DEVICE_KINDS.get(device.device_kind, device.device_kind)


# ================================================================================================ config
def apply_preset(config, preset: str | None, tensor: int = 2):
  """Sets config.sharding and a mesh that makes the preset shard something (the config's own when None)."""
  if preset is None:
    return config
  mesh = {"dp": (("data", -1), ("fsdp", 1), ("tensor", 1)),
          "fsdp": (("data", 1), ("fsdp", -1), ("tensor", 1)),
          "fsdp_tp": (("data", 1), ("fsdp", -1), ("tensor", int(tensor)))}[preset]
  with config.unlocked():
    config.sharding = preset
    config.mesh = mesh
  return config


# ================================================================================================ compile
@contextlib.contextmanager
def _compile_only_target(platform: str = "tpu"):
  """While the state spec is built and the step traced: abstract init batches, the mesh in context as an
  abstract mesh, and `jax.default_backend()` reporting the target platform (module docstring)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from vlm.parallel import multihost  # pylint: disable=g-import-not-at-top
  from vlm.parallel import partitioning  # pylint: disable=g-import-not-at-top

  def abstract_from_full(x, sharding):
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  @contextlib.contextmanager
  def abstract_activation_context(mesh, rules):
    # `jax.set_mesh` would place eager values (the trainer's init key) on the mesh's compile-only devices, which
    # cannot run anything; flax's activation constraints read only the abstract mesh.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(tuple(rules)):
      yield

  with mock.patch.object(multihost, "global_array_from_full", abstract_from_full), \
       mock.patch.object(partitioning, "activation_context", abstract_activation_context), \
       mock.patch.object(jax, "default_backend", lambda: platform):
    yield


def abstract_batch(task: Any, batch_size: int, sharding: jax.sharding.Sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """`task.dummy_batch` shapes at the global `batch_size`, as ShapeDtypeStructs with the batch sharding.

  The shapes are read from a batch of 2 (no array of the full batch is ever made).
  """
  out = {}
  for key, value in task.dummy_batch(2).items():
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
      continue
    if value.ndim == 0 or value.shape[0] != 2:
      raise ValueError(f"task.dummy_batch(2)[{key!r}] has shape {value.shape}: its leading dimension should be "
                       "the batch.")
    out[key] = jax.ShapeDtypeStruct((batch_size,) + value.shape[1:], value.dtype, sharding=sharding)
  return out


def analyse(compiled: Any) -> dict[str, Any]:
  """Per-device memory and cost figures of a compiled computation."""
  m = compiled.memory_analysis()
  memory = {
      "arguments": int(m.argument_size_in_bytes),
      "outputs": int(m.output_size_in_bytes),
      "aliased": int(m.alias_size_in_bytes),
      "temporaries": int(m.temp_size_in_bytes),
      "generated_code": int(m.generated_code_size_in_bytes),
  }
  memory["live"] = (memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
                    + memory["generated_code"])
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  cost = cost or {}
  out = {"memory_bytes_per_device": memory,
         "flops_per_device": float(cost.get("flops", 0.0)),
         "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0))}
  seconds = cost.get("optimal_seconds")
  # A negative value (e.g. -7.0) is the cost model declining to estimate some op of the program.
  out["cost_model_raw_optimal_seconds"] = None if seconds is None else float(seconds)
  out["cost_model_seconds"] = float(seconds) if seconds is not None and seconds > 0 else None
  return out


def _summarise_shardings(tree: Any) -> dict[str, Any]:
  """Values, bytes (total and per device) and the share of values under each PartitionSpec of abstract leaves."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape") and getattr(x, "sharding", None)]
  total_values = sum(int(np.prod(x.shape)) for x in leaves)
  total_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
  per_device = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize for x in leaves)
  by_spec = collections.Counter()
  for x in leaves:
    by_spec[str(x.sharding.spec)] += int(np.prod(x.shape))
  sharded = sum(int(np.prod(x.shape)) for x in leaves if not x.sharding.is_fully_replicated)
  return {"arrays": len(leaves), "values": total_values, "bytes": total_bytes, "bytes_per_device": per_device,
          "sharded_fraction": sharded / max(total_values, 1),
          "specs": {k: v / max(total_values, 1) for k, v in by_spec.most_common()}}


def aot(config, topology: str, *, with_eval: bool = False) -> dict[str, Any]:
  """Builds and compiles the train step of `config` for TPU `topology`; returns every figure (module docstring).

  Raises:
    ValueError: unknown topology, a mesh that does not cover the topology, a batch the data axes do not divide
      (all before compilation).
  """
  from vlm.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlm.parallel import multihost  # pylint: disable=g-import-not-at-top
  from vlm.train import step as step_lib  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top

  devices = topology_devices(topology)
  chip = chip_name(devices[0])
  setup = trainer.setup_mesh(config, devices=devices)
  batch_size = int(config.input.batch_size)
  shards = mesh_lib.num_batch_shards(setup.mesh)
  multihost.check_batch_size(batch_size, shards, 1)
  task = trainer.build_task(config)
  start = time.perf_counter()
  with _compile_only_target("tpu"):
    spec = trainer.build_state_spec(config, task, setup, int(config.get("total_steps") or 1))
    batch = abstract_batch(task, batch_size, setup.batch_sharding)
    train_step = step_lib.make_train_step(task, spec.tx, spec.schedule, int(config.get("seed", 0)))
    jitted = step_lib.jit_train_step(train_step, spec.shardings, setup.batch_sharding, setup.mesh)
    with setup.context():
      lowered = jitted.lower(spec.abstract, batch)
      if with_eval:

        def forward(params, model_state, batch):
          loss, _ = task.loss_fn(params, model_state, batch, jax.random.key(0), train=False)
          return loss

        eval_lowered = jax.jit(forward).lower(spec.abstract.params, spec.abstract.model_state, batch)
  trace_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  hbm_gib, hbm_source = HBM_GIB.get(chip, (None, None))
  peak_tflops, peak_source = PEAK_BF16_TFLOPS.get(chip, (None, None))
  report: dict[str, Any] = {
      "config": f"{config.model.get('name', '?')} / {config.task.get('name', '?')}",
      "topology": topology,
      "chip": chip,
      "device_kind": devices[0].device_kind,
      "devices": len(devices),
      "hosts": len({d.process_index for d in devices}),
      "libtpu": libtpu_version(),
      "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
      "sharding_preset": config.get("sharding") or "dp",
      "batch_size": batch_size,
      "batch_per_device": batch_size / len(devices),
      "trace_seconds": trace_s,
      "compile_seconds": compile_s,
      "hbm_gib_per_chip": hbm_gib, "hbm_source": hbm_source,
      "peak_bf16_tflops_per_chip": peak_tflops, "peak_source": peak_source,
      "train_step": analyse(compiled),
      "params": _summarise_shardings(spec.abstract.params),
      "opt_state": _summarise_shardings(spec.abstract.opt_state),
  }
  if with_eval:
    report["eval_forward"] = analyse(eval_lowered.compile())
  for key in ("train_step", "eval_forward"):
    if key in report:
      _derive(report[key], len(devices), batch_size, peak_tflops, HBM_GBPS.get(chip))
  live = report["train_step"]["memory_bytes_per_device"]["live"]
  report["fits"] = None if hbm_gib is None else live <= hbm_gib * GiB
  report["verdict"] = verdict(live, hbm_gib)
  return report


def _derive(figures: dict[str, Any], devices: int, batch_size: int, peak_tflops: float | None,
            hbm_gbps: float | None) -> None:
  """Step FLOPs; from the cost model's time examples/s and the MFU it implies; the roofline bound (in place).

  The roofline bound is max(FLOPs / peak, bytes accessed / HBM bandwidth) per device: no step can be faster, so
  the MFU it implies is an upper bound (communication and imperfect overlap are not in it).
  """
  figures["flops_per_step"] = figures["flops_per_device"] * devices
  if peak_tflops and hbm_gbps:
    bound = max(figures["flops_per_device"] / (peak_tflops * 1e12),
                figures["bytes_accessed_per_device"] / (hbm_gbps * 1e9))
    figures["roofline_seconds"] = bound
    figures["roofline_mfu_bound"] = (figures["flops_per_device"] / bound / (peak_tflops * 1e12)) if bound else None
  else:
    figures["roofline_seconds"] = figures["roofline_mfu_bound"] = None
  seconds = figures["cost_model_seconds"]
  figures["cost_model_examples_per_s"] = batch_size / seconds if seconds else None
  figures["cost_model_mfu"] = (figures["flops_per_device"] / seconds / (peak_tflops * 1e12)
                               if seconds and peak_tflops else None)


def _gib(n: float) -> str:
  """Bytes as GiB with 3 significant digits (0.0123 GiB for small figures)."""
  g = n / GiB
  return f"{g:.3g}" if g >= 0.001 else f"{g:.2g}"


def verdict(live_bytes: int, hbm_gib: float | None) -> str:
  if hbm_gib is None:
    return f"fits: unknown (needs {_gib(live_bytes)} GiB per chip; no HBM figure for this chip)"
  if live_bytes <= hbm_gib * GiB:
    headroom = 100.0 * (1.0 - live_bytes / (hbm_gib * GiB))
    return f"fits: yes ({_gib(live_bytes)} GiB of {hbm_gib:g} GiB per chip, {headroom:.1f}% headroom)"
  return f"fits: NO (needs {_gib(live_bytes)} GiB, chip has {hbm_gib:g} GiB)"


# ================================================================================================== print
def _print_step(name: str, f: dict[str, Any], report: dict[str, Any]) -> None:
  m = f["memory_bytes_per_device"]
  print(f"{name}, per device: arguments {_gib(m['arguments'])} GiB, outputs {_gib(m['outputs'])} GiB "
        f"(aliased to donated arguments {_gib(m['aliased'])} GiB), temporaries {_gib(m['temporaries'])} GiB, "
        f"generated code {_gib(m['generated_code'])} GiB -> live {_gib(m['live'])} GiB"
        + (f" of {report['hbm_gib_per_chip']:g} GiB HBM" if report["hbm_gib_per_chip"] else ""))
  line = (f"  FLOPs: {f['flops_per_step'] / 1e12:.4g} TFLOP per step ({f['flops_per_device'] / 1e12:.4g} per device; "
          f"XLA cost analysis)")
  if f["cost_model_seconds"]:
    line += (f"; cost-model step time {f['cost_model_seconds'] * 1e3:.4g} ms -> "
             f"{f['cost_model_examples_per_s']:.4g} examples/s")
    if f["cost_model_mfu"] is not None:
      line += f", MFU {f['cost_model_mfu']:.3f} of {report['peak_bf16_tflops_per_chip']:g} TFLOP/s bf16 per chip"
  else:
    raw = f["cost_model_raw_optimal_seconds"]
    line += ("; the cost model gave no step time" if raw is None else
             f"; the cost model gave no step time (optimal_seconds={raw:g}: it could not estimate some op)")
  print(line)
  if f.get("roofline_seconds"):
    print(f"  roofline bound (max of FLOPs / peak, bytes accessed {f['bytes_accessed_per_device'] / GiB:.3g} GiB / "
          f"HBM bandwidth): {f['roofline_seconds'] * 1e3:.4g} ms -> MFU at most {f['roofline_mfu_bound']:.3f}")


def _print_sharding(name: str, s: dict[str, Any]) -> None:
  specs = ", ".join(f"{k} {100 * v:.1f}%" for k, v in list(s["specs"].items())[:6])
  print(f"{name}: {s['values']:,} values in {s['arrays']} arrays, {_gib(s['bytes'])} GiB; "
        f"{100 * s['sharded_fraction']:.1f}% of values sharded -> {_gib(s['bytes_per_device'])} GiB per device")
  print(f"  by PartitionSpec (share of values): {specs}")


def print_report(report: dict[str, Any]) -> None:
  print(f"== {report['config']} on {report['topology']} ({report['devices']} x {report['device_kind']}, "
        f"{report['hosts']} host(s); libtpu {report['libtpu']})")
  print(f"mesh {report['mesh']}, sharding preset {report['sharding_preset']!r}, global batch "
        f"{report['batch_size']} ({report['batch_per_device']:g} per chip); traced in {report['trace_seconds']:.1f} s, "
        f"compiled in {report['compile_seconds']:.1f} s")
  _print_step("train step", report["train_step"], report)
  if "eval_forward" in report:
    _print_step("eval forward (loss_fn, train=False)", report["eval_forward"], report)
  _print_sharding("parameters", report["params"])
  _print_sharding("optimizer state", report["opt_state"])
  if report["hbm_source"]:
    print(f"chip figures: HBM {report['hbm_source']}; peak {report['peak_source']}")
  print(report["verdict"])


def main(argv):
  del argv
  config = apply_preset(common.CONFIG.value, _PRESET.value, _TENSOR.value)
  report = aot(config, _TOPOLOGY.value, with_eval=_EVAL.value)
  if common.JSON.value:
    json.dump(report, sys.stdout, indent=1)
    print()
  else:
    print_report(report)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
