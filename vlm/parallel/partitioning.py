"""Logical axis names -> mesh shardings, for parameters, optimizer state, batches and activations.

The path from a model to sharded arrays:

  boxed = jax.eval_shape(task.init_variables, rng, batch)     # leaves carry logical names (LogicallyPartitioned)
  logical = logical_specs(boxed)                              # PartitionSpec('embed', 'mlp') per leaf
  shardings = mesh_shardings(unbox(boxed), logical, mesh, rules)   # NamedSharding(mesh, P('fsdp', 'tensor'))

`mesh_shardings` checks names against the vocabulary in `axes.py`, drops mesh axes the mesh lacks, and
replicates a dimension that its mesh axes do not divide (logged once), so a tiny test model runs on any mesh.
Optimizer-state leaves take the sharding of the parameter they mirror (`shardings_like_params`), found by
key path, which also works for masked / multi-transform optax states.

Activation constraints inside models (`nn.with_logical_constraint`) need the mesh and the rules in context
while jit traces: wrap tracing (the first call of a jitted function) in `activation_context(mesh, rules)`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from vlm.parallel import axes
from vlm.parallel import mesh as mesh_lib

PyTree = Any


def get_rules(preset: str = "dp", overrides: Sequence[Sequence] | None = None,
              mesh: jax.sharding.Mesh | None = None) -> tuple[tuple[str, Any], ...]:
  """Logical-axis rules: `overrides` (tried first) followed by a preset, restricted to `mesh`'s axes.

  Args:
    preset: 'dp', 'fsdp' or 'fsdp_tp' (see `axes.PRESETS`).
    overrides: optional `(logical_name, mesh_axis | (mesh_axes...) | None)` pairs that take precedence.
    mesh: when given, mesh axes it lacks are dropped from the rules (a rule left with none replicates).

  Returns:
    A tuple of rules for `nn.logical_axis_rules` / `nn.logical_to_mesh_axes`.
  """
  if preset not in axes.PRESETS:
    raise ValueError(f"Unknown config.sharding {preset!r}; choose one of {sorted(axes.PRESETS)}.")
  rules = []
  for name, target in tuple(tuple(r) for r in (overrides or ())) + axes.PRESETS[preset]:
    if name not in axes.VOCABULARY:
      raise ValueError(f"Sharding rule for unknown logical axis {name!r}; known: {sorted(axes.VOCABULARY)}.")
    if mesh is not None and target is not None:
      targets = (target,) if isinstance(target, str) else tuple(target)
      targets = tuple(t for t in targets if t in mesh.axis_names)
      target = None if not targets else targets[0] if len(targets) == 1 else targets
    rules.append((name, target))
  return tuple(rules)


def logical_specs(boxed_tree: PyTree) -> PyTree:
  """Logical PartitionSpecs of a tree of (possibly boxed) arrays; unannotated leaves get P() (replicated)."""
  return nn.get_partition_spec(boxed_tree)


def path_str(path) -> str:
  """A pytree key path as "a/b/0", the form used in logs, errors and tool reports."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_logical_names(specs: PyTree) -> None:
  """Raises ValueError naming every parameter path that uses a name outside the vocabulary."""
  bad = []
  for path, spec in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, P))[0]:
    for name in spec:
      names = (name,) if isinstance(name, str) or name is None else tuple(name)
      for n in names:
        if n is not None and n not in axes.VOCABULARY:
          bad.append(f"{path_str(path)}: {n!r}")
  if bad:
    raise ValueError(
        "Logical axis names outside the vocabulary of vlm/parallel/axes.py (add them there, with a rule "
        "in every preset):\n  " + "\n  ".join(bad))


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh, where: str) -> P:
  """Replicates each dimension its mesh axes do not divide evenly (jit cannot place uneven shards)."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if entry is None:
      out.append(None)
      continue
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    size = math.prod(mesh.shape[n] for n in names)
    if dim % size:
      logging.log_first_n(logging.WARNING, "%s: dimension of size %d is not divisible by mesh axes %s (%d); "
                          "replicating that dimension.", 20, where, dim, names, size)
      out.append(None)
    else:
      out.append(entry)
  return P(*out)


def mesh_shardings(abstract_tree: PyTree, logical: PyTree, mesh: jax.sharding.Mesh,
                   rules: Sequence[tuple[str, Any]]) -> PyTree:
  """NamedShardings for `abstract_tree` (unboxed arrays / ShapeDtypeStructs) from its logical specs."""
  check_logical_names(logical)
  flat_abstract, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
  flat_logical = treedef.flatten_up_to(logical)
  out = []
  for (path, leaf), spec in zip(flat_abstract, flat_logical):
    spec = P() if spec is None else spec
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules)
    out.append(NamedSharding(mesh, _fit_spec(mesh_spec, leaf.shape, mesh, path_str(path))))
  return jax.tree_util.tree_unflatten(treedef, out)


def shardings_like_params(abstract_tree: PyTree, abstract_params: PyTree, param_shardings: PyTree,
                          mesh: jax.sharding.Mesh) -> PyTree:
  """Shardings for a tree whose leaves mirror parameters (optimizer state), matched by key-path suffix.

  A leaf whose key path ends with a parameter's path (e.g. `.../mu/encoder/dense/kernel` and
  `encoder/dense/kernel`) and has the same shape takes that parameter's sharding; all other leaves (step
  counts, scalars, factored statistics) are replicated.
  """
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                    jax.tree_util.tree_leaves(param_shardings)):
    by_path[tuple(path_str((k,)) for k in path)] = (leaf.shape, sharding)
  replicated = NamedSharding(mesh, P())

  def assign(path, leaf):
    keys = tuple(path_str((k,)) for k in path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(assign, abstract_tree)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the mesh's batch axes; other dimensions whole."""
  return NamedSharding(mesh, P(mesh_lib.batch_axes(mesh)))


@contextlib.contextmanager
def activation_context(mesh: jax.sharding.Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Mesh + logical rules in context, so `nn.with_logical_constraint` in models resolves while tracing."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def describe(shardings: PyTree) -> dict[str, str]:
  """`{path: 'P(...)'}` for logging and tests."""
  return {path_str(p): str(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
