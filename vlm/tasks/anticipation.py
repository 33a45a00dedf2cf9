"""Long-term action anticipation (Ego4D LTA; HierVL supplement 3.1): from an episode's first clips, the verb and
the noun of each of the clips that follow.

Batch (an episode as a group of N consecutive clips, `config.input.group`): video [B, N, T, H, W, 3], `verb` and
`noun` int32 [B, N] (each clip's class; -1 = none), `group_mask` [B, N] (0 for padding clips). The first
`observed` clips are the input; clips `observed .. observed + horizon - 1` are the targets (Z = `horizon`).

Model (`Anticipator`): the family model's `embed_video` on every observed clip (f_v, frozen by
`config.optim.frozen` as in the paper), its `aggregate` over them (Agg, trained), dropout, then a multi-head
decoder: head z (z = 1..Z) is one Dense to the verb classes and one to the noun classes, predicting the z-th
next clip. Loss: the mean over heads and real target clips of the softmax cross-entropy, verbs and nouns added
(`targets` may name one of them: the paper trains the two in separate runs with their own rates and dropout).

config.task (`Objective`; its fields are the defaults): name 'anticipation'; observed [2]; horizon [4];
num_verbs [115], num_nouns [478] (Ego4D LTA v1); targets [('verb', 'noun')]; head_dropout [0.5].
config.model: a `protocols.HierarchicalModel` (vlm/models/hiervl.py); the pre-training checkpoint loads under
`model/` (configs/hiervl/ego4d_lta.py's `config.init.assignment_map`).

Metrics: loss, `top1_verb` / `top1_noun` (the next clip's class from head 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import protocols
from vlm import registry
from vlm import tasks as tasks_lib
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax

TARGETS = ("verb", "noun")


@dataclasses.dataclass(frozen=True)
class Objective:
  """config.task of long-term anticipation (module docstring)."""
  observed: int = 2
  horizon: int = 4
  num_verbs: int = 115
  num_nouns: int = 478
  targets: tuple[str, ...] = TARGETS
  head_dropout: float = 0.5

  @classmethod
  def from_config(cls, task: Any) -> "Objective":
    options = tasks_lib.objective_options(cls, task, kind="anticipation")
    if "targets" in options:
      options["targets"] = tuple(options["targets"])
    o = cls(**options)
    if not o.targets or any(t not in TARGETS for t in o.targets):
      raise ValueError(f"config.task.targets={o.targets!r}: expected a non-empty subset of {TARGETS}.")
    if o.observed < 1 or o.horizon < 1:
      raise ValueError(f"config.task.observed={o.observed}, horizon={o.horizon}: both must be >= 1.")
    return o

  def classes(self, target: str) -> int:
    return self.num_verbs if target == "verb" else self.num_nouns


class Anticipator(nn.Module):
  """Observed clips [B, N_obs, T, H, W, 3] (+ mask [B, N_obs]) -> {target: logits [B, Z, C]} (module docstring)."""
  model: nn.Module
  horizon: int
  classes: tuple[tuple[str, int], ...]
  head_dropout: float = 0.5

  @nn.compact
  def __call__(self, video: jax.Array, mask: jax.Array | None = None, *, train: bool = False
               ) -> dict[str, jax.Array]:
    b, n = video.shape[:2]
    clips = self.model.embed_video(video.reshape((b * n,) + video.shape[2:]), train=train).reshape(b, n, -1)
    x = self.model.aggregate(clips, mask, train=train)
    x = dropout_lib.Dropout(self.head_dropout)(x, deterministic=not train)
    init = nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (ax.EMBED, None))
    out = {}
    for target, c in self.classes:
      heads = [nn.Dense(c, kernel_init=init, name=f"head_{target}_{z + 1}")(x) for z in range(self.horizon)]
      out[target] = jnp.stack(heads, axis=1).astype(jnp.float32)  # [B, Z, C]
    return out

  def init_all(self, video: jax.Array, text: jax.Array, text_mask: jax.Array) -> Any:
    """Every parameter once: the whole family model (so its checkpoint loads as it is) and the heads."""
    self.model(video[:, 0], text, text_mask, train=False)
    return self(video, train=False)


class Task:
  """Long-term anticipation (task protocol of vlm/README.md; module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    family = registry.resolve(config.model.name, "models").Model.from_config(config)
    protocols.require(family, protocols.HierarchicalModel,
                      f"config.task.name='anticipation' (config.model.name={config.model.name!r})")
    self.objective = o = Objective.from_config(config.task if "task" in config else None)
    self.model = Anticipator(family, o.horizon, tuple((t, o.classes(t)) for t in o.targets), o.head_dropout)
    inp = config.input
    self.clip_shape = (int(inp.get("num_frames", 4)), int(inp.get("crop_size", 224)),
                       int(inp.get("crop_size", 224)), 3)
    self.max_text_len = int(inp.get("max_text_len", 16))
    self.episode_len = o.observed + o.horizon

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    n = self.episode_len
    batch = {"video": np.zeros((batch_size, n) + self.clip_shape, np.float32),
             "group_mask": np.ones((batch_size, n), np.int32)}
    for t in self.objective.targets:
      batch[t] = np.zeros((batch_size, n), np.int32)
    return batch

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    b = batch["video"].shape[0]
    text = np.zeros((b, self.max_text_len), np.int32)
    text[:, 0] = 1
    video = batch["video"][:, :self.objective.observed]
    return dict(self.model.init({"params": rng, "dropout": rng}, video, jnp.asarray(text),
                                jnp.asarray((text > 0).astype(np.int32)), method=Anticipator.init_all))

  def split(self, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], jax.Array]:
    """(observed video [B, N_obs, ...], its mask [B, N_obs], {target: classes [B, Z]}, target mask [B, Z])."""
    o = self.objective
    video = batch["video"]
    if video.ndim != 6:
      raise ValueError(f"anticipation batches hold episodes: video [B, N, T, H, W, 3], got {video.shape}.")
    n = video.shape[1]
    if n < o.observed + o.horizon:
      raise ValueError(f"anticipation: episodes of {n} clips cannot give observed={o.observed} + "
                       f"horizon={o.horizon}; set config.input.group.size to at least {o.observed + o.horizon}.")
    mask = batch.get("group_mask")
    mask = jnp.ones(video.shape[:2], jnp.int32) if mask is None else mask
    future = slice(o.observed, o.observed + o.horizon)
    labels = {}
    for t in o.targets:
      if t not in batch:
        raise KeyError(f"anticipation batches lack {t!r} [B, N] (the clips' {t} classes): check the pp.")
      labels[t] = jnp.asarray(batch[t]).reshape(video.shape[:2])[:, future]
    return video[:, :o.observed], mask[:, :o.observed], labels, mask[:, future]

  def loss_fn(self, params: Any, model_state: dict[str, Any], batch: dict[str, Any], rng: jax.Array, *,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    video, mask, labels, target_mask = self.split(batch)
    logits = self.model.apply({"params": params, **model_state}, video, mask, train=train,
                              rngs={"dropout": rng} if train else {})
    loss, metrics = jnp.zeros((), jnp.float32), {}
    for t, y in labels.items():
      valid = (target_mask > 0) & (y >= 0)
      logp = jax.nn.log_softmax(logits[t], axis=-1)
      nll = -jnp.take_along_axis(logp, jnp.maximum(y, 0)[..., None], axis=-1)[..., 0]  # [B, Z]
      w = valid.astype(jnp.float32)
      loss = loss + (nll * w).sum() / jnp.maximum(w.sum(), 1.0)
      hit = (jnp.argmax(logits[t][:, 0], -1) == y[:, 0]) & valid[:, 0]
      metrics[f"top1_{t}"] = hit.sum() / jnp.maximum(valid[:, 0].sum(), 1)
    metrics["loss"] = loss
    return loss, (metrics, model_state)

  # ------------------------------------------------------------------------------------- prediction functions
  def anticipate(self, variables: dict[str, Any], video: jax.Array, mask: jax.Array | None = None
                 ) -> dict[str, jax.Array]:
    """Observed clips [B, N_obs, T, H, W, 3] (+ mask) -> {target: log-probabilities [B, Z, C]}."""
    logits = self.model.apply(variables, video, mask, train=False)
    return {t: jax.nn.log_softmax(v, axis=-1) for t, v in logits.items()}
