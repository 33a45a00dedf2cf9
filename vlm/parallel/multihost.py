"""Multi-process helpers: start-up, host batches -> global arrays, barriers.

Every process runs the same program. Each reads its own shard of the data (per-host batch = global batch /
process count) and `global_batch` stitches the per-host pieces into one global `jax.Array` whose leading
dimension is split over the mesh's batch axes. Only process 0 writes files other than checkpoints
(orbax coordinates those itself).
"""
from __future__ import annotations

import os
from typing import Any, Collection, Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

# Environment variables read when the matching flag is not given (the local launcher sets flags; a cluster
# scheduler may prefer the environment).
ENV_COORDINATOR = "VLM_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "VLM_NUM_PROCESSES"
ENV_PROCESS_ID = "VLM_PROCESS_ID"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Calls `jax.distributed.initialize`, explicit arguments first, then VLM_* env vars, then auto-detect.

  With nothing given (a TPU VM pod, SLURM, ...), JAX detects the cluster itself.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(ENV_PROCESS_ID):
    process_id = int(os.environ[ENV_PROCESS_ID])
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                  process_id=process_id).items() if v is not None}
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
  return jax.process_index() == 0


def check_batch_size(global_batch_size: int, num_batch_shards: int, process_count: int, *,
                     key: str = "config.input.batch_size") -> int:
  """Returns the per-host batch size, or raises (before any compilation) when the batch cannot be split."""
  if global_batch_size <= 0:
    raise ValueError(f"{key} must be positive, got {global_batch_size}.")
  if global_batch_size % num_batch_shards:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {num_batch_shards} data shards of the "
        f"mesh (the product of its 'data' and 'fsdp' sizes); change {key} or config.mesh.")
  if global_batch_size % process_count:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {process_count} processes ({key}).")
  return global_batch_size // process_count


def _device_leaves(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Keeps the numeric leaves; strings and objects (ids, raw captions) stay on the host."""
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "biuf":
      out[key] = value
  return out


def global_batch(local_batch: Mapping[str, Any], sharding: jax.sharding.Sharding,
                 per_host_batch_size: int | Collection[int] | None = None) -> dict[str, jax.Array]:
  """Per-host numpy batch -> dict of global arrays sharded along the leading dimension.

  Args:
    local_batch: this process's rows of the global batch (dict of arrays with equal leading size).
    sharding: sharding of every leaf (leading dimension over the batch axes).
    per_host_batch_size: when given, every leaf's leading dimension must equal it (or, given several sizes -
      a mixture whose streams have their own batch sizes - one of them, the same for every leaf).

  Returns:
    Global arrays; non-numeric leaves (strings) are dropped.
  """
  local = _device_leaves(local_batch)
  if per_host_batch_size is not None:
    allowed = {per_host_batch_size} if isinstance(per_host_batch_size, int) else set(per_host_batch_size)
    sizes = {value.shape[0] if value.ndim else None for value in local.values()}
    for key, value in local.items():
      if value.ndim == 0 or value.shape[0] not in allowed or len(sizes) > 1:
        want = " or ".join(str(s) for s in sorted(allowed))
        raise ValueError(
            f"Batch entry {key!r} has shape {value.shape} but this host should feed {want} examples (global "
            f"batch / {jax.process_count()} processes), the same number in every entry.")
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def global_array_from_full(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """Global array from a host array that every process holds in full (e.g. a dummy batch)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def sync(tag: str) -> None:
  """Barrier across processes (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(tag)


def assert_same_on_all_processes(value: Any, what: str) -> None:
  """Fails loudly when processes disagree (e.g. on the step they resume from)."""
  if jax.process_count() > 1:
    multihost_utils.assert_equal(np.asarray(value), fail_message=f"Processes disagree on {what}.")
