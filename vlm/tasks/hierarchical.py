"""Hierarchical dual-encoder contrastive learning: clip-level EgoNCE and summary-level aggregation (HierVL).

Two kinds of batch, told apart by the rank of `video`, each compiled once by `jax.jit`:

  child   video [B, T, H, W, 3], text / text_mask [B, L] or [B, 1, L] (one narration per clip), optional nouns
          [B, Nn] and verbs [B, Nv] multi-hot tags: EgoNCE(f_v(video), f_n(text)) (vlm/losses/egonce.py;
          temperature 0.05, positives = the diagonal plus pairs sharing a noun and a verb; without tags the
          diagonal only); or, with `clip_loss='max_margin'` (EPIC-KITCHENS MIR fine-tuning), the adaptive
          max-margin ranking loss (vlm/losses/ranking.py) with each pair's margin scaled by the optional batch
          key `relevance` [B] (default 1).
  parent  video [E, N, T, H, W, 3] (an episode's N clips: `config.input.group`), text / text_mask [E, N, (1,) L]
          (their narrations), summary / summary_mask [E, L] (or [E, N, (1,) L] as a grouped pp gives it: row 0 is
          taken), optional group_mask [E, N] (padding clips):
          sum over `summary_terms` of EgoNCE(Agg(...), ...) (`egonce.summary_loss`), with ONE aggregator for the
          clip and narration embeddings.

Both kinds report the same metric names (a term a batch kind does not compute reads 0, and `parent_step` says
which kind it was), so one metrics stream averages over a run that interleaves them.

config.task (`Objective`; its fields are the defaults):
  name 'hierarchical'; clip_loss ['egonce' | 'max_margin']; temperature [0.05]; positives ['noun_and_verb' |
  'noun' | 'verb' | 'diagonal']; margin [0.4] (max_margin);
  summary_terms [('text_summary', 'video_summary'): HierVL; ('video_summary',): only-video-with-summary;
  ('text_video',): the no-summary SA baseline]; summary_weight [1.0] (scales the parent loss).
config.model: a `protocols.HierarchicalModel` (embed_video, embed_text, aggregate; vlm/models/hiervl.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import protocols
from vlm import registry
from vlm import tasks as tasks_lib
from vlm.losses import egonce
from vlm.losses import contrastive
from vlm.losses import ranking

METRICS = ("loss", "clip_loss", "clip_top1", "summary_loss", "parent_step", "clip_diagonal_only")
CLIP_LOSSES = ("egonce", "max_margin")


@dataclasses.dataclass(frozen=True)
class Objective:
  """config.task of hierarchical contrastive learning (module docstring)."""
  clip_loss: str = "egonce"
  temperature: float = 0.05
  positives: str = "noun_and_verb"
  margin: float = 0.4
  summary_terms: tuple[str, ...] = ("text_summary", "video_summary")
  summary_weight: float = 1.0

  @classmethod
  def from_config(cls, task: Any) -> "Objective":
    options = tasks_lib.objective_options(cls, task, kind="hierarchical")
    if "summary_terms" in options:
      options["summary_terms"] = tuple(options["summary_terms"])
    objective = cls(**options)
    bad = [t for t in objective.summary_terms if t not in egonce.SUMMARY_TERMS]
    if bad or not objective.summary_terms:
      raise ValueError(f"config.task.summary_terms={objective.summary_terms!r}: expected names from "
                       f"{egonce.SUMMARY_TERMS}.")
    if objective.clip_loss not in CLIP_LOSSES:
      raise ValueError(f"config.task.clip_loss={objective.clip_loss!r}: expected one of {CLIP_LOSSES}.")
    if not objective.temperature > 0:
      raise ValueError(f"config.task.temperature={objective.temperature}: expected > 0.")
    return objective


class Task:
  """Clip-level and summary-level contrastive learning (task protocol of vlm/README.md)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = registry.resolve(config.model.name, "models").Model.from_config(config)
    protocols.require(self.model, protocols.HierarchicalModel,
                      f"config.task.name='hierarchical' (config.model.name={config.model.name!r})")
    self.objective = Objective.from_config(config.task if "task" in config else None)
    inp = config.input
    self.clip_shape = (int(inp.get("num_frames", 4)), int(inp.get("crop_size", 224)),
                       int(inp.get("crop_size", 224)), 3)
    self.max_text_len = int(inp.get("max_text_len", 16))

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """A child batch (the parent batch's arrays have an extra [N] axis; init needs only one kind)."""
    text = np.zeros((batch_size, self.max_text_len), np.int32)
    text[:, 0] = 1
    return {"video": np.zeros((batch_size,) + self.clip_shape, np.float32), "text": text,
            "text_mask": (text > 0).astype(np.int32)}

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    return dict(self.model.init({"params": rng}, batch["video"], batch["text"], batch["text_mask"], train=False))

  def loss_fn(self, params: Any, model_state: dict[str, Any], batch: dict[str, Any], rng: jax.Array, *,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    variables = {"params": params, **model_state}
    apply = lambda method, *args: self.model.apply(variables, *args, train=train, method=method,
                                                   rngs={"dropout": rng} if train else {})
    o = self.objective
    zero = jnp.zeros((), jnp.float32)
    if batch["video"].ndim == 5:  # child step
      v = apply(type(self.model).embed_video, batch["video"])
      t = apply(type(self.model).embed_text, _one_text(batch["text"], 2), _one_text(batch["text_mask"], 2))
      if o.clip_loss == "max_margin":
        sim = contrastive.l2_normalize(t) @ contrastive.l2_normalize(v).T  # [texts, videos], as released
        loss, ex = ranking.max_margin_ranking_loss(sim, batch.get("relevance"), margin=o.margin)
        ex["num_diagonal_only"] = zero
      else:
        nouns, verbs = batch.get("nouns"), batch.get("verbs")
        positives = o.positives if (nouns is not None or verbs is not None) else "diagonal"
        loss, ex = egonce.egonce_loss(v, t, nouns=nouns, verbs=verbs, temperature=o.temperature,
                                      positives=positives)
      metrics = {"loss": loss, "clip_loss": loss, "clip_top1": ex["top1"], "summary_loss": zero,
                 "parent_step": zero, "clip_diagonal_only": ex["num_diagonal_only"]}
      return loss, (metrics, model_state)
    e, n = batch["video"].shape[:2]  # parent step: E episodes of N clips
    clips = batch["video"].reshape((e * n,) + batch["video"].shape[2:])
    v = apply(type(self.model).embed_video, clips).reshape(e, n, -1)
    t = apply(type(self.model).embed_text, _one_text(batch["text"], 3).reshape(e * n, -1),
              _one_text(batch["text_mask"], 3).reshape(e * n, -1)).reshape(e, n, -1)
    mask = batch.get("group_mask")
    uses = {name for term in o.summary_terms for name in term.split("_")}
    agg_video = apply(type(self.model).aggregate, v, mask) if "video" in uses else None
    agg_text = apply(type(self.model).aggregate, t, mask) if "text" in uses else None
    summary = None
    if "summary" in uses:
      if "summary" not in batch:
        raise ValueError("config.task.summary_terms uses the summary, but the parent batch has no `summary`.")
      summary_ids, summary_mask = _summary(batch["summary"]), _summary(batch["summary_mask"])
      summary = apply(type(self.model).embed_text, summary_ids, summary_mask)
    loss, ex = egonce.summary_loss(agg_video, agg_text, summary, temperature=o.temperature,
                                   terms=o.summary_terms,
                                   summary_mask=jnp.any(summary_mask > 0, -1) if summary is not None else None)
    loss = o.summary_weight * loss
    metrics = {"loss": loss, "clip_loss": zero, "clip_top1": zero, "summary_loss": loss,
               "parent_step": jnp.ones((), jnp.float32), "clip_diagonal_only": zero}
    return loss, (metrics, model_state)

  # ------------------------------------------------------------------------------------- prediction functions
  def embed_video(self, variables: dict[str, Any], video: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] -> L2-normalised [B, E]."""
    return contrastive.l2_normalize(self.model.apply(variables, video, method=type(self.model).embed_video))

  def embed_text(self, variables: dict[str, Any], text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """[B, L] ids / mask -> L2-normalised [B, E]."""
    return contrastive.l2_normalize(self.model.apply(variables, text, text_mask,
                                                     method=type(self.model).embed_text))

  def embed_episode(self, variables: dict[str, Any], video: jax.Array, mask: jax.Array | None = None
                    ) -> jax.Array:
    """[B, N, T, H, W, 3] clips (+ [B, N] mask) -> L2-normalised Agg(f_v(clips)) [B, E], as the parent step."""
    b, n = video.shape[:2]
    clips = self.model.apply(variables, video.reshape((b * n,) + video.shape[2:]),
                             method=type(self.model).embed_video).reshape(b, n, -1)
    return contrastive.l2_normalize(self.model.apply(variables, clips, mask, method=type(self.model).aggregate))


  # ------------------------------------------------------------------------------------------------- tools
  def bench_objectives(self) -> dict[str, Any]:
    """`python -m vlm.tools.bench --objective=parent`: the parent step alone (module docstring)."""
    return {"parent": _ParentStep(self)}


class _ParentStep:
  """The parent step on synthetic episodes, for timing it against the child step (`--baseline=` the same config):
  `dummy_batch(E)` holds E episodes of N = `aggregator_positions` clips, their narrations and summaries."""

  def __init__(self, task: Task):
    self.task = task
    self.model = task.model
    self.clips = int(task.model.aggregator_positions)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    child = self.task.dummy_batch(batch_size * self.clips)
    n, l = self.clips, self.task.max_text_len
    return {"video": child["video"].reshape((batch_size, n) + self.task.clip_shape),
            "text": child["text"].reshape(batch_size, n, l), "text_mask": child["text_mask"].reshape(batch_size, n, l),
            "summary": child["text"][:batch_size], "summary_mask": child["text_mask"][:batch_size],
            "group_mask": np.ones((batch_size, n), np.float32)}

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    del batch  # the model's variables do not depend on the batch kind
    return self.task.init_variables(rng, self.task.dummy_batch(1))

  def loss_fn(self, *args, **kwargs):
    return self.task.loss_fn(*args, **kwargs)


def _one_text(x: jax.Array, rank: int) -> jax.Array:
  """The batch contract's text [..., K, L] with K = 1 (one narration per clip) -> [..., L]; rank-`rank` input as is."""
  return x[..., 0, :] if x.ndim == rank + 1 else x


def _summary(x: jax.Array) -> jax.Array:
  """summary [E, L], [E, K=1, L], [E, N, L] or [E, N, 1, L] (a grouped pp tokenizes it on each of the N clips,
  which all carry the episode's summary: row 0 is the group's) -> [E, L]."""
  while x.ndim > 2:
    x = x[:, 0]
  return x
