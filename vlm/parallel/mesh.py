"""The device mesh, built from `config.mesh`.

`config.mesh` is a sequence of `(axis_name, size)` pairs, e.g. `(('data', -1), ('fsdp', 1), ('tensor', 1))`.
At most one size may be -1, meaning "all devices left over". Sizes must multiply to the number of devices
(every device takes part; a mesh that leaves devices idle is almost always a config mistake).

JAX 0.10's `jax.make_mesh` defaults to explicit axis types (sharding in types), under which flax linen's
matmuls raise `ShardingTypeError`; every axis is made `AxisType.Auto` so GSPMD propagates shardings from the
parameters' and batch's annotations, as linen expects.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

from vlm.parallel import axes

DEFAULT_MESH = ((axes.DATA, -1), (axes.FSDP, 1), (axes.TENSOR, 1))


def mesh_shape(spec: Sequence[Sequence], num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves a mesh spec to axis names and sizes.

  Args:
    spec: `(name, size)` pairs; one size may be -1.
    num_devices: devices the mesh must cover.

  Returns:
    (names, sizes), sizes all positive and multiplying to `num_devices`.

  Raises:
    ValueError: on a malformed spec, several -1 sizes, duplicate names, or sizes that do not multiply to the
      device count.
  """
  try:
    names = tuple(str(name) for name, _ in spec)
    sizes = [int(size) for _, size in spec]
  except (TypeError, ValueError):
    raise ValueError(f"config.mesh must be a sequence of (name, size) pairs, got {spec!r}.") from None
  if not names:
    raise ValueError("config.mesh is empty; give at least one axis, e.g. (('data', -1),).")
  if len(set(names)) != len(names):
    raise ValueError(f"config.mesh names an axis twice: {names}.")
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"config.mesh may have at most one size -1, got {tuple(spec)!r}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh sizes must be positive or -1, got {tuple(spec)!r}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"config.mesh {tuple(spec)!r}: the fixed sizes multiply to {known}, which does not divide the "
          f"{num_devices} devices, so the -1 axis cannot be filled.")
    sizes[sizes.index(-1)] = num_devices // known
  elif known != num_devices:
    raise ValueError(
        f"config.mesh {tuple(spec)!r}: sizes multiply to {known} but there are {num_devices} devices; "
        "make them match (or set one size to -1).")
  return names, tuple(sizes)


def make_mesh(spec: Sequence[Sequence] = DEFAULT_MESH,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds a mesh with Auto axis types over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = mesh_shape(spec, len(devices))
  # jax.make_mesh orders devices for the physical topology (TPU torus); fall back to a plain reshape for
  # device lists it cannot arrange (e.g. a subset of devices in tests).
  auto = (jax.sharding.AxisType.Auto,) * len(names)
  try:
    return jax.make_mesh(sizes, names, axis_types=auto, devices=devices)
  except (ValueError, NotImplementedError):
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), names, axis_types=auto)


def batch_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over: those of ('data', 'fsdp') the mesh has."""
  return tuple(a for a in axes.BATCH_AXES if a in mesh.axis_names)


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  """How many pieces the global batch is cut into."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))
