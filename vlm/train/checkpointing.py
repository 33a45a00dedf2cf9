"""Checkpoints: orbax CheckpointManager with the train state and each process's data-iterator position.

Layout of WORKDIR/checkpoints/<step>/:
  state/   the TrainState pytree (PyTreeCheckpointHandler, OCDBT; every process writes its own shards)
  data/    process_<i>.json, one per process, written by that process: `{"process_count": n, "state": ...}`,
           the data iterator's `get_state()` after the last batch the checkpointed state was trained on.
Both items are committed together (orbax writes into a temporary directory and renames it once every
process has finished), so a checkpoint either has its data position or does not exist.

Restoring goes into abstract targets whose leaves carry NamedShardings, so a checkpoint written on one mesh
(or number of processes) restores onto another. Before any restore, `check_compatible` compares parameter
paths and shapes with the model built from the config and raises an error naming the mismatches; this runs
before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm.train import state as state_lib

CHECKPOINT_DIR = "checkpoints"
_MAX_LISTED = 20


class DataStateHandler(ocp.CheckpointHandler):
  """Saves one small JSON document per process (the data iterator position of that host)."""

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    path = epath.Path(directory) / f"process_{jax.process_index()}.json"
    path.write_text(json.dumps({"process_count": jax.process_count(), "state": args.state}))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    """This process's saved state, or None when missing or written by a different number of processes."""
    del args
    path = epath.Path(directory) / f"process_{jax.process_index()}.json"
    if not path.exists():
      logging.warning("No data-iterator state at %s; the data stream restarts from its beginning.", path)
      return None
    saved = json.loads(path.read_text())
    if saved.get("process_count") != jax.process_count():
      logging.warning("Data-iterator state was written by %s processes, this run has %d; the data stream "
                      "restarts from its beginning.", saved.get("process_count"), jax.process_count())
      return None
    return saved.get("state")

  def metadata(self, directory: epath.Path) -> None:
    del directory
    return None


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def _key_str(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {"/".join(_key_str(k) for k in path): tuple(leaf.shape) for path, leaf in leaves
          if hasattr(leaf, "shape")}


def describe_mismatch(saved: Any, expected: Any, what: str) -> list[str]:
  """Lines naming the paths that differ between two trees of shaped leaves (empty when they match)."""
  saved, expected = _shapes(saved), _shapes(expected)
  lines = []
  missing = sorted(set(expected) - set(saved))
  extra = sorted(set(saved) - set(expected))
  shape = sorted(p for p in set(saved) & set(expected) if saved[p] != expected[p])
  for title, paths, fmt in (
      ("in the model but not in the checkpoint", missing, lambda p: f"{p} {expected[p]}"),
      ("in the checkpoint but not in the model", extra, lambda p: f"{p} {saved[p]}"),
      ("shape differs", shape, lambda p: f"{p}: checkpoint {saved[p]} vs model {expected[p]}"),
  ):
    if paths:
      lines.append(f"  {what} {title} ({len(paths)}):")
      lines += [f"    {fmt(p)}" for p in paths[:_MAX_LISTED]]
      if len(paths) > _MAX_LISTED:
        lines.append(f"    ... and {len(paths) - _MAX_LISTED} more")
  return lines


def _type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
  """orbax's standard handlers, with replica-parallel saving of replicated arrays only across processes.

  Replica-parallel saving splits each replicated array among its replicas, so that every host writes a part;
  each part is a device slice that jax compiles once per shape. Within one process the same host writes every
  part anyway, and those compiles cost ~12 s per save of a tiny model on 8 CPU devices (most of a test's
  checkpoint time), so a single process saves each array from one replica."""
  default = ocp.type_handlers.get_type_handler(jax.Array)
  arrays = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=jax.process_count() > 1,
      array_metadata_store=getattr(default, "_array_metadata_store", None))
  scalars = ocp.type_handlers.ScalarHandler()
  return ocp.type_handlers.create_type_handler_registry(
      (int, scalars), (float, scalars), (bytes, scalars), (np.number, scalars),
      (np.ndarray, ocp.type_handlers.NumpyHandler()), (jax.Array, arrays), (str, ocp.type_handlers.StringHandler()))


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the run stops at once (see `Checkpointer.check`)."""


class Checkpointer:
  """Saves and restores TrainStates (+ data positions) under one checkpoint directory."""

  def __init__(self, directory: str, *, keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory) if "://" not in str(directory) else str(directory)
    if read_only:
      options = ocp.CheckpointManagerOptions(
          read_only=True, create=False, max_to_keep=None, save_interval_steps=0,
          cleanup_tmp_directories=False, enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers()),
                       "data": DataStateHandler()})

  # ---------------------------------------------------------------------------------------------- queries
  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def reached_preemption(self, step: int) -> bool:
    return self._mngr.reached_preemption(step)

  def saved_tree(self, step: int) -> dict[str, Any]:
    """The saved state as a nested dict of metadata leaves (with `.shape`, `.dtype`); reads no arrays."""
    metadata = self._mngr.item_metadata(step)["state"]
    return getattr(metadata, "tree", metadata)

  def check_compatible(self, step: int, abstract: state_lib.TrainState, *, with_model_state: bool = True
                       ) -> None:
    """Raises ValueError naming parameter paths whose presence or shape differs from `abstract`."""
    saved = self.saved_tree(step)
    lines = describe_mismatch(saved.get("params", {}), abstract.params, "params")
    if with_model_state:
      lines += describe_mismatch(saved.get("model_state", {}), abstract.model_state, "model_state")
    if lines:
      raise ValueError(
          f"The checkpoint {self.directory}/{step} does not match the model built from this config (does the "
          "workdir hold another model's checkpoint? use a fresh --workdir, or fix the config):\n"
          + "\n".join(lines))

  # ------------------------------------------------------------------------------------------------- save
  def save(self, step: int, state: state_lib.TrainState, data_state: Any) -> bool:
    """Starts an async save (returns once the arrays are copied off the devices). False if `step` exists."""
    if step in self._mngr.all_steps():
      return False
    try:
      return self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), data=DataStateSave(data_state if data_state is not None else {})),
          force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e) from e

  def wait(self) -> None:
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e) from e

  def check(self) -> None:
    """Raises CheckpointSaveError as soon as a finished background save reports a failure (full disk, lost
    bucket permissions), instead of at the next save."""
    try:
      self._mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(e) from e

  def _save_failed(self, error: Exception) -> "CheckpointSaveError":
    complete = list(self._mngr.all_steps())
    return CheckpointSaveError(
        f"Saving a checkpoint under {self.directory} failed: {type(error).__name__}: {error}. Training stopped; "
        f"the last complete checkpoint is {'step ' + str(max(complete)) if complete else 'none'}. Free space or "
        "fix the storage, then run the same command to resume.")

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  # ---------------------------------------------------------------------------------------------- restore
  def restore(self, step: int, abstract: state_lib.TrainState) -> tuple[state_lib.TrainState, Any]:
    """Restores the full state into `abstract`'s shardings, and this process's data position."""
    self.check_compatible(step, abstract)
    args = {"state": ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))}
    has_data = (epath.Path(self.directory) / str(step) / "data").exists()
    if has_data:
      args["data"] = DataStateRestore()
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError) as e:
      # Parameters matched (checked above), so the difference is in the optimizer state.
      raise ValueError(
          f"Could not restore {self.directory}/{step}: its optimizer state does not match config.optim "
          f"(changed optimizer, frozen groups or gradient clipping?). Original error: {e}") from e
    return restored["state"], restored["data"] if has_data else None

  def restore_variables(self, step: int, abstract_params: Any, abstract_model_state: Any | None = None
                        ) -> tuple[Any, Any]:
    """Restores only params (and model_state when given and non-empty) into their shardings."""
    item = {"params": abstract_params}
    if abstract_model_state:
      item["model_state"] = abstract_model_state
    restored = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)))
    return restored["state"]["params"], restored["state"].get("model_state")

  def restore_params_as_numpy(self, step: int) -> Any:
    """The saved params as host numpy arrays in the saved structure (for task-specific surgery)."""
    saved = self.saved_tree(step)["params"]
    item = {"params": jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), saved,
        is_leaf=lambda x: hasattr(x, "shape"))}
    restored = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                                       item), partial_restore=True)))
    return restored["state"]["params"]


def open_init_checkpoint(path: str) -> tuple[Checkpointer, int]:
  """Opens `config.init.path` read-only: a workdir, its checkpoints/ dir, or one step directory."""
  p = epath.Path(path)
  if (p / "state").exists() and p.name.isdigit():
    ckpt = Checkpointer(str(p.parent), keep=None, async_save=False, read_only=True)
    return ckpt, int(p.name)
  if (p / CHECKPOINT_DIR).exists():
    p = p / CHECKPOINT_DIR
  ckpt = Checkpointer(str(p), keep=None, async_save=False, read_only=True)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"config.init.path={path!r} holds no checkpoint.")
  return ckpt, step
