"""VATT pre-training: video-audio NCE in S_va + video-text MIL-NCE in S_vat (VATT section 3.2, appendix B).

loss = (w_va * NCE(video_va, audio_va) + w_vt * MIL-NCE(video_vat, text_vat)) / (w_va + w_vt), temperature
0.07, lambda = 1 (appendix B.3). Clips without audio (`audio_mask` 0) leave the NCE, clips without any caption
(every `text_mask` row empty, e.g. AudioSet) leave the MIL-NCE, and empty captions are never candidates; each
loss is averaged over the samples that take part (see vlm/losses/contrastive.py).

Config fields:

config.model: the fields of vlm.models.vatt.Model (its docstring), built by `vatt.Model.from_config`:
  name 'vatt'; variant 'BBS' | 'MBS' | 'LBS' | 'MA' | 'MA-<S|B|L>' | 'tiny' | 'MA-tiny' (vatt.SIZES); any field
  by its name (e.g. text_vocab_size, droptoken_rate, dtype='bfloat16'). video_pos_buckets and audio_pos_buckets
  default to the grid of config.input's clip ((8, 14, 14) and (1200,) for 32x224x224 at 10 fps, 48 kHz audio).
config.task (`Objective` below; its fields are the defaults):
  name 'contrastive'; va_weight [1.0] (video-audio NCE); vt_weight [1.0] (video-text MIL-NCE); temperature
  [0.07]; directions ['joint' (as released) | 'separate'] (vlm/losses/contrastive.py).
config.input (shapes of `dummy_batch`, vlm.models.vatt.InputSpec; the data layer must produce the same):
  num_frames [32]; crop_size [224]; fps [10.0]; audio_samples [0 -> round(num_frames / fps *
  audio_sample_rate), 153,600 for 3.2 s at 48 kHz]; audio_sample_rate [48000]; num_mel_bins [80];
  spectrogram_frames [0 -> round(num_frames / fps / 0.021): 21 ms hop]; num_captions [1] (K MIL-NCE
  candidates per clip; the release uses the clip's caption plus neighbouring sentences); max_text_len [16].

Metrics: loss, va_nce, vt_milnce, va_top1 / vt_top1 (in-batch retrieval accuracy of video -> audio / text),
audio_valid / text_valid (fraction of the batch in each loss).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import tasks as tasks_lib
from vlm.losses import contrastive
from vlm.models import vatt
from vlm.nn import droptoken as droptoken_lib


@dataclasses.dataclass(frozen=True)
class Objective:
  """config.task of VATT pre-training (appendix B.3): loss weights, temperature and NCE directions.

  Attributes:
    va_weight: weight of the video-audio NCE (lambda = 1).
    vt_weight: weight of the video-text MIL-NCE.
    temperature: softmax temperature of both losses (0.07).
    directions: 'joint' (one softmax over both directions, as released) or 'separate'.
  """
  va_weight: float = 1.0
  vt_weight: float = 1.0
  temperature: float = 0.07
  directions: str = "joint"

  @classmethod
  def from_config(cls, task: Any) -> "Objective":
    """config.task (its `name` aside) -> Objective; an unknown key is an error naming it."""
    options = tasks_lib.objective_options(cls, task, kind="contrastive")
    objective = cls(**options)
    if not (objective.va_weight > 0 or objective.vt_weight > 0):
      raise ValueError(f"At least one of task.va_weight / task.vt_weight must be positive: {objective}.")
    return objective


class Task:
  """VATT NCE + MIL-NCE pre-training (task protocol of vlm/README.md)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = vatt.Model.from_config(config)
    self.shapes = vatt.input_shapes(config.input if "input" in config else None,
                                    spectrogram=self.model.spectrogram)
    self.objective = Objective.from_config(config.task if "task" in config else None)
    self.weights = {"va_nce": self.objective.va_weight, "vt_milnce": self.objective.vt_weight}
    self.temperature = self.objective.temperature
    self.directions = self.objective.directions

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """A training batch of the configured shapes (zeros; every caption one valid token, every clip audio)."""
    s = self.shapes
    return {"video": np.zeros((batch_size,) + s["video"], np.float32),
            "audio": np.zeros((batch_size,) + s["audio"], np.float32),
            "audio_mask": np.ones((batch_size,), np.float32),
            "text": np.ones((batch_size,) + s["text"], np.int32),
            "text_mask": np.ones((batch_size,) + s["text_mask"], np.int32)}

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    """{'params', 'batch_stats'} with flax's logical-axis boxes (nn.LogicallyPartitioned) on the leaves."""
    return dict(self.model.init({"params": rng}, batch["video"], batch["audio"], batch["text"],
                                batch["text_mask"], train=False))

  def loss_fn(self, params: Any, model_state: dict[str, Any], batch: dict[str, Any], rng: jax.Array, *,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """NCE + MIL-NCE on a batch.

    Args:
      params: model params.
      model_state: {'batch_stats': ...}.
      batch: video [B, F, H, W, 3], audio [B, S] or [B, T, M], audio_mask [B] (optional; default all 1),
        text [B, K, L] int, text_mask [B, K, L].
      rng: key for dropout and DropToken (used only when train).
      train: training mode (dropout, DropToken, BatchNorm batch statistics that update model_state).

    Returns:
      (loss, (metrics, new_model_state)).
    """
    variables = {"params": params, **model_state}
    args = (batch["video"], batch["audio"], batch["text"], batch["text_mask"])
    if train:
      (out, _), new_state = self.model.apply(variables, *args, train=True, rngs={"dropout": rng},
                                             mutable=list(model_state))
      new_state = dict(new_state)
    else:
      out, _ = self.model.apply(variables, *args, train=False)
      new_state = model_state
    audio_mask = batch.get("audio_mask")
    if audio_mask is None:
      audio_mask = jnp.ones(batch["video"].shape[:1], jnp.float32)
    caption_valid = jnp.any(batch["text_mask"] > 0, axis=-1)  # [B, K]
    va, va_x = contrastive.nce_loss(anchors=out["video_va"], positives=out["audio_va"], mask=audio_mask,
                                    temperature=self.temperature, directions=self.directions)
    vt, vt_x = contrastive.mil_nce_loss(anchors=out["video_vat"], candidates=out["text_vat"],
                                        candidate_mask=caption_valid, temperature=self.temperature,
                                        directions=self.directions)
    losses = {"va_nce": va, "vt_milnce": vt}
    loss = contrastive.weighted_total(losses, self.weights)
    n = batch["video"].shape[0]
    metrics = {"loss": loss, **losses, "va_top1": va_x["top1"], "vt_top1": vt_x["top1"],
               "audio_valid": va_x["num_valid"] / n, "text_valid": vt_x["num_valid"] / n}
    return loss, (metrics, new_state)

  # ------------------------------------------------------------------------------------- prediction functions
  def embed_video(self, variables: dict[str, Any], video: jax.Array) -> jax.Array:
    """[B, F, H, W, 3] frames -> [B, vat_dim] L2-normalised S_vat embeddings (eval mode)."""
    return contrastive.l2_normalize(self.model.apply(variables, video, method=vatt.Model.embed_video))

  def features(self, variables: dict[str, Any], batch: dict[str, Any]) -> jax.Array:
    """video [B, F, H, W, 3] -> [B, D] frozen video-tower features (linear evaluation, B.8 / appendix C)."""
    return self.model.apply(variables, batch["video"], method=vatt.Model.video_features)

  def embed_text(self, variables: dict[str, Any], text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """[B, L] ids and [B, L] mask -> [B, vat_dim] L2-normalised S_vat embeddings."""
    return contrastive.l2_normalize(self.model.apply(variables, text, text_mask, method=vatt.Model.embed_text))

  # ------------------------------------------------------------------------------------------------- tools
  def token_counts(self) -> dict[str, int]:
    """Tokens per example and modality fed to each Transformer (without the aggregation token).

    Video and audio are counted on the input grid and after DropToken (training); text is `max_text_len` per
    caption, times K candidate captions.
    """
    m = self.model
    video = int(np.prod([s // p for s, p in zip(self.shapes["video"][:3], m.video_patch_size)]))
    patch = m.spectrogram_patch_size if m.spectrogram else (m.audio_patch_size,)
    audio = int(np.prod([s // p for s, p in zip(self.shapes["audio"], patch)]))
    keep = 1.0 - m.droptoken_rate
    k, l = self.shapes["text"]
    out = {"video": video, "audio": audio, "text_per_caption": l, "text_captions": k}
    if m.droptoken_rate > 0:
      out["video_after_droptoken"] = droptoken_lib.num_kept_tokens(int(np.prod(m.video_pos_buckets)), keep)
      out["audio_after_droptoken"] = droptoken_lib.num_kept_tokens(int(np.prod(m.audio_pos_buckets)), keep)
    return out

  def bench_objectives(self) -> dict[str, Any]:
    """Partial objectives for `python -m vlm.tools.bench --objective=NAME` (see _VideoTowerObjective)."""
    return {"video_tower": _VideoTowerObjective(self)}


class _VideoTowerObjective:
  """The video tower alone, trained through a stand-in loss (mean square of its outputs), for benchmarking.

  Only the video tower's parameters exist, so the optimizer update is the tower's too: this times exactly a
  "VATT video tower train step" (tokenizer, positions, DropToken, Transformer; forward, backward, Adam).
  """

  def __init__(self, task: Task):
    self.task = task
    self.model = task.model

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    return {"video": self.task.dummy_batch(batch_size)["video"]}

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    return dict(self.model.init({"params": rng}, batch["video"], method=_video_tower))

  def loss_fn(self, params, model_state, batch, rng, *, train):
    pooled, aux = self.model.apply({"params": params, **model_state}, batch["video"], train=train,
                                   rngs={"dropout": rng}, method=_video_tower)
    loss = jnp.mean(jnp.square(pooled)) + jnp.mean(jnp.square(aux["tokens"]))
    return loss, ({"loss": loss}, model_state)


def _video_tower(model: vatt.Model, video: jax.Array, train: bool = False):
  return model.video(video, train=train)
