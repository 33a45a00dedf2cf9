"""A tiny task, data stream, evaluator and config for the trainer's tests (seconds on CPU).

This one module plays every role the trainer talks to, through the same contracts as the real ones:
  * config file:   `--config=tests/toy_task.py:steps=6,batch=16` (`get_config`)
  * task:          `config.task.name = 'tests.toy_task'` (`Task`)
  * data:          `config.input.data.name = 'tests.toy_task'` (`make_train_iterator`, the trainer's data hook)
  * evaluator:     `config.evals.toy.type = 'tests.toy_task'` (`Evaluator`)

The problem: classify 16-d Gaussian vectors by which of 4 fixed random directions they align with best. A
two-layer MLP with dropout and a running-mean input normaliser (so there is a `batch_stats` model state)
learns it within a few dozen steps. Kernels carry logical axis names, so sharding presets apply to it.

Data are a pure function of (seed, global batch index): the global batch k is the same whatever the
number of processes, and each process takes its contiguous rows. So runs on 1x8 and 2x4 devices see the
same examples, and the iterator state is just the next batch index.
"""
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlm import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`tests/toy_task.py:steps=6,batch=16,sharding=dp,nan_at=-1`."""
  arg = config_lib.parse_arg(arg, steps=6, batch=16, sharding="dp", nan_at=-1, lr=0.05, evals=True, signal_at=-1)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 3
  config.keep_checkpoints = 5
  config.init = config_lib.init_block()
  config.init.options.fill = ml_collections.config_dict.placeholder(float)  # read by `load` below

  config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  config.sharding = arg.sharding

  config.task = dict(name="tests.toy_task")
  config.model = dict(name="tests.toy_task", width=16, hidden=32, classes=4, dropout=0.1)
  config.input = dict(batch_size=arg.batch, data=dict(name="tests.toy_task", seed=7, nan_at_batch=arg.nan_at,
                                                             signal_at_batch=arg.signal_at))

  config.optim = dict(
      name="adamw", lr=arg.lr, weight_decay=1e-4, grad_clip_norm=1.0,
      schedule=dict(kind="warmup_cosine", warmup_steps=2))

  config.evals = {}
  if arg.evals:
    config.evals.toy = dict(type="tests.toy_task", every_steps=3, examples=64)
  return config


# ============================================================================================== the model
def _kernel(names):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)


def _bias(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class ToyModel(nn.Module):
  """Input normaliser (running mean, a `batch_stats` variable) -> Dense -> ReLU -> Dropout -> Dense."""
  hidden: int
  classes: int
  dropout: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.with_logical_constraint(x, ("batch", "act_embed"))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (x.shape[-1],))
    if train and not self.is_initializing():
      mean.value = 0.9 * mean.value + 0.1 * jnp.mean(x, axis=0)
    x = x - mean.value
    h = nn.Dense(self.hidden, kernel_init=_kernel(("embed", "mlp")), bias_init=_bias(("mlp",)))(x)
    h = nn.with_logical_constraint(nn.relu(h), ("batch", "act_mlp"))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.classes, kernel_init=_kernel(("mlp", "classes")), bias_init=_bias(("classes",)))(h)


def load(params, restored, init, model):
  """The family `load` of vlm/train/init.py: `init.options.fill` sets every parameter to that value (a stand-in
  for external weights); otherwise the restored (renamed) checkpoint params over the fresh ones."""
  del model
  if init.options.get("fill") is not None:
    return {k: np.full(v.shape, init.options.fill, v.dtype) for k, v in params.items()}
  return dict(restored or {})


class Task:
  """The task protocol of vlm/protocols.py."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.width = config.model.width
    self.model = ToyModel(hidden=config.model.hidden, classes=config.model.classes,
                          dropout=config.model.dropout)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros((batch_size, self.width), np.float32), "label": np.zeros((batch_size,), np.int32)}

  def init_variables(self, rng, batch) -> dict:
    return self.model.init({"params": rng, "dropout": rng}, batch["x"], train=False)

  def logits(self, variables, batch):
    return self.model.apply(variables, batch["x"], train=False)

  def loss_fn(self, params, model_state, batch, rng, *, train: bool):
    variables = {"params": params, **model_state}
    if train:
      logits, new_state = self.model.apply(variables, batch["x"], train=True, rngs={"dropout": rng},
                                           mutable=list(model_state))
    else:
      logits, new_state = self.model.apply(variables, batch["x"], train=False), model_state
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"accuracy": accuracy}, dict(new_state))


# =============================================================================================== the data
def _directions(seed: int, width: int, classes: int) -> np.ndarray:
  return np.random.default_rng([seed, 999]).normal(size=(width, classes))


def global_batch(data_cfg, model_cfg, batch_size: int, index: int) -> dict[str, np.ndarray]:
  """The global batch number `index` (identical on every process)."""
  rng = np.random.default_rng([data_cfg.seed, index])
  x = rng.normal(size=(batch_size, model_cfg.width)).astype(np.float32)
  label = np.argmax(x @ _directions(data_cfg.seed, model_cfg.width, model_cfg.classes), -1).astype(np.int32)
  if index == data_cfg.get("nan_at_batch", -1):
    x[:] = np.nan
  return {"x": x, "label": label}


class ToyIterator:
  """Infinite per-host stream; `get_state()` is the next global batch index."""

  def __init__(self, config, process_index: int, process_count: int, state: dict | None):
    self._config = config
    self._index = int(state["index"]) if state else 0
    per_host = config.input.batch_size // process_count
    self._rows = slice(process_index * per_host, (process_index + 1) * per_host)
    self.skipped = {"corrupt": 0}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._index == self._config.input.data.get("signal_at_batch", -1):
      os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption would (tests of the signal handling)
    batch = global_batch(self._config.input.data, self._config.model, self._config.input.batch_size,
                         self._index)
    self._index += 1
    return {k: v[self._rows] for k, v in batch.items()}

  def get_state(self) -> dict[str, int]:
    return {"index": self._index}


def make_train_iterator(config, *, process_index: int, process_count: int, state=None) -> ToyIterator:
  return ToyIterator(config, process_index, process_count, state)


# ========================================================================================== the evaluator
class Evaluator:
  """Loss and accuracy on a fixed held-out set (batch indices far from the training stream)."""

  def __init__(self, config, eval_cfg, task: Task, mesh: jax.sharding.Mesh):
    self._task = task
    n = eval_cfg.get("examples", 64)
    batch = global_batch(config.input.data, config.model, n, index=10**6)
    per_host = n // jax.process_count()
    rows = slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_axes))
    self._batch = {k: jax.make_array_from_process_local_data(sharding, v[rows]) for k, v in batch.items()}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._metrics = jax.jit(self._compute, out_shardings=replicated)

  def _compute(self, variables, batch):
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    loss, (metrics, _) = self._task.loss_fn(params, model_state, batch, None, train=False)
    return {"loss": loss, "accuracy": metrics["accuracy"]}

  def run(self, variables: dict, step: int) -> dict[str, float]:
    del step
    return {k: float(v) for k, v in jax.device_get(self._metrics(variables, self._batch)).items()}
