r"""Inspect a config without training: parameters per tower, tokens per modality, FLOPs, sharding.

  python -m vlm.tools.inspect --config=configs/vatt/pretrain.py:BBS [--json] [--config.x=y]

Prints
  * parameter counts per top-level module (tower) and in total (from `jax.eval_shape`: nothing is allocated);
  * tokens per modality, when the task exposes `token_counts()`;
  * the attention-graph edge count and edge sparsity (SViTT equations 1-3, table A1), when the task exposes
    `attention_edges()`;
  * FLOPs per example from XLA's cost analysis of the compiled forward pass (`loss_fn`, eval mode) and of the
    whole train step (forward + backward + optimizer), both lowered with abstract inputs (nothing runs);
  * how every parameter is sharded on the config's mesh (`config.mesh`, `config.sharding`).
Use XLA_FLAGS=--xla_force_host_platform_device_count=N on a CPU to see the sharding of an N-device mesh.
"""
from __future__ import annotations

import collections
import json
import sys
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from vlm import protocols
from vlm.parallel import partitioning
from vlm.tools import common

_FLOPS = flags.DEFINE_bool("flops", True, "Compile (not run) forward and train step for XLA's FLOP counts.")


def param_counts(params: Any, depth: int = 1) -> dict[str, int]:
  """{first `depth` path components: number of values}, sorted by name."""
  counts = collections.Counter()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    counts["/".join(partitioning.path_str(path).split("/")[:depth])] += int(np.prod(leaf.shape))
  return dict(sorted(counts.items()))


def flops_per_example(config, task, setup, var_spec, state_spec) -> dict[str, float]:
  """XLA-counted FLOPs per example of the forward pass and of the train step (global batch = batch shards)."""
  from vlm.train import step as step_lib  # pylint: disable=g-import-not-at-top
  n = var_spec.dummy_batch[next(iter(var_spec.dummy_batch))].shape[0]
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in var_spec.dummy_batch.items()}
  rng = jax.random.key(0)

  def forward(params, model_state, batch):
    loss, _ = task.loss_fn(params, model_state, batch, rng, train=False)
    return loss

  abstract = state_spec.abstract
  with setup.context():
    fwd = jax.jit(forward).lower(abstract.params, abstract.model_state, batch).compile()
    train_step = step_lib.make_train_step(task, state_spec.tx, state_spec.schedule, int(config.get("seed", 0)))
    jitted = step_lib.jit_train_step(train_step, state_spec.shardings, setup.batch_sharding, setup.mesh)
    step = jitted.lower(abstract, batch).compile()
  return {"forward_flops_per_example": common.cost_flops(fwd) / n,
          "train_step_flops_per_example": common.cost_flops(step) / n,
          "flops_batch": n}


def inspect(config, *, with_flops: bool = True) -> dict[str, Any]:
  """Everything the command prints, as a dict."""
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  state_spec = trainer.build_state_spec(config, task, setup, int(config.get("total_steps", 1) or 1))
  var_spec = state_spec.variables
  params = var_spec.params
  out: dict[str, Any] = {
      "config": f"{config.model.get('name', '?')} / {config.task.get('name', '?')}",
      "params_total": sum(param_counts(params).values()),
      "params_per_tower": param_counts(params, depth=1),
      "params_per_module": param_counts(params, depth=2),
      "model_state_total": sum(param_counts(var_spec.model_state).values()) if var_spec.model_state else 0,
      "mesh": {k: int(v) for k, v in setup.mesh.shape.items()},
      "sharding_preset": config.get("sharding") or "dp",
  }
  if isinstance(task, protocols.TokenCounter):
    out["tokens_per_modality"] = {k: int(v) for k, v in task.token_counts().items()}
  if isinstance(task, protocols.EdgeCounter):  # SViTT equations 1-3: attention-graph size and edge sparsity
    out["attention_edges"] = {k: float(v) for k, v in task.attention_edges().items()}
  specs = partitioning.describe(var_spec.param_shardings)
  shapes = {partitioning.path_str(p): tuple(int(d) for d in x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  out["param_sharding"] = {k: {"shape": shapes.get(k), "spec": v} for k, v in specs.items()}
  if with_flops:
    out.update(flops_per_example(config, task, setup, var_spec, state_spec))
  return out


def _print(report: dict[str, Any]) -> None:
  print(f"== {report['config']}")
  print(f"Parameters: {report['params_total']:,} in total")
  for name, n in report["params_per_tower"].items():
    print(f"  {name:<40s} {n:>14,d}  ({n / 1e6:.2f}M)")
  if report["model_state_total"]:
    print(f"Non-trainable state (e.g. BatchNorm statistics): {report['model_state_total']:,}")
  if "tokens_per_modality" in report:
    print("Tokens per example:")
    for name, n in report["tokens_per_modality"].items():
      print(f"  {name:<40s} {n:>8d}")
  if "attention_edges" in report:
    e = report["attention_edges"]
    print(f"Attention edges (SViTT eqs. 1-3): {e['edges'] / 1e6:.3f}M (visual {e['visual_edges'] / 1e6:.3f}M, "
          f"multimodal {e['multimodal_edges'] / 1e6:.3f}M) against {e['dense_edges'] / 1e6:.3f}M dense: "
          f"sparsity {e['sparsity']:.3f}")
  if "forward_flops_per_example" in report:
    print(f"FLOPs per example (XLA cost analysis): forward, eval mode (all tokens) "
          f"{report['forward_flops_per_example'] / 1e9:.2f} GFLOP; "
          f"train step, train mode (DropToken etc.) {report['train_step_flops_per_example'] / 1e9:.2f} GFLOP")
  print(f"Mesh {report['mesh']}, sharding preset {report['sharding_preset']!r}:")
  for name, info in report["param_sharding"].items():
    print(f"  {name:<70s} {str(info['shape']):<22s} {info['spec']}")


def main(argv):
  del argv
  report = inspect(common.CONFIG.value, with_flops=_FLOPS.value)
  if common.JSON.value:
    json.dump(report, sys.stdout, indent=1)
    print()
  else:
    _print(report)


if __name__ == "__main__":
  from vlm import allocator  # pylint: disable=g-import-not-at-top
  allocator.reexec_with_fast_malloc()
  flags.mark_flag_as_required("config")
  app.run(main)
