"""VATT: Transformers for multimodal self-supervised learning from raw video, audio and text (Akbari et al.).

Three towers map raw signals to pooled features, and the "FAC" head maps those into two common spaces, S_va
(512-d, video-audio NCE) and S_vat (256-d, video-text MIL-NCE) (paper section 3.2, appendix B.3).

Per tower (`Tower`): tokenizer -> [GELU Dense pre-projection] -> factorised learned positional embedding ->
DropToken (training) -> learned aggregation token prepended -> pre-norm Transformer -> [GELU Dense
post-projection]; the pooled feature is the aggregation token's output (token 0).

* Modality-specific (`variant` 'BBS', 'MBS', 'LBS', or any three size letters for video-audio-text): each tower
  has its own Transformer. The text tower follows the released T5-style encoder in using relative position
  biases (32 buckets, max distance 64, shared by all layers) instead of absolute positions; `text_posemb=
  'learned'` switches to a learned 1-D table. Unlike the release's T5 block, our text layers keep the common
  block (LayerNorm with bias, biased projections, logits scaled by d_kv**-0.5) so all towers share one layer
  implementation; checkpoints from the release therefore need a converter that accounts for this.
* Modality-agnostic ('MA', VATT-MA-Medium; 'MA-<size>' for other sizes): one Transformer shared by the three
  modalities, each with its own raw-to-embedding layer, GELU Dense pre-projection, positional tables (text: 16
  learned temporal buckets), aggregation token and GELU Dense post-projection to 1024-d
  (`vatt/modeling/backbones/unified/uvatt.py`). Modalities run in separate passes: no cross-modal attention.

Sizes (appendix table 1; d_kv = 64 everywhere): Small 6L/512/2048/8H, Base 12L/768/3072/12H, Medium
12L/1024/4096/16H, Large 24L/1024/4096/16H, plus 'T' (tiny: 2L/64/128/2H, d_kv 32) for CPU tests. `tiny=True`
replaces every size of a variant by 'T'.

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

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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


# VATT appendix B.2, table 1. 'T' is ours (CPU tests).
SIZES = {
    "S": Size(6, 512, 2048, 8),
    "B": Size(12, 768, 3072, 12),
    "M": Size(12, 1024, 4096, 16),
    "L": Size(24, 1024, 4096, 16),
    "T": Size(2, 64, 128, 2),
}
SIZE_NAMES = {"S": "Small", "B": "Base", "M": "Medium", "L": "Large", "T": "Tiny"}
# Table 1's parameter counts.
TABLE1_PARAMS = {"S": 20.9e6, "B": 87.9e6, "M": 155.0e6, "L": 306.1e6}
MODALITIES = ("video", "audio", "text")


def decode_variant(variant: str, *, tiny: bool = False) -> tuple[bool, dict[str, Size]]:
  """Decodes a variant string.

  Args:
    variant: three size letters for video, audio, text ('BBS', 'MBS', 'LBS'; letters S, B, M, L, T), or 'MA'
      (modality-agnostic Medium) / 'MA-<letter>' (modality-agnostic of that size).
    tiny: replace every size by 'T'.

  Returns:
    (modality_agnostic, sizes): sizes maps 'shared' (modality-agnostic) or each modality to its Size.

  Raises:
    ValueError: on a malformed variant.
  """
  v = variant.strip().upper()
  if v == "MA" or v.startswith("MA-"):
    letter = "M" if v == "MA" else v[3:]
    if letter not in SIZES:
      raise ValueError(f"Bad VATT variant {variant!r}: size {letter!r} not in {sorted(SIZES)}.")
    return True, {"shared": SIZES["T" if tiny else letter]}
  if len(v) != 3 or any(c not in SIZES for c in v):
    raise ValueError(f"Bad VATT variant {variant!r}: expected three of {sorted(SIZES)} (video, audio, text), "
                     "e.g. 'BBS', or 'MA' / 'MA-<size>'.")
  return False, {m: SIZES["T" if tiny else c] for m, c in zip(MODALITIES, v)}


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

  Attributes:
    variant: 'BBS' | 'MBS' | 'LBS' | any three of S/B/M/L/T (video, audio, text) | 'MA' | 'MA-<size>'.
    tiny: use the tiny size 'T' everywhere (CPU tests).
    video_patch_size: tubelet (t, h, w), (4, 16, 16).
    audio_patch_size: waveform samples per token, 128.
    spectrogram: audio input is a [B, T, M] log-mel spectrogram.
    spectrogram_patch_size: (frames, mel bins) per token, (16, 5).
    video_pos_buckets: video positional table sizes (t, h, w): (8, 14, 14) for 32x224x224 pre-training.
    audio_pos_buckets: audio table sizes: (1200,) for waveform; (t, m) for spectrograms.
    text_pos_buckets: learned text table size (modality-agnostic, or text_posemb='learned'), 16.
    text_posemb: modality-specific text positions: 'relative' (T5, as released) or 'learned'.
    relative_position_buckets, relative_max_distance: T5 relative bias of the text tower (32, 64).
    vocab_size, word_dim, trainable_embeddings: word-embedding table (2**16, 300, frozen).
    droptoken_rate: DropToken drop rate for video and audio in training (paper: 0.5); 0 disables it.
    droptoken_per_sample: per-sample DropToken permutations (default one shared by the batch, as released).
    dropout_rate: Transformer / positional-embedding dropout (0.1).
    attention_dropout_rate: attention-probability dropout (0.1, as released).
    va_dim, vat_dim: common-space widths (512, 256).
    post_projection_dim: modality-agnostic post-projection width (1024).
    bn_momentum, bn_epsilon: head BatchNorm (0.9, 1e-5).
    resize_method: positional-table resampling when the grid differs from the buckets ('spline' | 'cubic').
    attention, remat, scan, dtype: Transformer options.
  """
  variant: str = "BBS"
  tiny: bool = False
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
  vocab_size: int = 2 ** 16
  word_dim: int = 300
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

  def setup(self):
    agnostic, sizes = decode_variant(self.variant, tiny=self.tiny)
    if self.text_posemb not in ("relative", "learned"):
      raise ValueError(f"text_posemb must be 'relative' or 'learned', got {self.text_posemb!r}.")
    common = dict(dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                  attention=self.attention, remat=self.remat, scan=self.scan, dtype=self.dtype,
                  resize_method=self.resize_method)
    keep = 1.0 - self.droptoken_rate
    audio_patch = tuple(self.spectrogram_patch_size) if self.spectrogram else (self.audio_patch_size,)
    if agnostic:
      size = sizes["shared"]
      self.backbone = _shared_encoder(size, self)
      shared = dict(size=size, shared_encoder=self.backbone, pre_projection=True,
                    post_projection=self.post_projection_dim, **common)
      self.video = Tower("video", patch_size=tuple(self.video_patch_size), pos_buckets=tuple(self.video_pos_buckets),
                         droptoken_keep_rate=keep, droptoken_per_sample=self.droptoken_per_sample, **shared)
      self.audio = Tower("audio", patch_size=audio_patch, spectrogram=self.spectrogram,
                         pos_buckets=tuple(self.audio_pos_buckets), droptoken_keep_rate=keep,
                         droptoken_per_sample=self.droptoken_per_sample, **shared)
      # The text pre-projection is the tokenizer's GELU Dense (with bias here, as uvatt.py).
      self.text = Tower("text", vocab_size=self.vocab_size, word_dim=self.word_dim,
                        trainable_embeddings=self.trainable_embeddings, text_projection_bias=True,
                        pos_buckets=(self.text_pos_buckets,), **{**shared, "pre_projection": False})
    else:
      self.video = Tower("video", sizes["video"], patch_size=tuple(self.video_patch_size),
                         pos_buckets=tuple(self.video_pos_buckets), droptoken_keep_rate=keep,
                         droptoken_per_sample=self.droptoken_per_sample, **common)
      self.audio = Tower("audio", sizes["audio"], patch_size=audio_patch, spectrogram=self.spectrogram,
                         pos_buckets=tuple(self.audio_pos_buckets), droptoken_keep_rate=keep,
                         droptoken_per_sample=self.droptoken_per_sample, **common)
      relative = self.text_posemb == "relative"
      self.text = Tower("text", sizes["text"], vocab_size=self.vocab_size, word_dim=self.word_dim,
                        trainable_embeddings=self.trainable_embeddings,
                        pos_buckets=() if relative else (self.text_pos_buckets,),
                        relative_position_buckets=self.relative_position_buckets if relative else 0,
                        relative_max_distance=self.relative_max_distance, **common)
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
  (configs/vatt/finetune.py's `config.init.assignment_map`). The positional tables keep their pre-training buckets and
  are resampled on the fly when the fine-tuning grid differs (B.5: 320 crops; docs/design.md).
  """
  variant: str = "BBS"
  tiny: bool = False
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

  def setup(self):
    agnostic, sizes = decode_variant(self.variant, tiny=self.tiny)
    common = dict(dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                  attention=self.attention, remat=self.remat, scan=self.scan, dtype=self.dtype,
                  resize_method=self.resize_method, patch_size=tuple(self.video_patch_size),
                  pos_buckets=tuple(self.video_pos_buckets), droptoken_keep_rate=1.0 - self.droptoken_rate)
    if agnostic:
      size = sizes["shared"]
      self.backbone = _shared_encoder(size, self)
      self.video = Tower("video", size, shared_encoder=self.backbone, pre_projection=True,
                         post_projection=self.post_projection_dim, **common)
    else:
      self.video = Tower("video", sizes["video"], **common)

  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """[B, F, H, W, 3] -> (pooled aggregation-token feature [B, D], tower aux)."""
    return self.video(video, train=train)


def _shared_encoder(size: Size, owner: Model | VideoBackbone) -> transformer.Encoder:
  """The modality-agnostic backbone (one Transformer for every modality), with the owner's dropout and kernels."""
  return transformer.Encoder(
      num_layers=size.num_layers, num_heads=size.num_heads, mlp_dim=size.mlp_dim,
      dropout_rate=owner.dropout_rate, attention_dropout_rate=owner.attention_dropout_rate,
      attention=owner.attention, remat=owner.remat, scan=owner.scan, dtype=owner.dtype)


def build_backbone(config) -> VideoBackbone:
  """The classification backbone for config.model.name = 'vatt' (fields as in vlm/tasks/contrastive.py)."""
  kw = model_kwargs(config)
  return VideoBackbone(
      variant=kw["variant"], tiny=kw["tiny"], video_patch_size=kw["video_patch_size"],
      video_pos_buckets=kw["video_pos_buckets"], droptoken_rate=float(config.model.get("droptoken_rate", 0.0)),
      post_projection_dim=int(config.model.get("post_projection_dim", 1024)),
      dropout_rate=kw["dropout_rate"], attention_dropout_rate=kw["attention_dropout_rate"],
      attention=kw["attention"], resize_method=kw["resize_method"], remat=kw["remat"], scan=kw["scan"],
      dtype=kw["dtype"])


# ============================================================================================ construction
def _tuple(x) -> tuple[int, ...]:
  return tuple(int(v) for v in x)


def input_shapes(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """Per-example shapes of the batch keys from config.input / config.model (see module docstring)."""
  inp = config.get("input") or ml_collections.ConfigDict()
  frames = int(inp.get("num_frames", 32))
  crop = int(inp.get("crop_size", 224))
  fps = inp.get("fps", 10.0)
  seconds = frames / float(fps) if fps else None
  shapes = {"video": (frames, crop, crop, 3), "audio_mask": (),
            "text": (int(inp.get("num_captions", 1)), int(inp.get("max_text_len", 16)))}
  if config.model.get("spectrogram", False):
    t = int(inp.get("spectrogram_frames", 0) or 0)
    if not t and seconds:
      t = int(round(seconds / 0.021))  # 21 ms hop (VATT appendix D)
    shapes["audio"] = (t, int(inp.get("num_mel_bins", 80)))
  else:
    t = int(inp.get("audio_samples", 0) or 0)
    if not t and seconds:
      t = int(round(seconds * int(inp.get("audio_sample_rate", 48_000))))
    shapes["audio"] = (t,)
  if not t:
    raise ValueError("Cannot size the audio: set config.input.fps (clip length = num_frames / fps), or "
                     "config.input.audio_samples / spectrogram_frames.")
  shapes["text_mask"] = shapes["text"]
  return shapes


def model_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """vatt.Model keyword arguments from config.model, with positional buckets derived from config.input."""
  m = config.model
  variant = str(m.get("variant", "BBS"))
  if m.get("modality_agnostic", False) and not variant.upper().startswith("MA"):
    if len(variant) != 1:
      raise ValueError(f"model.modality_agnostic=True needs a one-letter size or an 'MA' variant, got {variant!r}.")
    variant = f"MA-{variant}"
  shapes = input_shapes(config)
  video_patch = _tuple(m.get("video_patch_size", (4, 16, 16)))
  audio_patch = int(m.get("audio_patch_size", 128))
  spec_patch = _tuple(m.get("spectrogram_patch_size", (16, 5)))
  spectrogram = bool(m.get("spectrogram", False))
  video_buckets = m.get("video_pos_buckets", None)
  if video_buckets is None:
    video_buckets = tuple(s // p for s, p in zip(shapes["video"][:3], video_patch))
  audio_buckets = m.get("audio_pos_buckets", None)
  if audio_buckets is None:
    audio_buckets = (tuple(s // p for s, p in zip(shapes["audio"], spec_patch)) if spectrogram
                     else (shapes["audio"][0] // audio_patch,))
  return dict(
      variant=variant, tiny=bool(m.get("tiny", False)), video_patch_size=video_patch,
      audio_patch_size=audio_patch, spectrogram=spectrogram, spectrogram_patch_size=spec_patch,
      video_pos_buckets=_tuple(video_buckets), audio_pos_buckets=_tuple(audio_buckets),
      text_pos_buckets=int(m.get("text_pos_buckets", 16)), text_posemb=str(m.get("text_posemb", "relative")),
      relative_position_buckets=int(m.get("relative_position_buckets", 32)),
      relative_max_distance=int(m.get("relative_max_distance", 64)),
      vocab_size=int(m.get("text_vocab_size", 2 ** 16)), word_dim=int(m.get("text_embed_dim", 300)),
      trainable_embeddings=bool(m.get("trainable_embeddings", False)),
      droptoken_rate=float(m.get("droptoken_rate", 0.5)),
      droptoken_per_sample=bool(m.get("droptoken_per_sample", False)),
      dropout_rate=float(m.get("dropout_rate", 0.1)),
      attention_dropout_rate=float(m.get("attention_dropout_rate", 0.1)),
      va_dim=int(m.get("va_dim", 512)), vat_dim=int(m.get("vat_dim", 256)),
      post_projection_dim=int(m.get("post_projection_dim", 1024)),
      bn_momentum=float(m.get("bn_momentum", 0.9)), bn_epsilon=float(m.get("bn_epsilon", 1e-5)),
      resize_method=str(m.get("resize_method", "spline")), attention=str(m.get("attention", "dense")),
      remat=bool(m.get("remat", False)), scan=bool(m.get("scan", False)),
      dtype=jnp.dtype(m.get("dtype", "float32")))


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
