"""Classification shared by every family: one backbone, one linear head per dataset (TubeViT section 1).

The backbone comes from the model family: `vlm.models.<config.model.name>.build_backbone(config)` returns a module
with `__call__(video [B, T, H, W, 3], *, train) -> (features [B, D], aux)` (TubeViT: vlm/models/tubevit.py). The
task puts `Dense(num_classes)` heads named `head_<dataset>` on the features. Joint training (images + videos,
ImageNet + Kinetics): batch key `dataset` int32 [B] (absent: 0) names each example's head, and each step's loss
is the mean over the examples present, each on its own head.

Losses:
  * softmax cross-entropy against `label` int32 [B] with label smoothing (targets (1 - s) one-hot + s / C), or
    against soft targets `labels` float32 [B, C] (mixup, made by the data layer's `mixup` batch op);
  * `multilabel=True`: sigmoid binary cross-entropy against multi-hot `labels` [B, C] (Charades, table 4), mean
    over classes.

Config fields:
  config.model: name (the backbone family) and its own fields (the family's `Model` docstring).
  config.task (`Objective` below; its fields are the defaults): name 'classification'; heads [None:
    {'default': input.num_classes}] as {dataset: classes}; label_smoothing [0.0]; multilabel [False];
    head_dropout [0.0] (dropout on the features before the heads); head_init ['zeros' (as ViT fine-tuning) |
    'xavier'].
  config.input: num_frames, crop_size: the training clip shape of `dummy_batch`; num_classes when there are no
    heads; mixture (joint training: the heads follow its order).

Metrics: loss, top1 (each example on its own head) and, with several heads, `fraction/<name>` (share of the
batch on that head); multi-label runs report loss only (mAP comes from the evaluator).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import tasks as tasks_lib
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax


def build_backbone(config: ml_collections.ConfigDict) -> nn.Module:
  """`build_backbone(config)` of the family module named by config.model.name (dotted names imported as given).

  A family's `build_backbone` is its `Model.from_config` (TubeViT) or that of its video tower (VATT's
  `VideoBackbone`), so config.model's keys are the backbone's field names.
  """
  name = config.model.name
  module = importlib.import_module(name if "." in name else f"vlm.models.{name}")
  if not hasattr(module, "build_backbone"):
    raise ValueError(f"config.model.name={name!r}: module {module.__name__} has no build_backbone(config).")
  return module.build_backbone(config)


class Classifier(nn.Module):
  """Backbone + one linear head per dataset: video [B, T, H, W, 3] -> ({head: logits [B, C]}, features [B, D])."""
  backbone: nn.Module
  heads: Sequence[tuple[str, int]]
  head_dropout: float = 0.0
  head_init: str = "zeros"

  @nn.compact
  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[dict[str, jax.Array], jax.Array]:
    features, _ = self.backbone(video, train=train)
    x = dropout_lib.Dropout(self.head_dropout)(features, deterministic=not train)
    init = nn.initializers.zeros if self.head_init == "zeros" else nn.initializers.xavier_uniform()
    logits = {name: nn.Dense(classes, name=f"head_{name}",
                             kernel_init=nn.with_logical_partitioning(init, (ax.EMBED, None)),
                             bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)
              for name, classes in self.heads}
    return logits, features


def softmax_xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[B, C] logits, [B, C] target distributions -> [B] cross-entropy."""
  return -(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)).sum(-1)


def sigmoid_xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[B, C] logits, [B, C] multi-hot targets -> [B] binary cross-entropy averaged over classes."""
  logits = logits.astype(jnp.float32)
  return (jax.nn.softplus(logits) - targets * logits).mean(-1)


def smooth_onehot(label: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """int [B] -> [B, C]: (1 - s) one-hot + s / C."""
  return jax.nn.one_hot(label, num_classes) * (1.0 - smoothing) + smoothing / num_classes


@dataclasses.dataclass(frozen=True)
class Objective:
  """config.task of the classification task: heads and the loss options (see the module docstring).

  Attributes:
    heads: {dataset: classes}; None: one head 'default' with config.input.num_classes.
    label_smoothing: s of the smoothed one-hot targets (0).
    multilabel: sigmoid binary cross-entropy against multi-hot `labels` (Charades) instead of softmax.
    head_dropout: dropout on the pooled features before the heads (0).
    head_init: 'zeros' (as ViT fine-tuning) or 'xavier'.
  """
  heads: Any = None
  label_smoothing: float = 0.0
  multilabel: bool = False
  head_dropout: float = 0.0
  head_init: str = "zeros"

  @classmethod
  def from_config(cls, task: Any) -> "Objective":
    """config.task (its `name` aside) -> Objective; an unknown key is an error naming it."""
    options = tasks_lib.objective_options(cls, task, kind="classification")
    return cls(**options)


class Task:
  """Classification task (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    objective = Objective.from_config(config.task if "task" in config else None)
    inp = config.input
    if objective.heads:
      heads = dict(objective.heads)
    elif "num_classes" in inp:
      heads = {"default": int(inp.num_classes)}
    else:
      raise ValueError("config.task.heads is unset and config.input has no num_classes: the task has no head.")
    for name, classes in heads.items():
      if int(classes) < 1:
        raise ValueError(f"config.task.heads[{name!r}] = {classes}: expected a number of classes >= 1.")
    if "mixture" in inp and inp.mixture is not None:
      # Batches say `dataset` = index in the mixture's order, so the heads follow that order (ConfigDicts sort
      # their keys: never rely on the order `heads` was written in).
      from vlm.data import inputs  # pylint: disable=g-import-not-at-top
      order = inputs.mixture_names(config)
      if set(order) != set(heads):
        raise ValueError(f"config.task.heads {sorted(heads)} must name exactly the datasets of "
                         f"config.input.mixture {sorted(order)}.")
      heads = {name: heads[name] for name in order}
    self.heads = tuple((str(k), int(v)) for k, v in heads.items())
    self.head_names = [k for k, _ in self.heads]
    self.label_smoothing = float(objective.label_smoothing)
    self.multilabel = bool(objective.multilabel)
    self.backbone = build_backbone(config)
    self.model = Classifier(self.backbone, self.heads, float(objective.head_dropout), str(objective.head_init))
    self.clip_shape = (int(inp.num_frames), int(inp.crop_size), int(inp.crop_size))

  # ------------------------------------------------------------------------------------------------ protocol
  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    batch = {"video": np.zeros((batch_size,) + self.clip_shape + (3,), np.float32),
             "dataset": np.zeros((batch_size,), np.int32)}
    if self.multilabel:
      batch["labels"] = np.zeros((batch_size, self.heads[0][1]), np.float32)
    else:
      batch["label"] = np.zeros((batch_size,), np.int32)
    return batch

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    return dict(self.model.init({"params": rng, "dropout": rng}, batch["video"], train=False))

  def loss_fn(self, params, model_state, batch, rng, *, train: bool):
    logits, _ = self.model.apply({"params": params, **model_state}, batch["video"], train=train,
                                 rngs={"dropout": rng} if train else {})
    b = batch["video"].shape[0]
    dataset = batch.get("dataset", jnp.zeros((b,), jnp.int32))
    losses = jnp.zeros((b,), jnp.float32)
    correct = jnp.zeros((b,), jnp.float32)
    metrics = {}
    for h, (name, classes) in enumerate(self.heads):
      on_head = (dataset == h).astype(jnp.float32)
      if self.multilabel:
        loss_h = sigmoid_xent(logits[name], self._soft_targets(batch, name, classes))
      else:
        loss_h = softmax_xent(logits[name], self._targets(batch, name, classes))
        hit = (jnp.argmax(logits[name], -1) == self._hard_label(batch)).astype(jnp.float32)
        correct = correct + on_head * hit
      if len(self.heads) > 1:  # (per-head accuracy comes from the evaluators: a head may miss a step)
        metrics[f"fraction/{name}"] = on_head.sum() / b
      losses = losses + on_head * loss_h
    loss = losses.mean()
    metrics["loss"] = loss
    if not self.multilabel:
      metrics["top1"] = correct.mean()
    return loss, (metrics, model_state)

  def _hard_label(self, batch) -> jax.Array:
    if "label" in batch:
      return batch["label"]
    return jnp.argmax(batch["labels"], -1)

  def _soft_targets(self, batch, name: str, classes: int) -> jax.Array:
    labels = batch["labels"]
    if labels.shape[-1] != classes:
      raise ValueError(f"batch['labels'] has {labels.shape[-1]} classes; head {name!r} has {classes}.")
    return labels.astype(jnp.float32)

  def _targets(self, batch, name: str, classes: int) -> jax.Array:
    if "labels" in batch and batch["labels"].shape[-1] == classes:
      return self._soft_targets(batch, name, classes)
    if "label" not in batch:
      raise ValueError(f"the batch has neither 'label' nor 'labels' with {classes} classes for head {name!r}.")
    return smooth_onehot(batch["label"], classes, self.label_smoothing)

  # --------------------------------------------------------------------------------------------- predictions
  def predict_logits(self, variables, batch, *, head: str | None = None) -> jax.Array:
    """video [B, T, H, W, 3] -> logits [B, C] of `head` (default: the first)."""
    head = head or self.head_names[0]
    if head not in self.head_names:
      raise ValueError(f"head={head!r}; the task has heads {self.head_names}.")
    logits, _ = self.model.apply(variables, batch["video"], train=False)
    return logits[head]

  def features(self, variables, batch) -> jax.Array:
    """video [B, T, H, W, 3] -> pooled backbone features [B, D] (linear probes)."""
    return self.model.apply(variables, batch["video"], train=False)[1]

  def token_counts(self) -> dict[str, int]:
    """Tokens per tube (or per tokenizer) on the training clip, when the backbone can count them."""
    if hasattr(self.backbone, "token_counts"):
      return self.backbone.token_counts(self.clip_shape)
    return {}
