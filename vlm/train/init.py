"""The one init path: `config.init` -> the parameters a run that has no checkpoint of its own starts from.

    config.init.path                 None | a checkpoint (workdir, its checkpoints/ or one step directory) | a
                                     weights file (.npz, .safetensors) that the family's `load` reads
    config.init.assignment_map       ((target_regex, source_replacement | None), ...): for each parameter path of
                                     the new model ('/'-joined, e.g. 'backbone/encoderblock_00/mlp/wi/kernel'),
                                     the first regex that fully matches gives the checkpoint path it is read from
                                     (`re.sub(target_regex, source_replacement, path)`); None keeps the fresh
                                     value. Paths no regex matches are read under their own name.
    config.init.fallback_to_scratch  False: a parameter the checkpoint lacks is an error naming it; True: it keeps
                                     its fresh value (new heads, new layers).
    config.init.options              what the family's `load` documents (HF weight files, temporal expansion, ...)

Order (`initialize`): restore the checkpoint's params as host arrays -> rename them by the assignment map -> the
family's `vlm.models.<config.model.name>.load(params, restored, init, model)` (surgery a rename cannot express:
resized position tables, inflated kernels, external weights) -> every parameter present with its shape, else an
error naming the paths. A checkpoint whose tree equals the model's, with no map, options or family surgery needed,
is restored straight into its shardings (no host copy).

The same mechanism as T5X's `RestoreCheckpointConfig(assignment_map=..., fallback_to_scratch=...)`.
"""
from __future__ import annotations

import importlib
import os
import re
from typing import Any, Callable

from absl import logging
import flax
import jax
import ml_collections
import numpy as np

from vlm.train import checkpointing

LoadFn = Callable[[dict[str, Any], "dict[str, np.ndarray] | None", Any, Any], dict[str, Any]]


def flatten(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.meta.unbox(tree), sep="/")


def unflatten(flat: dict[str, Any]) -> Any:
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def init_spec(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """`config.init` when it asks for anything (a path or options), else None."""
  init = config.get("init")
  if init is None or (not init.get("path") and not options_set(init)):
    return None
  return init


def options_set(init: Any) -> dict[str, Any]:
  """The `config.init.options` a config sets (placeholders left at None do not count)."""
  return {k: v for k, v in dict(init.get("options") or {}).items() if v is not None}


def family_load(config: ml_collections.ConfigDict) -> LoadFn | None:
  """`vlm.models.<config.model.name>.load`, or None when the family defines none (or the config has no model)."""
  name = (config.get("model") or {}).get("name")
  if not name:
    return None
  module = importlib.import_module(name if "." in name else f"vlm.models.{name}")
  return getattr(module, "load", None)


def assign(restored: dict[str, np.ndarray], fresh: dict[str, np.ndarray], assignment_map: Any
           ) -> dict[str, np.ndarray]:
  """Checkpoint params renamed onto the target (`fresh`) paths by `assignment_map` (see the module docstring);
  a target mapped to None gets its fresh value.

  Raises:
    ValueError: a rule that matches no target path (a typo would otherwise silently load nothing), or a
      replacement naming a checkpoint path that does not exist.
  """
  rules = [(re.compile(str(pattern)), None if repl is None else str(repl)) for pattern, repl in (assignment_map or ())]
  used = [False] * len(rules)
  out, problems = {}, []
  targets = list(fresh)
  for path in targets:
    source = path
    for i, (pattern, repl) in enumerate(rules):
      if pattern.fullmatch(path):
        used[i] = True
        source = None if repl is None else pattern.sub(repl, path)
        break
    if source is None:
      out[path] = fresh[path]
      continue
    if source in restored:
      out[path] = restored[source]
    elif source != path:
      problems.append(f"{path} <- {source}: not in the checkpoint")
  unused = [rules[i][0].pattern for i, u in enumerate(used) if not u]
  if unused:
    raise ValueError(f"config.init.assignment_map: {unused[0]!r} matches no parameter of the model (targets look "
                     f"like {targets[0]!r}).")
  if problems:
    raise ValueError("config.init.assignment_map names checkpoint paths that do not exist:\n  "
                     + "\n  ".join(problems[:20]))
  return out


def complete(params: dict[str, Any], fresh: dict[str, Any], *, fallback_to_scratch: bool, source: str
             ) -> dict[str, Any]:
  """Every fresh path filled with an array of its shape; missing ones kept fresh only with fallback_to_scratch."""
  out, missing, wrong = {}, [], []
  for path, target in fresh.items():
    value = params.get(path)
    if value is None:
      missing.append(path)
      out[path] = target
    elif tuple(np.shape(value)) != tuple(target.shape):
      wrong.append(f"{path}: {source} {tuple(np.shape(value))} vs model {tuple(target.shape)}")
    else:
      out[path] = value
  extra = sorted(set(params) - set(fresh))
  if wrong or extra:
    raise ValueError(f"The init weights ({source}) do not fit the model:\n  "
                     + "\n  ".join(wrong + [f"{p}: not a parameter of the model" for p in extra][:40]))
  if missing and not fallback_to_scratch:
    raise ValueError(f"The init weights ({source}) lack {len(missing)} parameters of the model, e.g.\n  "
                     + "\n  ".join(missing[:20])
                     + "\nMap them with config.init.assignment_map, or keep them fresh with "
                       "config.init.fallback_to_scratch=True.")
  if missing:
    logging.info("config.init: %d parameters keep their fresh values (fallback_to_scratch): %s", len(missing),
                 sorted({"/".join(p.split("/")[:2]) for p in missing}))
  return out


def initialize(config: ml_collections.ConfigDict, model: Any, fresh_params: Any, abstract_params: Any,
               param_shardings: Any) -> Any | None:
  """The params a run starts from under `config.init`, placed with `param_shardings`; None: train from scratch.

  Args:
    config: the experiment config (reads config.init and config.model.name).
    model: the task's flax model, passed to the family's `load` (its fields give sizes).
    fresh_params: the freshly initialised params (sharded jax arrays).
    abstract_params: ShapeDtypeStructs of the params carrying their shardings (the direct-restore target).
    param_shardings: NamedShardings of the params.
  """
  init = init_spec(config)
  if init is None:
    return None
  load = family_load(config)
  path = init.get("path")
  assignment_map = tuple(init.get("assignment_map") or ())
  restored = None
  if path and not os.path.isfile(path):
    source, step = checkpointing.open_init_checkpoint(path)
    mismatch = checkpointing.describe_mismatch(source.saved_tree(step)["params"], abstract_params, "params")
    logging.info("Initialising params from %s/%d.", source.directory, step)
    if not mismatch and not assignment_map and not options_set(init):
      params, _ = source.restore_variables(step, abstract_params)
      source.close()
      return params
    restored = source.restore_params_as_numpy(step)
    source.close()
  elif path and load is None:
    raise ValueError(f"config.init.path={path!r} is a file; model {config.model.name!r} has no load() that reads "
                     "weight files (vlm/models/<family>.py).")
  params = load_params(config, model, jax.device_get(fresh_params), restored)
  return jax.device_put(params, param_shardings)


def load_params(config: ml_collections.ConfigDict, model: Any, fresh_params: Any, restored: Any | None) -> Any:
  """Host-side core of `initialize`: a restored params tree (or None) -> the model's params tree.

  Renames `restored` by config.init.assignment_map, applies the family's `load`, then checks that every
  parameter is there with its shape (config.init.fallback_to_scratch keeps missing ones fresh).
  """
  init = config.get("init") or ml_collections.ConfigDict()
  load = family_load(config)
  fresh = {k: np.asarray(v) for k, v in flatten(fresh_params).items()}
  if restored is not None:
    restored = {k: np.asarray(v) for k, v in flatten(restored).items()}
    restored = assign(restored, fresh, tuple(init.get("assignment_map") or ()))
  if load is not None:
    params = load(dict(fresh), restored, init, model)
  else:
    params = restored or {}
  path = init.get("path")
  params = complete(params, fresh, fallback_to_scratch=bool(init.get("fallback_to_scratch", False))
                    or restored is None,
                    source=repr(path) if path else ("the init checkpoint" if restored is not None
                                                    else "config.init.options"))
  return unflatten({k: np.asarray(v, fresh[k].dtype) for k, v in params.items()})
