"""VATT: Transformers for multimodal self-supervised learning from raw video, audio and text (Akbari et al.).

Three towers map raw signals to pooled features, and the "FAC" head maps those into two common spaces, S_va
(512-d, video-audio NCE) and S_vat (256-d, video-text MIL-NCE) (paper section 3.2, appendix B.3).

Per tower (`Tower`): tokenizer -> [GELU Dense pre-projection] -> factorised learned positional embedding ->
DropToken (training) -> learned aggregation token prepended -> pre-norm Transformer -> [GELU Dense
post-projection]; the pooled feature is the aggregation token's output (token 0).

* Modality-specific (`variant` 'BBS', 'MBS', 'LBS': video-audio-text tower sizes; other combinations set
  `video_size` / `audio_size` / `text_size`): each tower has its own Transformer. The text tower follows the released T5-style encoder in using relative position
  biases (32 buckets, max distance 64, shared by all layers) instead of absolute positions; `text_posemb=
  'learned'` switches to a learned 1-D table. Unlike the release's T5 block, our text layers keep the common
  block (LayerNorm with bias, biased projections, logits scaled by d_kv**-0.5) so all towers share one layer
  implementation; checkpoints from the release therefore need a converter that accounts for this.
* Modality-agnostic ('MA', VATT-MA-Medium; 'MA-<size>' for other sizes): one Transformer shared by the three
  modalities, each with its own raw-to-embedding layer, GELU Dense pre-projection, positional tables (text: 16
  learned temporal buckets), aggregation token and GELU Dense post-projection to 1024-d
  (`vatt/modeling/backbones/unified/uvatt.py`). Modalities run in separate passes: no cross-modal attention.

Tower sizes (TOWER_SIZES, appendix table 1; d_kv = 64 everywhere): Small 6L/512/2048/8H, Base 12L/768/3072/12H,
Medium 12L/1024/4096/16H, Large 24L/1024/4096/16H, plus 'tiny' (2L/64/128/2H, d_kv 32) for CPU runs. Variants
(SIZES, `config.model.variant`): 'BBS', 'MBS', 'LBS', 'MA', 'MA-<S|B|L>', and 'tiny' / 'MA-tiny' (every tower
tiny). `Model.from_config(config)` is the one construction path: config.model's keys are the fields of `Model`
(an unknown key or variant is an error naming it), and the positional buckets come from config.input's clip.

Parameter counts vs table 1 (tests/test_models_vatt.py checks them with jax.eval_shape). The table does not
say what it counts. With a 4x16x16 tubelet tokenizer (3*4*16*16*d + d), the 8+14+14 positional tables, their
LayerNorm and the aggregation token, our video towers have 20.51M (S), 87.45M (B), 154.34M (M) and 305.50M
(L) parameters; the Transformers alone (layers + final LayerNorm) 18.92M, 85.06M, 151.16M and 302.31M. The
towers are 0.39-0.66M (0.2-1.9%) below table 1 for every size. No single component of the released model
explains that residual for all four sizes (the head's d x 512 video projection, 0.26-0.52M, comes closest;
the release's unused mask-token vector is d parameters), so the test pins our exact counts and allows 2%
against the table.

The FAC head (`FACHead`, `vatt/modeling/heads/bridge.py`):
  video -> Dense(512, no bias) -> BN -> ReLU -> Dense(512, no bias) -> BN = video_va
  video_va -> ReLU -> Dense(256, no bias) -> BN = video_vat
  audio -> Dense(512) = audio_va;  text -> Dense(256) = text_vat
BatchNorm (momentum 0.9, eps 1e-5) normalises over the batch axis of the array it is given; under `jit` on
global arrays that is the global batch, as the release's cross-replica BN. Its statistics live in the mutable
`batch_stats` collection.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.models import common
from vlm.models.tokenizers import audio as audio_tok
from vlm.models.tokenizers import text as text_tok
from vlm.models.tokenizers import video as video_tok
from vlm.nn import dropout as dropout_lib
from vlm.nn import droptoken as droptoken_lib
from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib
from vlm.nn import posemb as posemb_lib
from vlm.nn import transformer


Size = transformer.Size


# Transformer sizes of one tower, VATT appendix B.2 table 1 (d_kv = 64 everywhere). 'tiny' is ours (CPU runs).
TOWER_SIZES = {
    "S": Size(6, 512, 2048, 8),
    "B": Size(12, 768, 3072, 12),
    "M": Size(12, 1024, 4096, 16),
    "L": Size(24, 1024, 4096, 16),
    "tiny": Size(2, 64, 128, 2),
}
# Table 1's parameter counts.
TABLE1_PARAMS = {"S": 20.9e6, "B": 87.9e6, "M": 155.0e6, "L": 306.1e6}
MODALITIES = ("video", "audio", "text")


def _specific(video: str, audio: str, text: str) -> dict[str, Any]:
  return dict(modality_agnostic=False, video_size=video, audio_size=audio, text_size=text)


def _agnostic(size: str) -> dict[str, Any]:
  return dict(modality_agnostic=True, video_size=size, audio_size=size, text_size=size)


# `config.model.variant` -> Model fields. The paper's models (section 4.1): video-audio-text tower sizes BBS, MBS,
# LBS, and the modality-agnostic Medium (VATT-MA-Medium, 'MA'); 'MA-<size>' shares a Transformer of another size.
# Any other combination: a variant and its `video_size` / `audio_size` / `text_size` set in config.model.
SIZES = {
    "BBS": _specific("B", "B", "S"),
    "MBS": _specific("M", "B", "S"),
    "LBS": _specific("L", "B", "S"),
    "MA": _agnostic("M"),
    **{f"MA-{size}": _agnostic(size) for size in ("S", "B", "L")},
    "tiny": _specific("tiny", "tiny", "tiny"),
    "MA-tiny": _agnostic("tiny"),
}


def tower_sizes(model: "Model | VideoBackbone") -> dict[str, Size]:
  """The Transformer Size of each tower of `model` ({'video', 'audio', 'text'}; only 'video' for a backbone).

  Raises:
    ValueError: on a size not in TOWER_SIZES, or a modality-agnostic model whose towers name different sizes
      (they share one Transformer).
  """
  names = {m: getattr(model, f"{m}_size") for m in MODALITIES if hasattr(model, f"{m}_size")}
  for modality, name in names.items():
    if name not in TOWER_SIZES:
      raise ValueError(f"config.model.{modality}_size={name!r}: expected one of {sorted(TOWER_SIZES)} (table 1).")
  if model.modality_agnostic and len(set(names.values())) > 1:
    raise ValueError(f"modality-agnostic VATT shares one Transformer, so its tower sizes must agree: {names}.")
  return {m: TOWER_SIZES[name] for m, name in names.items()}


def _agg_init(key, shape, dtype=jnp.float32):
  """Keras glorot_normal for a 1-D vector (fan_in = fan_out = d): truncated normal, std sqrt(1/d)."""
  std = math.sqrt(1.0 / shape[-1]) / 0.87962566103423978
  return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * std


def _dense(features: int, *, use_bias: bool, in_axis: str | None, out_axis: str | None, name: str,
           dtype: Any = jnp.float32) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (in_axis, out_axis)),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out_axis,)))


class Tower(nn.Module):
  """One modality's encoder: tokens -> positions -> DropToken -> [agg] + tokens -> Transformer -> pooled.

  Attributes:
    modality: 'video' ([B, F, H, W, C]), 'audio' ([B, S] waveform or [B, T, M] log-mel) or 'text' ([B, L] ids).
    size: Transformer size (width also used by the tokenizer).
    shared_encoder: a Transformer owned by the parent and shared with other towers (modality-agnostic VATT);
      None builds this tower's own from `size`.
    patch_size: tokenizer patch: (t, h, w) video, (samples,) waveform, (frames, bins) spectrogram.
    spectrogram: audio input is a log-mel spectrogram.
    vocab_size, word_dim, trainable_embeddings, text_projection_bias: text tokenizer (see TextEmbed).
    pos_buckets: factorised positional table sizes, () for none (the text tower with relative biases).
    relative_position_buckets, relative_max_distance: T5 relative bias in this tower's own Transformer.
    resize_method: positional-table resampling, 'spline' (as released) or 'cubic'.
    pre_projection: GELU Dense after the tokenizer (modality-agnostic VATT; video and audio).
    post_projection: > 0 adds a GELU Dense to that width after the Transformer (modality-agnostic: 1024).
    droptoken_keep_rate: DropToken kept fraction of prod(pos_buckets); 1 disables it.
    droptoken_per_sample: per-sample DropToken permutations.
    dropout_rate, attention_dropout_rate, attention, remat, scan, dtype: Transformer options.
  """
  modality: str
  size: Size
  shared_encoder: nn.Module | None = None
  patch_size: tuple[int, ...] = ()
  spectrogram: bool = False
  vocab_size: int = 2 ** 16
  word_dim: int = 300
  trainable_embeddings: bool = False
  text_projection_bias: bool = False
  pos_buckets: tuple[int, ...] = ()
  relative_position_buckets: int = 0
  relative_max_distance: int = 64
  resize_method: str = "spline"
  pre_projection: bool = False
  post_projection: int = 0
  droptoken_keep_rate: float = 1.0
  droptoken_per_sample: bool = False
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  attention: str = "dense"
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32

  def _tokenize(self, inputs: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    d = self.size.hidden_size
    if self.modality == "video":
      return video_tok.TubeletEmbed(d, tuple(self.patch_size), dtype=self.dtype, name="tokenizer")(inputs)
    if self.modality == "audio":
      if self.spectrogram:
        return audio_tok.SpectrogramEmbed(d, tuple(self.patch_size), dtype=self.dtype, name="tokenizer")(inputs)
      return audio_tok.WaveformEmbed(d, self.patch_size[0], dtype=self.dtype, name="tokenizer")(inputs)
    if self.modality == "text":
      return text_tok.TextEmbed(d, self.vocab_size, self.word_dim, self.trainable_embeddings,
                                use_bias=self.text_projection_bias, dtype=self.dtype, name="tokenizer")(inputs)
    raise ValueError(f"Unknown modality {self.modality!r}.")

  @nn.compact
  def __call__(self, inputs: jax.Array, *, mask: jax.Array | None = None,
               train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Encodes one modality.

    Args:
      inputs: raw inputs (see `modality`).
      mask: optional [B, N] token mask (text: nonzero for real words).
      train: enables dropout and DropToken.

    Returns:
      (pooled [B, D'] = aggregation-token output, aux) with aux['grid'] (token grid before DropToken),
      aux['tokens'] [B, N', D'] (the other outputs), aux['num_tokens'] (N' fed to the Transformer besides the
      aggregation token) and, when DropToken ran, aux['kept_indices'] [B, N'].
    """
    d = self.size.hidden_size
    x, tok_aux = self._tokenize(inputs)  # [B, N, D]
    grid = tok_aux["grid"]
    if self.pre_projection:
      x = mlp_lib.gelu_exact(_dense(d, use_bias=True, in_axis=ax.EMBED, out_axis=None, dtype=self.dtype,
                                    name="pre_projection")(x))
    if self.pos_buckets:
      x = posemb_lib.FactorizedPosEmb(tuple(self.pos_buckets), dropout_rate=self.dropout_rate,
                                      resize_method=self.resize_method, dtype=self.dtype,
                                      name="posemb")(x, grid=grid, train=train)
    else:  # As the release's T5 encoder: dropout on the input embeddings.
      x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    aux: dict[str, Any] = {"grid": grid}
    if self.droptoken_keep_rate < 1.0:
      if mask is not None:
        raise ValueError("DropToken with a token mask is not supported (VATT drops video/audio tokens only).")
      x, dt_aux = droptoken_lib.DropToken(self.droptoken_keep_rate, math.prod(self.pos_buckets),
                                          per_sample=self.droptoken_per_sample, name="droptoken")(x, train=train)
      aux.update(dt_aux)
    aux["num_tokens"] = x.shape[1]

    agg = self.param("agg_token", nn.with_logical_partitioning(_agg_init, (ax.EMBED,)), (d,))
    x = jnp.concatenate([jnp.broadcast_to(agg.astype(x.dtype), (x.shape[0], 1, d)), x], axis=1)
    if mask is not None:
      mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), mask.dtype), mask], axis=1)

    encoder = self.shared_encoder
    if encoder is None:
      encoder = transformer.Encoder(
          num_layers=self.size.num_layers, num_heads=self.size.num_heads, mlp_dim=self.size.mlp_dim,
          dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
          attention=self.attention, relative_position_buckets=self.relative_position_buckets,
          relative_max_distance=self.relative_max_distance, remat=self.remat, scan=self.scan, dtype=self.dtype,
          name="encoder")
    x, _ = encoder(x, mask=mask, train=train)
    if self.post_projection:
      x = mlp_lib.gelu_exact(_dense(self.post_projection, use_bias=True, in_axis=ax.EMBED, out_axis=None,
                                    dtype=self.dtype, name="post_projection")(x))
    aux["tokens"] = x[:, 1:]
    return x[:, 0], aux


class FACHead(nn.Module):
  """VATT's fine-and-coarse projection head (see module docstring).

  Attributes:
    va_dim: width of the video-audio space S_va (512).
    vat_dim: width of the video-audio-text space S_vat (256).
    bn_momentum: BatchNorm running-average momentum (0.9, as released).
    bn_epsilon: BatchNorm epsilon (1e-5).
  """
  va_dim: int = 512
  vat_dim: int = 256
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def setup(self):
    def bn(name):
      return nn.BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name,
                          scale_init=nn.with_logical_partitioning(nn.initializers.ones, (ax.PROJ,)),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.PROJ,)))
    self.vid_to_hid = _dense(self.va_dim, use_bias=False, in_axis=ax.EMBED, out_axis=ax.PROJ, name="vid_to_hid")
    self.hid_to_va_pre_bn = bn("hid_to_va_pre_bn")
    self.hid_to_va = _dense(self.va_dim, use_bias=False, in_axis=None, out_axis=ax.PROJ, name="hid_to_va")
    self.hid_to_va_bn = bn("hid_to_va_bn")
    self.va_to_vat = _dense(self.vat_dim, use_bias=False, in_axis=None, out_axis=ax.PROJ, name="va_to_vat")
    self.va_to_vat_bn = bn("va_to_vat_bn")
    self.aud_to_va = _dense(self.va_dim, use_bias=True, in_axis=ax.EMBED, out_axis=ax.PROJ, name="aud_to_va")
    self.txt_to_vat = _dense(self.vat_dim, use_bias=True, in_axis=ax.EMBED, out_axis=ax.PROJ, name="txt_to_vat")

  def video(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """[B, D] pooled video -> (va [B, va_dim], vat [B, vat_dim])."""
    avg = not train
    h = self.hid_to_va_pre_bn(self.vid_to_hid(x.astype(jnp.float32)), use_running_average=avg)
    va = self.hid_to_va_bn(self.hid_to_va(jax.nn.relu(h)), use_running_average=avg)
    vat = self.va_to_vat_bn(self.va_to_vat(jax.nn.relu(va)), use_running_average=avg)
    return va, vat

  def audio(self, x: jax.Array) -> jax.Array:
    """[B, D] pooled audio -> [B, va_dim]."""
    return self.aud_to_va(x.astype(jnp.float32))

  def text(self, x: jax.Array) -> jax.Array:
    """[..., D] pooled text -> [..., vat_dim]."""
    return self.txt_to_vat(x.astype(jnp.float32))

  def __call__(self, video: jax.Array, audio: jax.Array, text: jax.Array, *, train: bool
               ) -> dict[str, jax.Array]:
    va, vat = self.video(video, train=train)
    return {"video_va": va, "video_vat": vat, "audio_va": self.audio(audio), "text_vat": self.text(text)}


class Model(nn.Module):
  """VATT: three towers and the FAC head.

  `Model.from_config(config)` builds it from `config.model` (keys = these fields, `variant` a key of SIZES) with
  the positional buckets derived from `config.input`. Defaults: VATT-BBS pre-training (appendix B).

  Attributes:
    modality_agnostic: one Transformer shared by the three towers (VATT-MA) instead of one per tower.
    video_size, audio_size, text_size: each tower's Transformer, a key of TOWER_SIZES ('B', 'B', 'S': BBS).
    video_patch_size: tubelet (t, h, w), (4, 16, 16).
    audio_patch_size: waveform samples per token, 128.
    spectrogram: audio input is a [B, T, M] log-mel spectrogram.
    spectrogram_patch_size: (frames, mel bins) per token, (16, 5).
    video_pos_buckets: video positional table sizes (t, h, w): (8, 14, 14) for 32x224x224 pre-training.
      `from_config` derives it from config.input unless config.model sets it (fine-tuning keeps the pre-training
      buckets and resamples the tables on the fly, B.5).
    audio_pos_buckets: audio table sizes: (1200,) for 3.2 s of 48 kHz waveform; (t, m) for spectrograms.
      Derived from config.input as video_pos_buckets.
    text_pos_buckets: learned text table size (modality-agnostic, or text_posemb='learned'), 16.
    text_posemb: modality-specific text positions: 'relative' (T5, as released) or 'learned'.
    relative_position_buckets, relative_max_distance: T5 relative bias of the text tower (32, 64).
    text_vocab_size, text_embed_dim, trainable_embeddings: word-embedding table (2**16 words of 300, frozen:
      word2vec, B.1).
    droptoken_rate: DropToken drop rate for video and audio in training (paper: 0.5); 0 disables it.
    droptoken_per_sample: per-sample DropToken permutations (default one shared by the batch, as released).
    dropout_rate: Transformer / positional-embedding dropout (0.1).
    attention_dropout_rate: attention-probability dropout (0.1, as released).
    va_dim, vat_dim: common-space widths (512, 256).
    post_projection_dim: modality-agnostic post-projection width (1024).
    bn_momentum, bn_epsilon: head BatchNorm (0.9, 1e-5).
    resize_method: positional-table resampling when the grid differs from the buckets ('spline' | 'cubic').
    attention, remat, scan, dtype: Transformer options (dtype: computation dtype, e.g. 'bfloat16' in a config).
  """
  modality_agnostic: bool = False
  video_size: str = "B"
  audio_size: str = "B"
  text_size: str = "S"
  video_patch_size: tuple[int, int, int] = (4, 16, 16)
  audio_patch_size: int = 128
  spectrogram: bool = False
  spectrogram_patch_size: tuple[int, int] = (16, 5)
  video_pos_buckets: tuple[int, int, int] = (8, 14, 14)
  audio_pos_buckets: tuple[int, ...] = (1200,)
  text_pos_buckets: int = 16
  text_posemb: str = "relative"
  relative_position_buckets: int = 32
  relative_max_distance: int = 64
  text_vocab_size: int = 2 ** 16
  text_embed_dim: int = 300
  trainable_embeddings: bool = False
  droptoken_rate: float = 0.5
  droptoken_per_sample: bool = False
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  va_dim: int = 512
  vat_dim: int = 256
  post_projection_dim: int = 1024
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  resize_method: str = "spline"
  attention: str = "dense"
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Model":
    """The model of `config.model`, with the positional buckets of `config.input`'s clips (see the fields).

    Raises:
      ValueError: naming an unknown variant or `config.model` key, before anything is built.
    """
    model = cls(**_model_kwargs(cls, config.model))
    shapes = input_shapes(_input(config), spectrogram=model.spectrogram)
    grids = {"video_pos_buckets": _grid(shapes["video"][:3], model.video_patch_size),
             "audio_pos_buckets": _grid(shapes["audio"], model.spectrogram_patch_size if model.spectrogram
                                        else (model.audio_patch_size,))}
    return model.clone(**{k: v for k, v in grids.items() if _unset(config.model, k)})

  def setup(self):
    sizes = tower_sizes(self)
    if self.text_posemb not in ("relative", "learned"):
      raise ValueError(f"text_posemb must be 'relative' or 'learned', got {self.text_posemb!r}.")
    common_kw = dict(dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                  attention=self.attention, remat=self.remat, scan=self.scan, dtype=self.dtype,
                  resize_method=self.resize_method)
    keep = 1.0 - self.droptoken_rate
    audio_patch = tuple(self.spectrogram_patch_size) if self.spectrogram else (self.audio_patch_size,)
    if self.modality_agnostic:
      size = sizes["video"]
      self.backbone = _shared_encoder(size, self)
      shared = dict(size=size, shared_encoder=self.backbone, pre_projection=True,
                    post_projection=self.post_projection_dim, **common_kw)
      self.video = Tower("video", patch_size=tuple(self.video_patch_size), pos_buckets=tuple(self.video_pos_buckets),
                         droptoken_keep_rate=keep, droptoken_per_sample=self.droptoken_per_sample, **shared)
      self.audio = Tower("audio", patch_size=audio_patch, spectrogram=self.spectrogram,
                         pos_buckets=tuple(self.audio_pos_buckets), droptoken_keep_rate=keep,
                         droptoken_per_sample=self.droptoken_per_sample, **shared)
      # The text pre-projection is the tokenizer's GELU Dense (with bias here, as uvatt.py).
      self.text = Tower("text", vocab_size=self.text_vocab_size, word_dim=self.text_embed_dim,
                        trainable_embeddings=self.trainable_embeddings, text_projection_bias=True,
                        pos_buckets=(self.text_pos_buckets,), **{**shared, "pre_projection": False})
    else:
      self.video = Tower("video", sizes["video"], patch_size=tuple(self.video_patch_size),
                         pos_buckets=tuple(self.video_pos_buckets), droptoken_keep_rate=keep,
                         droptoken_per_sample=self.droptoken_per_sample, **common_kw)
      self.audio = Tower("audio", sizes["audio"], patch_size=audio_patch, spectrogram=self.spectrogram,
                         pos_buckets=tuple(self.audio_pos_buckets), droptoken_keep_rate=keep,
                         droptoken_per_sample=self.droptoken_per_sample, **common_kw)
      relative = self.text_posemb == "relative"
      self.text = Tower("text", sizes["text"], vocab_size=self.text_vocab_size, word_dim=self.text_embed_dim,
                        trainable_embeddings=self.trainable_embeddings,
                        pos_buckets=() if relative else (self.text_pos_buckets,),
                        relative_position_buckets=self.relative_position_buckets if relative else 0,
                        relative_max_distance=self.relative_max_distance, **common_kw)
    self.head = FACHead(self.va_dim, self.vat_dim, self.bn_momentum, self.bn_epsilon)

  def encode_text(self, text: jax.Array, text_mask: jax.Array, *, train: bool = False
                  ) -> tuple[jax.Array, dict[str, Any]]:
    """[..., L] ids and mask -> (vat [..., vat_dim] unnormalised, tower aux)."""
    lead = text.shape[:-1]
    pooled, aux = self.text(text.reshape(-1, text.shape[-1]), mask=text_mask.reshape(-1, text.shape[-1]),
                            train=train)
    return self.head.text(pooled).reshape(lead + (-1,)), aux

  def __call__(self, video: jax.Array, audio: jax.Array, text: jax.Array, text_mask: jax.Array, *,
               train: bool = False) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Embeds a batch into the common spaces (unnormalised; the losses L2-normalise).

    Args:
      video: [B, F, H, W, 3] frames in [-1, 1].
      audio: [B, S] waveform in [-1, 1] or [B, T, M] log-mel.
      text: [B, K, L] int ids (K candidate captions per clip).
      text_mask: [B, K, L] nonzero for real tokens.
      train: training mode (dropout, DropToken, BatchNorm batch statistics).

    Returns:
      ({'video_va' [B, va], 'video_vat' [B, vat], 'audio_va' [B, va], 'text_vat' [B, K, vat]},
       {'video': aux, 'audio': aux, 'text': aux}) with the towers' aux dicts.
    """
    v, v_aux = self.video(video, train=train)
    a, a_aux = self.audio(audio, train=train)
    t_vat, t_aux = self.encode_text(text, text_mask, train=train)
    va, vat = self.head.video(v, train=train)
    out = {"video_va": va, "video_vat": vat, "audio_va": self.head.audio(a), "text_vat": t_vat}
    return out, {"video": v_aux, "audio": a_aux, "text": t_aux}

  def embed_video(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """[B, F, H, W, 3] -> [B, vat_dim] video embedding in S_vat (unnormalised)."""
    pooled, _ = self.video(video, train=train)
    return self.head.video(pooled, train=train)[1]

  def video_features(self, video: jax.Array) -> jax.Array:
    """[B, F, H, W, 3] -> [B, D] pooled video-tower output before the projection heads (linear evaluation)."""
    return self.video(video, train=False)[0]

  def embed_text(self, text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """[B, L] ids, [B, L] mask -> [B, vat_dim] text embedding in S_vat (unnormalised)."""
    return self.encode_text(text, text_mask)[0]


def count_params(tree: Any) -> int:
  """Number of scalars in a (possibly boxed or abstract) parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(nn.unbox(tree)))


def tower_params(params: Mapping[str, Any], modality: str) -> int:
  """Parameters of one tower of a Model's `params` (its tokenizer, positions, agg token and Transformer).

  For the modality-agnostic model the shared backbone is counted in every tower.
  """
  n = count_params(params[modality])
  if "backbone" in params:
    n += count_params(params["backbone"])
  return n


class VideoBackbone(nn.Module):
  """VATT's video tower alone, as a classification backbone (fine-tuning B.5, linear evaluation B.8).

  Submodule names match `Model` ('video', and 'backbone' for the modality-agnostic shared Transformer), so a
  pre-training checkpoint's `params['video']` (and `params['backbone']`) load into it unchanged
  (configs/vatt/finetune.py's `config.init.assignment_map`). The positional tables keep their pre-training buckets
  when config.model sets them and are resampled on the fly when the fine-tuning grid differs (B.5: 320 crops;
  docs/design.md). The fields are Model's video-tower fields, with no DropToken by default (B.5).
  """
  modality_agnostic: bool = False
  video_size: str = "B"
  video_patch_size: tuple[int, int, int] = (4, 16, 16)
  video_pos_buckets: tuple[int, int, int] = (8, 14, 14)
  droptoken_rate: float = 0.0
  post_projection_dim: int = 1024
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  attention: str = "dense"
  resize_method: str = "spline"
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "VideoBackbone":
    """The video tower of the `Model` that `config.model` describes (its other keys are checked, then unused).

    A pre-training config's `config.model` therefore builds the backbone unchanged; the video buckets come from
    config.input unless config.model sets them.
    """
    names = set(common.field_names(cls))
    backbone = cls(**{k: v for k, v in _model_kwargs(Model, config.model).items() if k in names})
    if not _unset(config.model, "video_pos_buckets"):
      return backbone
    return backbone.clone(video_pos_buckets=_grid(input_shapes(_input(config))["video"][:3],
                                                  backbone.video_patch_size))

  def setup(self):
    size = tower_sizes(self)["video"]
    common_kw = dict(dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                     attention=self.attention, remat=self.remat, scan=self.scan, dtype=self.dtype,
                     resize_method=self.resize_method, patch_size=tuple(self.video_patch_size),
                     pos_buckets=tuple(self.video_pos_buckets), droptoken_keep_rate=1.0 - self.droptoken_rate)
    if self.modality_agnostic:
      self.backbone = _shared_encoder(size, self)
      self.video = Tower("video", size, shared_encoder=self.backbone, pre_projection=True,
                         post_projection=self.post_projection_dim, **common_kw)
    else:
      self.video = Tower("video", size, **common_kw)

  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """[B, F, H, W, 3] -> (pooled aggregation-token feature [B, D], tower aux)."""
    return self.video(video, train=train)


def _shared_encoder(size: Size, owner: Model | VideoBackbone) -> transformer.Encoder:
  """The modality-agnostic backbone (one Transformer for every modality), with the owner's dropout and kernels."""
  return transformer.Encoder(
      num_layers=size.num_layers, num_heads=size.num_heads, mlp_dim=size.mlp_dim,
      dropout_rate=owner.dropout_rate, attention_dropout_rate=owner.attention_dropout_rate,
      attention=owner.attention, remat=owner.remat, scan=owner.scan, dtype=owner.dtype)


def build_backbone(config: ml_collections.ConfigDict) -> VideoBackbone:
  """The classification backbone for config.model.name = 'vatt' (vlm/tasks/classification.py)."""
  return VideoBackbone.from_config(config)


# ============================================================================================ construction
@dataclasses.dataclass(frozen=True)
class InputSpec:
  """The per-example input sizes VATT reads from `config.input`; defaults: pre-training (appendix B.1).

  Attributes:
    num_frames, crop_size: video clips [num_frames, crop_size, crop_size, 3] (32 x 224 x 224).
    fps: frame rate (10); the clip lasts num_frames / fps seconds, which sizes the audio. None: stride-based
      sampling, so the audio length must be given.
    audio_samples: waveform length; 0: the clip's length at audio_sample_rate (153,600 = 3.2 s at 48 kHz).
    audio_sample_rate: 48 kHz.
    spectrogram_frames: log-mel frames; 0: the clip's length at a 21 ms hop (appendix D).
    num_mel_bins: 80.
    num_captions: K MIL-NCE candidate captions per clip (1).
    max_text_len: words per caption (16, B.1).
  """
  num_frames: int = 32
  crop_size: int = 224
  fps: float | None = 10.0
  audio_samples: int = 0
  audio_sample_rate: int = 48_000
  spectrogram_frames: int = 0
  num_mel_bins: int = 80
  num_captions: int = 1
  max_text_len: int = 16

  @classmethod
  def from_config(cls, inp: Any) -> "InputSpec":
    """The fields present in `inp` (config.input, a dict or None); config.input's other keys are the data's."""
    inp = common.plain(inp or {})
    return cls(**{f.name: inp[f.name] for f in dataclasses.fields(cls) if f.name in inp})


def input_shapes(spec: InputSpec | Any, *, spectrogram: bool = False) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of the batch keys (`video`, `audio`, `audio_mask`, `text`, `text_mask`).

  Args:
    spec: an InputSpec, or config.input (read by InputSpec.from_config).
    spectrogram: the audio is a log-mel spectrogram [T, num_mel_bins] rather than a waveform [S].

  Raises:
    ValueError: when the audio length can be neither read nor derived from the clip's duration.
  """
  if not isinstance(spec, InputSpec):
    spec = InputSpec.from_config(spec)
  seconds = spec.num_frames / float(spec.fps) if spec.fps else None
  shapes = {"video": (spec.num_frames, spec.crop_size, spec.crop_size, 3), "audio_mask": (),
            "text": (spec.num_captions, spec.max_text_len)}
  if spectrogram:
    t = int(spec.spectrogram_frames or 0)
    if not t and seconds:
      t = int(round(seconds / 0.021))  # 21 ms hop (VATT appendix D)
    shapes["audio"] = (t, spec.num_mel_bins)
  else:
    t = int(spec.audio_samples or 0)
    if not t and seconds:
      t = int(round(seconds * spec.audio_sample_rate))
    shapes["audio"] = (t,)
  if not t:
    raise ValueError("Cannot size the audio: set config.input.fps (clip length = num_frames / fps), or "
                     "config.input.audio_samples / spectrogram_frames.")
  shapes["text_mask"] = shapes["text"]
  return shapes


def _input(config: ml_collections.ConfigDict) -> Any:
  return config.input if "input" in config else None


def _unset(model_cfg: Any, key: str) -> bool:
  """config.model leaves `key` to be derived from the input (absent, or None)."""
  return key not in model_cfg or model_cfg[key] is None


def _model_kwargs(cls: type, model_cfg: Any) -> dict[str, Any]:
  """common.model_kwargs over SIZES; positional buckets left None in config.model are derived later."""
  model_cfg = {k: v for k, v in common.plain(model_cfg).items()
               if not (k in ("video_pos_buckets", "audio_pos_buckets") and v is None)}
  return common.model_kwargs(cls, model_cfg, sizes=SIZES, family="vatt", patch_field=None)


def _grid(shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
  """Tokens per axis of an input `shape` cut into `patch`es (the positional buckets that fit it exactly)."""
  return tuple(int(s) // int(p) for s, p in zip(shape, patch))


# ================================================================================================= loading
def load(params: dict[str, Any], restored: dict[str, Any] | None, init: Any, model: Any) -> dict[str, Any]:
  """VATT's part of `config.init` (vlm/train/init.py): positional tables with another bucket count.

  A learned table (`.../posemb/*_embedding`) whose bucket count differs from the model's (fine-tuning at 320
  crops, VATT B.5: 8 + 14 + 14 pre-training buckets become 8 + 20 + 20) is resampled with the model's resize
  method (the release's per-axis polyharmonic spline by default), as the release's `interpolate_pos` does. Paths
  may carry a task prefix (`backbone/` on the classification path). Everything else must fit as it is.
  """
  del init
  if restored is None:
    return {}
  method = getattr(getattr(model, "backbone", model), "resize_method", "spline")
  out = {}
  for path, src in restored.items():
    target = params.get(path)
    if (target is not None and np.shape(src) != np.shape(target) and "/posemb/" in f"/{path}"
        and path.endswith("_embedding") and np.ndim(src) == np.ndim(target)
        and np.shape(src)[1:] == np.shape(target)[1:]):
      src = np.asarray(posemb_lib.resize_table(jnp.asarray(src, jnp.float32), np.shape(target)[0], method=method))
    out[path] = src
  return out
