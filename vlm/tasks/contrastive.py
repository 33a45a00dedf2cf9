"""VATT pre-training: video-audio NCE in S_va + video-text MIL-NCE in S_vat (VATT section 3.2, appendix B).

loss = (w_va * NCE(video_va, audio_va) + w_vt * MIL-NCE(video_vat, text_vat)) / (w_va + w_vt), temperature
0.07, lambda = 1 (appendix B.3). Clips without audio (`audio_mask` 0) leave the NCE, clips without any caption
(every `text_mask` row empty, e.g. AudioSet) leave the MIL-NCE, and empty captions are never candidates; each
loss is averaged over the samples that take part (see vlm/losses/contrastive.py).

Config fields read (defaults in brackets):

config.model (-> vlm.models.vatt.Model):
  name ['vatt'].
  variant ['BBS']: three size letters (video, audio, text) from S/B/M/L/T ('BBS', 'MBS', 'LBS'), or 'MA'
    (modality-agnostic Medium) / 'MA-<letter>'.
  modality_agnostic [False]: True with a one-letter variant 'X' means 'MA-X'; 'MA...' variants imply it.
  tiny [False]: every tower at the tiny size (2 layers, width 64, MLP 128, 2 heads) for CPU runs.
  video_patch_size [(4, 16, 16)]: tubelet (t, h, w).
  audio_patch_size [128]: waveform samples per token.
  spectrogram [False]: audio is a [B, T, num_mel_bins] log-mel spectrogram instead of a waveform.
  spectrogram_patch_size [(16, 5)]: (frames, mel bins) per audio token.
  video_pos_buckets [None -> (num_frames // t, crop_size // h, crop_size // w) of config.input, (8, 14, 14)
    for 32x224x224]: keep the pre-training buckets when fine-tuning at another size; the tables are then
    resampled on the fly (VATT appendix B.5; docs/design.md).
  audio_pos_buckets [None -> (samples // audio_patch_size,), 1200 for 3.2 s at 48 kHz; spectrogram:
    (spectrogram_frames // 16, num_mel_bins // 5)].
  text_posemb ['relative']: 'relative' (T5 relative bias, as released) or 'learned' (absolute table).
  text_pos_buckets [16]: learned text table size (modality-agnostic model or text_posemb='learned').
  relative_position_buckets [32], relative_max_distance [64]: T5 relative bias of the text tower.
  text_vocab_size [65536]: word vocabulary (word2vec: 2**16).
  text_embed_dim [300]: word vector size (word2vec: 300).
  trainable_embeddings [False]: train the word table (VATT keeps word2vec frozen).
  droptoken_rate [0.5]: DropToken drop rate (video and audio, training only); 0 disables it.
  droptoken_per_sample [False]: per-sample DropToken permutations instead of one per batch (as released).
  dropout_rate [0.1]; attention_dropout_rate [0.1].
  va_dim [512], vat_dim [256]: common-space widths; post_projection_dim [1024]: modality-agnostic only.
  bn_momentum [0.9], bn_epsilon [1e-5]: head BatchNorm.
  resize_method ['spline']: positional-table resampling, 'spline' (as released) or 'cubic'.
  attention ['dense']; remat [False]; scan [False]; dtype ['float32'] (computation dtype, e.g. 'bfloat16').
config.task:
  name ['contrastive'].
  va_weight [1.0]: weight of the video-audio NCE; vt_weight [1.0]: weight of the video-text MIL-NCE.
  temperature [0.07].
  directions ['joint']: 'joint' (as released) or 'separate' (see vlm/losses/contrastive.py).
config.input (shapes of `dummy_batch`; the data layer must produce the same):
  num_frames [32]; crop_size [224]; fps [10.0]; audio_samples [0 -> round(num_frames / fps *
  audio_sample_rate), 153,600 for 3.2 s at 48 kHz]; audio_sample_rate [48000]; num_mel_bins [80];
  spectrogram_frames [0 -> round(num_frames / fps / 0.021): 21 ms hop]; num_captions [1] (K MIL-NCE
  candidates per clip; the release uses the clip's caption plus neighbouring sentences); max_text_len [16].

Metrics: loss, va_nce, vt_milnce, va_top1 / vt_top1 (in-batch retrieval accuracy of video -> audio / text),
audio_valid / text_valid (fraction of the batch in each loss).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.losses import contrastive
from vlm.models import vatt
from vlm.nn import droptoken as droptoken_lib
from vlm.nn import posemb as posemb_lib


class Task:
  """VATT NCE + MIL-NCE pre-training (task protocol of vlm/README.md)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = vatt.Model(**vatt.model_kwargs(config))
    self.shapes = vatt.input_shapes(config)
    task = config.get("task") or ml_collections.ConfigDict()
    self.weights = {"va_nce": float(task.get("va_weight", 1.0)), "vt_milnce": float(task.get("vt_weight", 1.0))}
    self.temperature = float(task.get("temperature", 0.07))
    self.directions = str(task.get("directions", "joint"))
    if not any(w > 0 for w in self.weights.values()):
      raise ValueError(f"At least one of task.va_weight / task.vt_weight must be positive: {self.weights}.")

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
    kw = vatt.model_kwargs(self.config)
    video = int(np.prod([s // p for s, p in zip(self.shapes["video"][:3], kw["video_patch_size"])]))
    patch = kw["spectrogram_patch_size"] if kw["spectrogram"] else (kw["audio_patch_size"],)
    audio = int(np.prod([s // p for s, p in zip(self.shapes["audio"], patch)]))
    keep = 1.0 - kw["droptoken_rate"]
    k, l = self.shapes["text"]
    out = {"video": video, "audio": audio, "text_per_caption": l, "text_captions": k}
    if kw["droptoken_rate"] > 0:
      out["video_after_droptoken"] = droptoken_lib.num_kept_tokens(int(np.prod(kw["video_pos_buckets"])), keep)
      out["audio_after_droptoken"] = droptoken_lib.num_kept_tokens(int(np.prod(kw["audio_pos_buckets"])), keep)
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
