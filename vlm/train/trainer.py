"""The one trainer every model family uses: `train_and_evaluate(config, workdir)` and `evaluate(...)`.

The trainer never learns which model it trains. It talks to a task (`vlm.tasks.<config.task.name>.Task`),
the data layer (`make_train_iterator`) and evaluators (`vlm.evals.<type>.Evaluator`) through the contracts
in vlm/README.md, and reads top to bottom in the order a run happens:

  setup_mesh           mesh and logical-axis rules from config.mesh / config.sharding
  build_task           import the task module
  abstract_variables   shapes and shardings of the model variables (eval_shape, no FLOPs, no memory)
  build_state_spec     + optimizer: the abstract TrainState, its shardings and a sharded init function
  restore_or_init      workdir checkpoint -> config.init (params only) -> from scratch
  make_train_iterator  per-host data, resumed at the checkpointed position
  build_evaluators     one Evaluator per config.evals entry
  train_loop           jitted steps; logging, evals and checkpoints on their schedules

Config fields read here (defaults in brackets):
  seed [0]; total_steps (required for training); log_every_steps [50]; checkpoint_every_steps [1000];
  keep_checkpoints [3]; init (vlm/train/init.py); mesh [(('data', -1), ('fsdp', 1), ('tensor', 1))];
  sharding ['dp']; sharding_rules [None: extra (logical, mesh_axis) rules tried before the preset];
  task.name; input.batch_size (global); input.data.name; optim (see optim.py);
  evals.<key>.type, evals.<key>.every_steps [None: only at the end].

Data hook: when `config.input.data.name` is dotted (e.g. 'tests.toy_task') and that module defines
`make_train_iterator`, it is used instead of the data layer's, with the same signature.

Initialisation: a run with no checkpoint in its workdir starts from `config.init` (vlm/train/init.py: a checkpoint
or weights file, an assignment map, the family's `load`), else from scratch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import signal
import threading
from typing import Any, Callable, Iterator

from absl import logging
from clu import parameter_overview
from etils import epath
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlm.parallel import mesh as mesh_lib
from vlm.parallel import multihost
from vlm.parallel import partitioning
from vlm import config_lib
from vlm import protocols
from vlm import registry
from vlm.registry import build_task  # re-exported: tools and tests build tasks through the trainer
from vlm.train import checkpointing
from vlm.train import init as init_lib
from vlm.train import lock as lock_lib
from vlm.train import metrics as metrics_lib
from vlm.train import optim
from vlm.train import state as state_lib
from vlm.train import step as step_lib

ConfigDict = ml_collections.ConfigDict




# ================================================================================================== setup
@dataclasses.dataclass(frozen=True)
class Setup:
  """The mesh and how logical axes map onto it."""
  mesh: jax.sharding.Mesh
  rules: tuple[tuple[str, Any], ...]
  batch_sharding: jax.sharding.NamedSharding

  def context(self):
    """Mesh + rules, for tracing model code that constrains activations."""
    return partitioning.activation_context(self.mesh, self.rules)


def setup_mesh(config: ConfigDict, devices: Any = None) -> Setup:
  """Builds the mesh (config.mesh) and the logical-axis rules (config.sharding, config.sharding_rules).

  `devices` defaults to `jax.devices()`; vlm.tools.aot passes a TPU topology's (compile-only) devices.
  """
  mesh = mesh_lib.make_mesh(config.get("mesh") or mesh_lib.DEFAULT_MESH, devices)
  rules = partitioning.get_rules(config.get("sharding") or "dp", config.get("sharding_rules"), mesh)
  logging.info("Mesh %s over %d devices (%d processes); sharding preset %r.", dict(mesh.shape),
               mesh.size, jax.process_count(), config.get("sharding") or "dp")
  return Setup(mesh=mesh, rules=rules, batch_sharding=partitioning.batch_sharding(mesh))


# ================================================================================================== state
@dataclasses.dataclass
class VariablesSpec:
  """Shapes and shardings of the model variables, with the dummy batch that produced them."""
  params: Any               # ShapeDtypeStructs
  model_state: Any
  param_shardings: Any      # NamedShardings
  model_state_shardings: Any
  dummy_batch: dict[str, jax.Array]


def abstract_variables(config: ConfigDict, task: Any, setup: Setup) -> VariablesSpec:
  """eval_shape(init) -> logical specs -> NamedShardings. Nothing is allocated or compiled.

  The init batch has one example per batch shard, and at least two (objectives that pair examples, such as
  VTM's in-batch negatives, need a second one), placed with the batch sharding, so activation constraints inside
  `init` see a batch the mesh divides. Its values do not matter, only shapes.
  """
  shards = mesh_lib.num_batch_shards(setup.mesh)
  n = shards * -(-2 // shards)
  dummy = {k: multihost.global_array_from_full(v, setup.batch_sharding)
           for k, v in task.dummy_batch(n).items() if np.asarray(v).dtype.kind in "biuf"}
  with setup.context():
    boxed = jax.eval_shape(task.init_variables, jax.random.key(config.get("seed", 0)), dummy)
  logical = partitioning.logical_specs(boxed)
  unboxed = flax.core.meta.unbox(boxed)
  shardings = partitioning.mesh_shardings(unboxed, logical, setup.mesh, setup.rules)
  params, model_state = state_lib.split_variables(unboxed)
  param_shardings, model_state_shardings = state_lib.split_variables(shardings)
  return VariablesSpec(params, model_state, param_shardings, model_state_shardings, dummy)


@dataclasses.dataclass
class StateSpec:
  """The abstract TrainState (leaves carry shardings), its shardings, the optimizer and a sharded init."""
  abstract: state_lib.TrainState
  shardings: state_lib.TrainState
  tx: optax.GradientTransformation
  schedule: Callable[[Any], jax.Array]
  init: Callable[[], state_lib.TrainState]
  variables: VariablesSpec


def build_state_spec(config: ConfigDict, task: Any, setup: Setup, total_steps: int) -> StateSpec:
  """Optimizer + shardings for the whole TrainState; `init()` creates it already sharded (jit out_shardings)."""
  var_spec = abstract_variables(config, task, setup)
  tx, schedule = optim.make_optimizer(config.optim, var_spec.params, total_steps)
  opt_abstract = jax.eval_shape(tx.init, var_spec.params)
  opt_shardings = partitioning.shardings_like_params(
      opt_abstract, var_spec.params, var_spec.param_shardings, setup.mesh)
  shardings = state_lib.TrainState(
      step=partitioning.replicated(setup.mesh), params=var_spec.param_shardings, opt_state=opt_shardings,
      model_state=var_spec.model_state_shardings)
  plain = state_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=var_spec.params,
                               opt_state=opt_abstract, model_state=var_spec.model_state)
  abstract = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, shardings)
  seed = config.get("seed", 0)

  def init_fn(batch):
    variables = flax.core.meta.unbox(task.init_variables(jax.random.key(seed), batch))
    params, model_state = state_lib.split_variables(variables)
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                model_state=model_state)

  jitted = jax.jit(init_fn, out_shardings=shardings)

  def init():
    with setup.context():
      return jitted(var_spec.dummy_batch)

  return StateSpec(abstract, shardings, tx, schedule, init, var_spec)


def log_parameter_overview(params: Any, shardings: Any) -> None:
  """clu's table (with shardings) and the totals, on process 0."""
  parameter_overview.log_parameter_overview(params, include_stats="sharding", jax_logging_process=0)
  sizes = [int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)]
  sharded = [int(np.prod(p.shape)) for p, s in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(shardings))
             if not s.is_fully_replicated]
  if multihost.is_main_process():
    logging.info("Total parameters: %s (%d arrays); %.1f%% of values are sharded.", f"{sum(sizes):,}",
                 len(sizes), 100.0 * sum(sharded) / max(sum(sizes), 1))


# ================================================================================================ restore
def restore_or_init(config: ConfigDict, task: Any, spec: StateSpec, ckpt: checkpointing.Checkpointer
                    ) -> tuple[state_lib.TrainState, Any]:
  """Resume order: a checkpoint in the workdir, then `config.init` (params only; vlm/train/init.py), then scratch.

  Returns:
    (state, data_state): data_state is the saved iterator position of this process, or None.
  """
  step = ckpt.latest_step()
  multihost.assert_same_on_all_processes(-1 if step is None else step, "the checkpoint step to resume from")
  if step is not None:
    logging.info("Resuming from %s/%d.", ckpt.directory, step)
    return ckpt.restore(step, spec.abstract)
  state = spec.init()
  params = init_lib.initialize(config, task.model, state.params, spec.abstract.params, spec.shardings.params)
  if params is None:
    logging.info("No checkpoint in the workdir and nothing under config.init: training from scratch.")
  else:
    state = state.replace(params=params)
  return state, None


# =================================================================================================== data
def make_train_iterator(config: ConfigDict, data_state: Any) -> Any:
  """The per-host training stream, resumed at `data_state` (see the module docstring for the hook)."""
  name = config.input.data.get("name", "") if config.get("input") and config.input.get("data") else ""
  make = None
  if "." in (name or ""):
    try:
      make = getattr(importlib.import_module(name), "make_train_iterator", None)
    except ImportError:
      make = None
  if make is None:
    from vlm.data import inputs  # pylint: disable=g-import-not-at-top
    make = inputs.make_train_iterator
  return make(config, process_index=jax.process_index(), process_count=jax.process_count(),
              state=data_state)


def _batches(data_iter: Any, sharding: jax.sharding.Sharding, per_host: set[int]
             ) -> Iterator[tuple[dict[str, jax.Array], Any]]:
  """(global batch, iterator position after it): the position is what a checkpoint of that step stores."""
  while True:
    local = next(data_iter)
    position = data_iter.get_state() if hasattr(data_iter, "get_state") else None
    yield multihost.global_batch(local, sharding, per_host), position


# ================================================================================================== evals
def build_evaluators(config: ConfigDict, task: Any, setup: Setup) -> dict[str, tuple[Any, int | None]]:
  """`{key: (Evaluator, every_steps)}` from config.evals (module vlm.evals.<type> or a dotted path)."""
  out = {}
  for key, eval_cfg in (config.get("evals") or {}).items():
    module = registry.resolve(eval_cfg.type, "evals")
    with setup.context():
      out[key] = (module.Evaluator(config, eval_cfg, task, setup.mesh), eval_cfg.get("every_steps"))
  return out


def run_evaluators(evaluators: dict[str, tuple[Any, int | None]], keys: list[str],
                   state: state_lib.TrainState, step: int, setup: Setup,
                   logger: metrics_lib.MetricLogger) -> dict[str, float]:
  """Runs the named evaluators and logs `eval/<key>/<metric>`."""
  results = {}
  for key in keys:
    with setup.context():
      metrics = evaluators[key][0].run(state.variables(), step)
    results.update({f"eval/{key}/{name}": float(np.asarray(v)) for name, v in metrics.items()})
  if results:
    logger.write_scalars(step, results)
    logger.flush()
  return results


# ============================================================================================= train loop
class _Window:
  """Host-side averages of per-step metrics between two log lines."""

  def __init__(self):
    self.sums: dict[str, float] = {}
    self.count = 0

  def add(self, metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
    self.count += 1

  def pop(self) -> dict[str, float]:
    out = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
    self.sums, self.count = {}, 0
    return out


def _check_finite(step: int, metrics: dict[str, float], ckpt: checkpointing.Checkpointer) -> None:
  """Stops the run when the step's loss, gradients, new parameters or optimizer state are not finite.

  The state that step produced is never saved (this runs before any save of it), so every checkpoint holds
  finite parameters and the last one is a good place to resume from with a smaller learning rate.
  """
  failed = [name.replace("_", " ") for name in ("loss", "gradients", "parameters", "optimizer_state")
            if metrics.get(f"train/finite/{name}", 1.0) <= 0]
  if not failed:
    return
  ckpt.wait()  # the last good checkpoint finishes writing
  last = ckpt.latest_step()
  raise FloatingPointError(
      f"Non-finite {' and '.join(failed)} at step {step} (loss={metrics.get('train/loss')}, "
      f"grad_norm={metrics.get('train/grad_norm')}, param_norm={metrics.get('train/param_norm')}). Training "
      f"stopped without saving it; the last checkpoint "
      f"({'step ' + str(last) + ', finite parameters' if last is not None else 'none'}) is intact.")


class Interrupted(RuntimeError):
  """The run stopped early on a signal or a preemption notice, after saving a checkpoint of its last step.

  `vlm.main` exits with `EXIT_INTERRUPTED`; rerunning the same command resumes there.
  """
  EXIT_CODE = 75  # EX_TEMPFAIL: try again


class _SignalStop:
  """SIGTERM / SIGINT in a single-process run: the first asks the loop to save and stop after the current step,
  a second one exits at once. Multi-process runs use JAX's preemption notice instead (`reached_preemption`),
  which every process sees at the same step."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      logging.warning("Second signal %d: exiting now without a checkpoint.", signum)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.received = signum
    logging.warning("Signal %d: saving a checkpoint after the current step, then stopping (send it again to "
                    "exit at once).", signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False


def train_loop(config: ConfigDict, *, setup: Setup, state: state_lib.TrainState, train_step: Callable,
               batches: Iterator, data_iter: Any, ckpt: checkpointing.Checkpointer,
               logger: metrics_lib.MetricLogger, evaluators: dict, total_steps: int, stop_step: int
               ) -> tuple[state_lib.TrainState, dict[str, float]]:
  """Runs steps until `stop_step`; returns the final state and the last logged metrics.

  The host reads each step's metrics one step behind the device (the next step is already queued), checks
  them for non-finite values and averages them for logging. Anything that must not see a bad state (a
  checkpoint, an eval, a log line) first reads the current step's metrics.
  """
  log_every = config.get("log_every_steps") or 50
  ckpt_every = config.get("checkpoint_every_steps") or 1000
  progress = metrics_lib.Progress(total_steps, config.input.batch_size)
  window, last_logged = _Window(), {}
  step = int(jax.device_get(state.step))
  pending = None  # (step, device metrics) not yet read by the host

  def consume():
    nonlocal pending
    if pending is None:
      return
    done_step, device_metrics = pending
    pending = None
    host = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    _check_finite(done_step, host, ckpt)
    window.add(host)
    if done_step == first_step:
      progress.start(done_step)  # rates exclude compilation

  first_step = step + 1
  batch, position = next(batches)
  with _SignalStop() as stop:
    while step < stop_step:
      with setup.context():
        state, device_metrics = train_step(state, batch)
      step += 1
      step_position = position
      if step < stop_step:
        batch, position = next(batches)  # host work overlaps the queued step
      consume()
      pending = (step, device_metrics)
      ckpt.check()  # a background save that failed stops the run now, naming the cause

      due_evals = [k for k, (_, every) in evaluators.items()
                   if (every and step % every == 0) or step == total_steps]
      preempted = ckpt.reached_preemption(step) or stop.received is not None
      do_log = step % log_every == 0 or step == stop_step
      do_save = step % ckpt_every == 0 or step == stop_step or preempted
      if do_log or do_save or due_evals:
        consume()
      if do_log:
        scalars = window.pop()
        scalars = {k: v for k, v in scalars.items() if not k.startswith("train/finite/")}
        scalars.update(progress.report(step))
        for key, count in (getattr(data_iter, "skipped", None) or {}).items():
          scalars[f"data/skipped/{key}"] = count
        logger.write_scalars(step, scalars)
        logger.flush()
        last_logged = scalars
      if do_save:
        ckpt.save(step, state, step_position)
      if due_evals:
        last_logged = {**last_logged, **run_evaluators(evaluators, due_evals, state, step, setup, logger)}
      if preempted:
        consume()
        ckpt.wait()
        reason = f"signal {stop.received}" if stop.received is not None else "a preemption notice"
        raise Interrupted(f"Stopped by {reason} at step {step} of {total_steps}; checkpoint {step} saved. Run the "
                          "same command again to resume.")
  consume()
  return state, last_logged


# ============================================================================================ entry points
def _workdir_setup(config: ConfigDict, workdir: str, config_name: str) -> metrics_lib.MetricLogger:
  """Creates the workdir, records the config (process 0) and opens the metric writers."""
  if multihost.is_main_process():
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    (epath.Path(workdir) / config_name).write_text(config.to_json_best_effort(indent=2))
  multihost.sync("workdir_created")
  return metrics_lib.MetricLogger(workdir, is_main=multihost.is_main_process())


def train_and_evaluate(config: ConfigDict, workdir: str, *, stop_after_steps: int | None = None
                       ) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint) and runs the evaluators.

  Args:
    config: the experiment config.
    workdir: checkpoints, metrics.jsonl, TensorBoard events and config.json go here.
    stop_after_steps: stop (with a checkpoint) once this many steps are done, as a preemption would; the
      schedule still spans config.total_steps. For tests and time-sliced jobs.

  Returns:
    The last logged train metrics and eval metrics.
  """
  total_steps = int(config.total_steps)
  config_lib.check_ranges(config)  # e.g. keep_checkpoints >= 1: 0 would delete the run's result
  keep = config.get("keep_checkpoints", 3)
  # Every records glob of the run (train and evaluations) is listed now, before the state build.
  from vlm.data import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
  if "." not in str(config.input.get("data", {}).get("name", "")):  # a dotted name brings its own iterator
    inputs_lib.check_input_config(config, {name: ev.get("input", {})
                                           for name, ev in config.get("evals", {}).items()})
  setup = setup_mesh(config)
  # A mixture entry may set its own batch size (HierVL's episode stream): each must split over the mesh.
  sizes = {("config.input.batch_size", config.input.batch_size)}
  sizes |= {(f"config.input.mixture.{name}.batch_size", entry["batch_size"])
            for name, entry in (config.input.get("mixture") or {}).items() if entry.get("batch_size")}
  per_host = {multihost.check_batch_size(size, mesh_lib.num_batch_shards(setup.mesh), jax.process_count(),
                                         key=key) for key, size in sorted(sizes)}
  task = build_task(config)
  lock = lock_lib.WorkdirLock(workdir) if multihost.is_main_process() else contextlib.nullcontext()
  with lock:
    multihost.sync("workdir_locked")
    logger = _workdir_setup(config, workdir, "config.json")
    ckpt = None
    try:
      logger.write_hparams(metrics_lib.flatten_config(config))
      spec = build_state_spec(config, task, setup, total_steps)
      ckpt = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR), keep=keep)
      state, data_state = restore_or_init(config, task, spec, ckpt)
      log_parameter_overview(state.params, spec.shardings.params)
      start_step = int(jax.device_get(state.step))

      data_iter = make_train_iterator(config, data_state)
      batches = _batches(data_iter, setup.batch_sharding, per_host)
      evaluators = build_evaluators(config, task, setup)
      train_step = step_lib.jit_train_step(
          step_lib.make_train_step(task, spec.tx, spec.schedule, config.get("seed", 0)),
          spec.shardings, setup.batch_sharding, setup.mesh)

      stop_step = min(total_steps, stop_after_steps if stop_after_steps is not None else total_steps)
      results = {}
      if start_step < stop_step:
        state, results = train_loop(config, setup=setup, state=state, train_step=train_step, batches=batches,
                                    data_iter=data_iter, ckpt=ckpt, logger=logger, evaluators=evaluators,
                                    total_steps=total_steps, stop_step=stop_step)
      elif start_step >= total_steps and evaluators:
        logging.info("Checkpoint at step %d already reached total_steps=%d; running the evaluators.",
                     start_step, total_steps)
        results = run_evaluators(evaluators, list(evaluators), state, start_step, setup, logger)
    finally:
      if ckpt is not None:
        ckpt.close()
      logger.close()
    multihost.sync("train_and_evaluate_done")
  return results


def load_variables(config: ConfigDict, workdir: str, setup: Setup | None = None, task: Any = None
                   ) -> tuple[Any, Setup, state_lib.TrainState]:
  """Restores params and model state of the latest checkpoint in `workdir` (else config.init.path).

  Returns:
    (task, setup, state) where `state.variables()` is what the task's prediction functions take; the
    optimizer state is not restored (`state.opt_state` is None).
  """
  setup = setup or setup_mesh(config)
  task = task or build_task(config)
  var_spec = abstract_variables(config, task, setup)
  abstract = lambda tree, shardings: jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  abstract_params = abstract(var_spec.params, var_spec.param_shardings)
  abstract_model_state = abstract(var_spec.model_state, var_spec.model_state_shardings)

  directory = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
  source = directory if (epath.Path(directory).exists() and any(
      p.name.isdigit() for p in epath.Path(directory).iterdir())) else (config.get("init") or {}).get("path")
  if not source:
    raise FileNotFoundError(f"No checkpoint in {directory} and no config.init.path.")
  ckpt, step = checkpointing.open_init_checkpoint(source)
  plain = state_lib.TrainState(step=None, params=abstract_params, opt_state=None,
                               model_state=abstract_model_state)
  ckpt.check_compatible(step, plain)
  params, model_state = ckpt.restore_variables(step, abstract_params, abstract_model_state)
  ckpt.close()
  logging.info("Restored %s/%d.", ckpt.directory, step)
  return task, setup, state_lib.TrainState(step=step, params=params, opt_state=None,
                                           model_state=model_state or {})


def evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
  """Restores the latest checkpoint of `workdir` (else config.init.path) and runs every evaluator."""
  setup = setup_mesh(config)
  logger = _workdir_setup(config, workdir, "config_eval.json")  # keeps the training config.json
  task, setup, state = load_variables(config, workdir, setup)
  step = int(state.step)
  evaluators = build_evaluators(config, task, setup)
  results = run_evaluators(evaluators, list(evaluators), state, step, setup, logger)
  if multihost.is_main_process():
    logging.info("Eval results at step %d: %s", step, json.dumps(results, indent=1, sort_keys=True))
  logger.close()
  multihost.sync("evaluate_done")
  return results
