r"""Block-sparse against dense attention, forward + backward, side by side in one run (SViTT edge sparsity).

  python -m vlm.tools.bench_attention --tokens=1568 --block_size=56 --local_blocks=1 --random_blocks=3

Times the gradient of <attention(q, k, v), dO> (dO random) w.r.t. q, k, v for the dense kernel and for
`vlm.nn.kernels.block_sparse`, each 'explicit' on CPU and 'fused' on GPU (cuDNN flash attention for bf16 / fp16;
force one with `--dense=` / `--sparse=fused|explicit`), with one [CLS] token in front of `--tokens` local tokens (8
frames x 196 patches = 1568 by default), and prints:

  edge ratio    dense edges / block-sparse edges (the ideal speed-up: attention work is proportional to edges),
  speed-up      dense time / block-sparse time (medians of --runs rounds after compilation; each round runs both),
  efficiency    speed-up / edge ratio (1.0 = the sparse kernel is exactly as fast per edge as the dense one).
  cores busy    (CPU only) process CPU time / wall time of each kernel: how many cores its run kept busy.

The random pattern is drawn inside the timed function (training mode), as in a real step. Each kernel's line
says whether its compiled program calls cuDNN. On a GPU (bf16, the cuDNN comparison of SViTT's issue):

  python -m vlm.tools.bench_attention --dtype=bfloat16 --batch=32
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from vlm.nn.kernels import block_sparse
from vlm.nn.kernels import dense as dense_lib
from vlm.tools import common

_TOKENS = flags.DEFINE_integer("tokens", 1568, "Local tokens N (plus one [CLS]).")
_BATCH = flags.DEFINE_integer("batch", 4, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 12, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Features per head.")
_BLOCK = flags.DEFINE_integer("block_size", 56, "G: tokens per block.")
_LOCAL = flags.DEFINE_integer("local_blocks", 1, "K_l.")
_RANDOM = flags.DEFINE_integer("random_blocks", 3, "K_r.")
_DENSE = flags.DEFINE_enum("dense", "auto", ["auto", "fused", "explicit"], "Dense kernel implementation.")
_SPARSE = flags.DEFINE_enum("sparse", "auto", ["auto", "fused", "explicit"], "Block-sparse kernel implementation.")
_RUNS = flags.DEFINE_integer("runs", 9, "Timed rounds; each runs both kernels once (medians reported).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Activation dtype.")


def run(tokens: int, batch: int, heads: int, head_dim: int, block_size: int, local_blocks: int,
        random_blocks: int, dense: str = "auto", steps: int = 7, dtype: str = "float32",
        sparse: str = "auto") -> dict[str, Any]:
  """Times both kernels; returns the figures the module docstring lists."""
  n_total = tokens + 1
  keys = jax.random.split(jax.random.key(0), 5)
  q, k, v = (jax.random.normal(kk, (batch, n_total, heads, head_dim), jnp.dtype(dtype)) for kk in keys[:3])
  cot = jax.random.normal(keys[4], (batch, n_total, heads, head_dim), jnp.float32)
  opts = dict(block_size=block_size, local_blocks=local_blocks, random_blocks=random_blocks, num_global=1)

  def dense_fn(q, k, v, rng):
    del rng
    return dense_lib.dense_attention(q, k, v, implementation=dense)

  def sparse_fn(q, k, v, rng):
    return block_sparse.block_sparse_attention(q, k, v, dropout_rng=rng, deterministic=False,
                                               implementation=sparse, **opts)

  grads, uses_cudnn = {}, {}
  for name, fn in (("dense", dense_fn), ("block_sparse", sparse_fn)):
    # A random output cotangent, as in training (a plain sum would let XLA fold the dO = 1 backward dots away).
    # dO is an argument, not a captured constant, so XLA does not spend seconds constant-folding its padding.
    grad = jax.jit(jax.grad(lambda q, k, v, r, dout, fn=fn: jnp.vdot(fn(q, k, v, r).astype(jnp.float32), dout),
                            argnums=(0, 1, 2)))
    grads[name] = grad.lower(q, k, v, keys[3], cot).compile()  # compiled once; this executable is what is timed
    # cuDNN attention shows as `__cudnn$fmha*` custom calls (XLA may use cuDNN for plain dots too: not those).
    uses_cudnn[name] = "fmha" in grads[name].as_text()
    jax.block_until_ready(grads[name](q, k, v, keys[3], cot))  # warm-up
  # The kernels take turns, one run each per round, so both see the same drift in machine load (the median of
  # back-to-back blocks moved the ratio by +-10% between runs on a shared VM).
  # Process CPU time over wall time, per run, says how many cores a kernel keeps busy (on CPU backends): the
  # dense kernel's large dots spread over the cores; XLA:CPU runs each batched dot of small blocks on one thread,
  # so the block-sparse kernel keeps the cores busy only with independent dots side by side (its head groups,
  # `block_sparse.default_head_groups`).
  times = {name: [] for name in grads}
  cores = {name: [] for name in grads}
  for _ in range(steps):
    for name, grad in grads.items():
      cpu_start = time.process_time()
      wall = common.median_seconds(lambda grad=grad: grad(q, k, v, keys[3], cot), 1)[0]
      times[name].append(wall)
      cores[name].append((time.process_time() - cpu_start) / wall)
  results = {}
  for name, ts in times.items():
    results[f"{name}_seconds"] = statistics.median(ts)
    results[f"{name}_seconds_all"] = ts
    results[f"{name}_cores_busy"] = statistics.median(cores[name])
  dense_edges = n_total * n_total
  sparse_edges = block_sparse.edge_count(tokens, 1, block_size, local_blocks, random_blocks)
  edge_ratio = dense_edges / sparse_edges
  speedup = results["dense_seconds"] / results["block_sparse_seconds"]
  return {**results, "dense_edges": float(dense_edges), "sparse_edges": float(sparse_edges),
          "edge_ratio": edge_ratio, "speedup": speedup, "efficiency": speedup / edge_ratio,
          "dense_cudnn": uses_cudnn["dense"], "block_sparse_cudnn": uses_cudnn["block_sparse"],
          "dtype": dtype, "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
          "allocator": common.allocator()}


def main(argv):
  del argv
  r = run(_TOKENS.value, _BATCH.value, _HEADS.value, _HEAD_DIM.value, _BLOCK.value, _LOCAL.value, _RANDOM.value,
          _DENSE.value, _RUNS.value, _DTYPE.value, _SPARSE.value)
  if common.JSON.value:
    print(json.dumps(r, indent=1))
    return
  print(f"== attention fwd+bwd on {r['device']} ({r['allocator']}): batch {_BATCH.value}, {_TOKENS.value} + 1 "
        f"tokens, {_HEADS.value} heads x {_HEAD_DIM.value}, (K_l, K_r, G) = ({_LOCAL.value}, {_RANDOM.value}, "
        f"{_BLOCK.value})")
  kernel = lambda name: "cuDNN" if r[f"{name}_cudnn"] else "XLA"
  print(f"dense {r['dense_seconds'] * 1e3:.2f} ms ({kernel('dense')}), block-sparse "
        f"{r['block_sparse_seconds'] * 1e3:.2f} ms ({kernel('block_sparse')}), {r['dtype']}")
  print(f"edge ratio {r['edge_ratio']:.2f}x (ideal), speed-up {r['speedup']:.2f}x, "
        f"efficiency {r['efficiency']:.2f} of the ideal")
  if r["platform"] == "cpu":
    print(f"cores busy (process CPU time / wall time): dense {r['dense_cores_busy']:.2f}, block-sparse "
          f"{r['block_sparse_cores_busy']:.2f} of {os.cpu_count()}")


if __name__ == "__main__":
  from vlm import allocator  # pylint: disable=g-import-not-at-top
  allocator.reexec_with_fast_malloc()
  app.run(main)
