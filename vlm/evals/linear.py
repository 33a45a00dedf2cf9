"""Linear evaluation of frozen features: VATT's low-rank classifier (B.8) and a linear SVM (appendix C).

The backbone stays frozen: features come from `task.features(variables, batch) -> [B, D]` (the pooled backbone
output, before any projection head), averaged over each example's views, for a train split and a test split.
Two classifiers are fitted on them:

* 'low_rank' (B.8): logits = x U V + b with U [D, n], V [n, C]; each training step keeps a random subset of
  `keep` x n of the n components (rescaled by 1 / keep, so evaluation uses all of them unscaled). Adam at 5e-4,
  batch 64, 50k steps, n = 128, 10% of the components per step (the paper's numbers). The release
  (`vatt/utils/eval/evaluators.py`) draws the subset per example as Dropout(0.9) and adds an L2 of 0.1 on V; the
  paper describes one subset per step and no L2, which is what runs here (`weight_decay` adds an L2 if wanted).
* 'svm' (appendix C, "the same pipeline as MMV"): standardised features, one-vs-rest linear SVM with the squared
  hinge loss and an L2 penalty (sklearn's LinearSVC objective: 0.5 |w|^2 + C sum max(0, 1 - y f(x))^2, bias not
  penalised), solved to convergence by L-BFGS in JAX.

Config (`config.evals.<name>`):
  type: 'linear'.
  train_input / input: config.input overrides for the train and test splits (views averaged per example).
  classifiers [('low_rank', 'svm')].
  standardize [True]: zero mean, unit variance with the train statistics (both classifiers).
  low_rank: components [128], keep [0.1], lr [5e-4], batch_size [64], steps [50_000], weight_decay [0.0].
  svm: C [1.0], max_iters [500], tol [1e-6].
  seed [0]; every_steps; max_examples [0 = all] (train and test).

Metrics: `<classifier>/top1`, `<classifier>/top5`, plus `num_train`, `num_test`, `chance_top1`.
"""
from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlm import protocols
from vlm.evals import classification as classification_eval
from vlm.evals import common

LOW_RANK_DEFAULTS = dict(components=128, keep=0.1, lr=5e-4, batch_size=64, steps=50_000, weight_decay=0.0)
SVM_DEFAULTS = dict(C=1.0, max_iters=500, tol=1e-6)


# ------------------------------------------------------------------------------------------ low-rank (B.8)
def low_rank_init(rng: jax.Array, dim: int, num_classes: int, components: int) -> dict[str, jax.Array]:
  ku, kv = jax.random.split(rng)
  glorot = jax.nn.initializers.glorot_uniform()
  return {"U": glorot(ku, (dim, components)), "V": glorot(kv, (components, num_classes)),
          "b": jnp.zeros((num_classes,))}


def low_rank_logits(params: dict[str, jax.Array], x: jax.Array, keep_mask: jax.Array | None = None,
                    keep: float = 1.0) -> jax.Array:
  """x [B, D] -> logits [B, C]; `keep_mask` [n] (0/1) selects the components of a training step."""
  h = x @ params["U"]
  if keep_mask is not None:
    h = h * keep_mask / keep
  return h @ params["V"] + params["b"]


def component_mask(rng: jax.Array, components: int, keep: float) -> jax.Array:
  """[n] 0/1 with exactly max(1, round(keep * n)) ones at random positions."""
  k = max(1, int(round(keep * components)))
  return jnp.zeros((components,)).at[jax.random.permutation(rng, components)[:k]].set(1.0)


def fit_low_rank(x: np.ndarray, y: np.ndarray, num_classes: int, *, components: int = 128, keep: float = 0.1,
                 lr: float = 5e-4, batch_size: int = 64, steps: int = 50_000, weight_decay: float = 0.0,
                 seed: int = 0) -> dict[str, jax.Array]:
  """Trains the B.8 classifier on features x [N, D] and labels y [N] with Adam; returns its params."""
  if not 0.0 < keep <= 1.0:
    raise ValueError(f"low_rank keep={keep}; expected a fraction in (0, 1].")
  rng = jax.random.key(seed)
  params = low_rank_init(rng, x.shape[1], num_classes, components)
  opt = optax.adam(lr)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  batch_size = min(batch_size, x.shape[0])
  keep_k = max(1, int(round(keep * components))) / components  # the kept fraction actually used

  def loss_fn(p, xb, yb, mask):
    logits = low_rank_logits(p, xb, mask, keep_k)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss + 0.5 * weight_decay * jnp.sum(p["V"] ** 2)

  def step(carry, key):
    p, state = carry
    k_idx, k_mask = jax.random.split(key)
    idx = jax.random.choice(k_idx, x.shape[0], (batch_size,), replace=False)
    grads = jax.grad(loss_fn)(p, x[idx], y[idx], component_mask(k_mask, components, keep))
    updates, state = opt.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), None

  run = jax.jit(lambda p, s, keys: jax.lax.scan(step, (p, s), keys)[0])
  state = opt.init(params)
  keys = jax.random.split(jax.random.fold_in(rng, 1), steps)
  chunk = 5000  # scanned in chunks of at most 5000 steps, each logged (50k steps take minutes on a CPU)
  for start in range(0, steps, chunk):
    params, state = run(params, state, keys[start:start + chunk])
    logging.info("low-rank classifier: %d / %d steps", min(start + chunk, steps), steps)
  return params


# --------------------------------------------------------------------------------------------- SVM (C)
def svm_objective(params: dict[str, jax.Array], x: jax.Array, y_pm: jax.Array, c: float) -> jax.Array:
  """One-vs-rest squared-hinge SVM: 0.5 |W|^2 + C sum_i sum_c max(0, 1 - y_ic (x_i w_c + b_c))^2."""
  margins = y_pm * (x @ params["W"] + params["b"])
  return 0.5 * jnp.sum(params["W"] ** 2) + c * jnp.sum(jnp.maximum(0.0, 1.0 - margins) ** 2)


def fit_svm(x: np.ndarray, y: np.ndarray, num_classes: int, *, C: float = 1.0,  # pylint: disable=invalid-name
            max_iters: int = 500, tol: float = 1e-6) -> dict[str, jax.Array]:
  """Fits the linear SVM on x [N, D], labels y [N] by L-BFGS (the objective is convex, piecewise quadratic)."""
  x = jnp.asarray(x, jnp.float32)
  y_pm = 2.0 * jax.nn.one_hot(jnp.asarray(y), num_classes) - 1.0
  params = {"W": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  fun = lambda p: svm_objective(p, x, y_pm, C)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  @jax.jit
  def solve(params):
    def body(carry):
      p, state, _ = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
      return optax.apply_updates(p, updates), state, optax.tree.norm(grad)

    def cond(carry):
      _, state, gnorm = carry
      return (optax.tree.get(state, "count") < max_iters) & (gnorm > tol * (1.0 + jnp.abs(fun(carry[0]))))

    p, _, _ = jax.lax.while_loop(cond, body, (params, opt.init(params), jnp.asarray(jnp.inf)))
    return p

  return solve(params)


# ------------------------------------------------------------------------------------------- evaluator
class Evaluator:
  """Fits linear classifiers on frozen train-split features and scores them on the test split."""

  def __init__(self, config: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict, task: Any,
               mesh: jax.sharding.Mesh):
    protocols.require(task, protocols.FeatureExtractor, "evals type 'linear'")
    self.config, self.eval_cfg, self.task, self.mesh = config, eval_cfg, task, mesh
    self.classifiers = tuple(eval_cfg.get("classifiers", ("low_rank", "svm")))
    unknown = set(self.classifiers) - {"low_rank", "svm"}
    if unknown:
      raise ValueError(f"evals classifiers {sorted(unknown)}; expected 'low_rank' and/or 'svm'.")
    if eval_cfg.get("train_input") is None:
      raise ValueError("Linear evaluation needs evals.<name>.train_input (the split the classifiers fit on).")
    self._features = jax.jit(self._features_fn)

  def _features_fn(self, variables, video):
    b, v = video.shape[:2]
    feats = self.task.features(variables, {"video": video.reshape((b * v,) + video.shape[2:])})
    return feats.reshape(b, v, -1).mean(axis=1)

  def _split(self, variables, input_cfg) -> tuple[np.ndarray, np.ndarray]:
    out = common.collect(self.config, input_cfg, self.mesh, lambda g: {"x": self._features(variables, g["video"])},
                         keys=("video",), keep=("label",),
                         max_examples=int(self.eval_cfg.get("max_examples", 0) or 0))
    if "label" not in out:
      raise KeyError("Linear evaluation needs single `label`s in the batches (a label(...) op in the input pp).")
    return out["x"].astype(np.float32), out["label"].astype(np.int32)

  def run(self, variables: dict, step: int) -> dict[str, float]:
    start = time.time()
    x_train, y_train = self._split(variables, self.eval_cfg.train_input)
    x_test, y_test = self._split(variables, self.eval_cfg.input)
    num_classes = int(max(y_train.max(), y_test.max()) + 1)
    if self.eval_cfg.get("num_classes"):
      num_classes = int(self.eval_cfg.num_classes)
    if self.eval_cfg.get("standardize", True):
      mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
      x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    seed = int(self.eval_cfg.get("seed", 0))
    metrics: dict[str, float] = {}
    for name in self.classifiers:
      t0 = time.time()
      if name == "low_rank":
        opts = {**LOW_RANK_DEFAULTS, **dict(self.eval_cfg.get("low_rank", None) or {})}
        params = fit_low_rank(x_train, y_train, num_classes, seed=seed, **opts)
        scores = np.asarray(low_rank_logits(params, jnp.asarray(x_test)))
      else:
        opts = {**SVM_DEFAULTS, **dict(self.eval_cfg.get("svm", None) or {})}
        params = fit_svm(x_train, y_train, num_classes, **opts)
        scores = np.asarray(jnp.asarray(x_test) @ params["W"] + params["b"])
      for metric, value in classification_eval.Evaluator.metrics(scores, y_test).items():
        if metric.startswith("top"):
          metrics[f"{name}/{metric}"] = value
      logging.info("linear eval %s fitted in %.1fs: %s", name, time.time() - t0,
                   {k: round(v, 2) for k, v in metrics.items() if k.startswith(name)})
    metrics.update(num_train=float(len(y_train)), num_test=float(len(y_test)), chance_top1=100.0 / num_classes)
    logging.info("linear eval: %d train / %d test examples in %.1fs at step %d", len(y_train), len(y_test),
                 time.time() - start, step)
    return metrics
