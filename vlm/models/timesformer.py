"""TimeSformer video encoder: divided space-time attention (Bertasius et al. 2021), HierVL's and TW-BERT's f_v.

video [B, T, H, W, 3] -> per-frame P x P patches (vlm/nn/patch.py) -> [CLS] + T N tokens, frame-major
(token 1 + t N + n is patch n of frame t) -> `num_layers` `DividedSpaceTimeBlock`s in the shared stack
(vlm/nn/transformer.py) -> final LayerNorm -> (tokens [B, 1 + T N, D], aux with 'pooled' = the [CLS]).

Embeddings: patch + a learned spatial table [1, 1 + N, D] (the image ViT's, [CLS] first) + a learned temporal
table [1, T, D] on the patches, initialised to zeros (Frozen-in-Time's `time_init='zeros'`), so an image ViT
inflated to video starts from its image response.

A block (HF `TimesformerLayer`, divided space-time):
  temporal  each patch position attends over its T frames: p += Dense_t(DropPath(MHA_t(LN_t(p))))
  spatial   each frame's patches and a copy of the [CLS] attend within the frame:
            r = DropPath(MHA(LN([cls; p_t]))); cls += mean_t r_cls, p += r_patches
  MLP       x += DropPath(MLP(LN(x)))
The spatial attention takes any registered kernel (vlm/nn/kernels/), the temporal one is dense (T keys).
Frozen-in-Time (HierVL's release) differs in one detail: its [CLS] also attends to every token in both attentions
instead of through per-frame copies; this module implements the TimeSformer form, which HF's model has and the
parity test pins (tests/test_models_timesformer.py: hidden states within 1e-4 of a random HF `TimesformerModel`).

TW-BERT's form (`frame_cls=True`): every frame keeps its own [CLS_t] ([B, T (1 + N), D], frame-major), which
takes part in both attentions like a patch, the temporal table on all of frame t's tokens; the pooled feature is
the mean of the frames' [CLS]. Its hierarchical frame selector (`select_after` / `select_frames`) keeps the
frames a text points to between layers (vlm/nn/frame_selection.py, vlm/nn/perturbed_topk.py); the layers then
run in stages of `transformer.Stack`, one per frame count.

Weights: `from_hf_timesformer` maps HF `TimesformerModel` safetensors; `from_vit` starts from an image ViT
(`vlm.models.vit_checkpoints.read_vit`: big_vision npz or HF safetensors) with the temporal attention copied
from the spatial one and the temporal Dense at zero (TimeSformer's initialisation: the inflated model equals the
image ViT on a static clip); `resize_time_table` inflates the temporal table to more frames (zeros / nearest /
linear, Frozen-in-Time's `_inflate_positional_embeds`).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm.models import hf_weights
from vlm.nn import attention as attention_lib
from vlm.nn import dropout as dropout_lib
from vlm.nn import frame_selection
from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib
from vlm.nn import patch as patch_lib
from vlm.nn import perturbed_topk
from vlm.nn import transformer

TIME_RESIZE = ("zeros", "nearest", "linear")


class DividedSpaceTimeBlock(nn.Module):
  """One TimeSformer layer (module docstring): carry {'x' [B, 1 + T N, D], frame-major}; shared unused.

  Attributes:
    num_heads, mlp_dim: attention heads and feed-forward width.
    frames: T (the token count gives N).
    frame_cls: the tokens are T frames of [CLS_t; N patches] (TW-BERT): both attentions take each frame's
      [CLS] like a patch (temporal: the [CLS] tokens over time; spatial: within the frame). Else one [CLS].
    dropout_rate, attention_dropout_rate: dropout on the MLP output / the attention probabilities.
    drop_path_rates: every layer's stochastic-depth rate, read at the layer's index; () for none.
    attention, attention_kwargs: the spatial attention's registered kernel and its options.
    layer_norm_epsilon: 1e-6 (HF / timm ViT).
    dtype: computation dtype.
  """
  num_heads: int
  mlp_dim: int
  frames: int
  frame_cls: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rates: tuple[float, ...] = ()
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: transformer.Carry, shared: Mapping[str, Any], layer: int | jax.Array, train: bool
               ) -> tuple[transformer.Carry, dict[str, Any]]:
    del shared
    x = nn.with_logical_constraint(carry["x"], (ax.BATCH, ax.TOKENS, ax.ACT_EMBED))
    b, length, d = x.shape
    t = self.frames
    norm = lambda name: transformer.layer_norm(self.layer_norm_epsilon, self.dtype, name)
    mha = lambda name, kernel, options: attention_lib.MultiHeadAttention(
        num_heads=self.num_heads, head_dim=d // self.num_heads, dropout_rate=self.attention_dropout_rate,
        attention=kernel, attention_kwargs=options, dtype=self.dtype, name=name)
    drop_path = lambda y: dropout_lib.drop_path(self, y, self.drop_path_rates, layer, train)
    temporal = lambda y: mha("temporal_attention", "dense", None)(norm("ln_temporal")(y), train=train)[0]
    temporal_dense = lambda y: nn.Dense(d, dtype=self.dtype, name="temporal_dense", kernel_init=(
        nn.with_logical_partitioning(nn.initializers.zeros, (None, ax.EMBED))))(y)
    if self.frame_cls:
      m = length // t  # 1 + N tokens per frame
      if t * m != length:
        raise ValueError(f"{length} tokens are not {t} frames x [CLS_t; N patches].")
      frames = x.reshape(b, t, m, d)
      y = temporal(frames.transpose(0, 2, 1, 3).reshape(b * m, t, d))
      frames = frames + temporal_dense(drop_path(y.reshape(b, m, t, d)).transpose(0, 2, 1, 3))
      s = mha("attention", self.attention, self.attention_kwargs)(
          norm("ln_attention")(frames.reshape(b * t, m, d)), train=train, layer=layer)[0]
      x = (frames + drop_path(s.reshape(b, t, m, d))).reshape(b, length, d)
    else:
      n = (length - 1) // t
      if 1 + t * n != length:
        raise ValueError(f"{length} tokens are not [CLS] + {t} frames x N patches.")
      cls, patches = x[:, :1], x[:, 1:].reshape(b, t, n, d)
      # Temporal attention: [B, T, N, D] -> B N sequences of T tokens.
      y = temporal(patches.transpose(0, 2, 1, 3).reshape(b * n, t, d))
      patches = patches + temporal_dense(drop_path(y.reshape(b, n, t, d)).transpose(0, 2, 1, 3))
      # Spatial attention: B T sequences of [CLS copy; N patches].
      s = jnp.concatenate([jnp.broadcast_to(cls[:, None], (b, t, 1, d)), patches], axis=2).reshape(b * t, 1 + n, d)
      s, _ = mha("attention", self.attention, self.attention_kwargs)(norm("ln_attention")(s), train=train,
                                                                    layer=layer)
      s = drop_path(s.reshape(b, t, 1 + n, d))
      cls = cls + s[:, :, 0].mean(axis=1, keepdims=True)  # the frames' [CLS] updates averaged
      x = jnp.concatenate([cls, (patches + s[:, :, 1:]).reshape(b, t * n, d)], axis=1)
    y = mlp_lib.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, dtype=self.dtype, name="mlp")(
        norm("ln_mlp")(x), deterministic=not train)
    x = x + drop_path(y)
    return {**carry, "x": x}, {}


class TimeSformer(nn.Module):
  """video [B, T, H, W, 3] (+ text [B, Dt]) -> (tokens after the final LayerNorm, aux).

  Tokens: [B, 1 + T N, D] with one [CLS] (HierVL); with `frame_cls`, [B, T' (1 + N), D], frame t's [CLS_t]
  first in its frame (TW-BERT). aux: 'pooled' [B, D] (the [CLS], or the mean of the frames' [CLS]), 'frames' (T',
  the frame count after selection), 'layers' (each layer's empty aux dict) and, with frame selection,
  'selected_frames' [B, T'] (the kept frames' indices in the input clip, temporal order) and 'frame_scores'
  (each selection's [B, T_j] scorer output).

  Frame selection (TW-BERT's hierarchical frame selector, vlm/nn/frame_selection.py): after the 1-based layers
  `select_after`, keep `select_frames` frames, scored from each frame's [CLS] and the text embedding; in
  training (and with `stochastic_eval`) the differentiable perturbed Top-K (draws from the 'dropout' rng, i.e.
  the step's key), else the hard Top-K. Without a text, the frames kept are evenly spaced (the text-free view a
  retrieval index embeds). Parameter tree: `patch_embedding`, `cls`, `pos_embedding` [1, 1 + N, D],
  `time_embedding` [1, T, D], `layer_<i>`, `frame_selector_<j>`, `encoder_norm`.
  """
  num_layers: int = 12
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  patch_size: int = 16
  frames: int = 4
  image_size: int = 224
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  drop_path_rate: float = 0.1  # Frozen-in-Time's default, linear over the layers
  attention: str = "dense"
  attention_kwargs: Mapping[str, Any] | None = None
  layer_norm_epsilon: float = 1e-6
  frame_cls: bool = False
  select_after: tuple[int, ...] = ()
  select_frames: tuple[int, ...] = ()
  selection_samples: int = 500
  selection_sigma: float = 0.05
  stochastic_eval: bool = False
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32

  def check_selection(self) -> None:
    """Raises ValueError, naming the field, for a frame selection this encoder cannot make."""
    after, kept = tuple(self.select_after), tuple(self.select_frames)
    if len(after) != len(kept):
      raise ValueError(f"select_after={after} and select_frames={kept}: one frame count per selection layer.")
    if not after:
      return
    if not self.frame_cls:
      raise ValueError("frame selection scores each frame's [CLS]: it needs frame_cls=True.")
    if self.scan:
      raise ValueError("frame selection splits the layers into stages of different frame counts: set scan=False.")
    if any(not 1 <= a <= self.num_layers for a in after) or list(after) != sorted(set(after)):
      raise ValueError(f"select_after={after}: expected increasing 1-based layers in [1, {self.num_layers}].")
    previous = self.frames
    for a, k in zip(after, kept):
      if not 1 <= k <= previous:
        raise ValueError(f"select_frames={kept}: keeping {k} frames after layer {a} of the {previous} there; "
                         "each stage keeps at least 1 and at most the previous stage's frames.")
      previous = k
    perturbed_topk.check_args(self.frames, kept[0], self.selection_samples, self.selection_sigma,
                              "frame selection")

  @nn.compact
  def __call__(self, video: jax.Array, text: jax.Array | None = None, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, Any]]:
    b, t, h, w, _ = video.shape
    side = self.image_size // self.patch_size
    if (t, h // self.patch_size, w // self.patch_size) != (self.frames, side, side) or h % self.patch_size:
      raise ValueError(f"TimeSformer built for {self.frames} frames of {self.image_size}x{self.image_size} "
                       f"(patch {self.patch_size}) got a [{t}, {h}, {w}] clip; resize the temporal table "
                       "(timesformer.resize_time_table) or change the model's frames / image_size.")
    self.check_selection()
    d, n = self.hidden_size, side * side
    x = patch_lib.PatchEmbed(d, (1, self.patch_size, self.patch_size), dtype=self.dtype,
                             name="patch_embedding")(video).reshape(b, t, n, d)
    table = lambda name, shape, init: self.param(name, nn.with_logical_partitioning(init, (None, None, ax.EMBED)),
                                                 shape, jnp.float32)
    cls = table("cls", (1, 1, d), nn.initializers.normal(0.02))
    pos = table("pos_embedding", (1, 1 + n, d), nn.initializers.normal(0.02))
    time = table("time_embedding", (1, t, d), nn.initializers.zeros)
    if self.frame_cls:  # [CLS_t; patches_t] per frame, the temporal table on every token of frame t
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, t, 1, d)), x], axis=2)
      x = (x + pos[:, None].astype(x.dtype) + time[:, :, None].astype(x.dtype)).reshape(b, t * (1 + n), d)
    else:
      x = x + pos[:, None, 1:].astype(x.dtype) + time[:, :, None].astype(x.dtype)
      cls = (cls + pos[:, :1]).astype(x.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x.reshape(b, t * n, d)], axis=1)
    x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=not train)
    block_kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, frame_cls=self.frame_cls,
                        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
                        drop_path_rates=dropout_lib.linear_rates(self.drop_path_rate, self.num_layers),
                        attention=self.attention, attention_kwargs=self.attention_kwargs,
                        layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype)
    bounds = (0, *self.select_after, self.num_layers)
    frames_now, kept = t, jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    aux: dict[str, Any] = {"layers": ()}
    scores_out = []
    for stage, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
      if stop > start:
        stack = transformer.Stack(DividedSpaceTimeBlock, stop - start, {**block_kwargs, "frames": frames_now},
                                  layer_name="layer", remat=self.remat, scan=self.scan, first_layer=start)
        nn.share_scope(self, stack)  # layer_<i> next to the embeddings
        x, stack_aux = stack(x, train=train)
        aux["layers"] += stack_aux["layers"]
      if stage < len(self.select_after):
        x, idx, scores = self._select(stage, x.reshape(b, frames_now, -1, d), text, train)
        kept = jnp.take_along_axis(kept, idx, axis=1)
        frames_now = idx.shape[1]
        x = x.reshape(b, -1, d)
        if scores is not None:
          scores_out.append(scores)
    x = transformer.layer_norm(self.layer_norm_epsilon, self.dtype, "encoder_norm")(x)
    pooled = x.reshape(b, frames_now, -1, d)[:, :, 0].mean(axis=1) if self.frame_cls else x[:, 0]
    aux.update(pooled=pooled, frames=frames_now)
    if self.select_after:
      aux.update(selected_frames=kept, frame_scores=tuple(scores_out))
    return x, aux

  def _select(self, stage: int, frames: jax.Array, text: jax.Array | None, train: bool
              ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """frames [B, T, 1 + N, D] -> (kept [B, K, 1 + N, D], kept indices [B, K], scores [B, T] or None)."""
    k = self.select_frames[stage]
    if text is None:  # text-free: evenly spaced frames
      idx = jnp.broadcast_to(frame_selection.evenly_spaced(frames.shape[1], k), (frames.shape[0], k))
      return jnp.take_along_axis(frames, idx[:, :, None, None], axis=1), idx, None
    scores = frame_selection.FrameScorer(dtype=self.dtype, name=f"frame_selector_{stage}")(frames[:, :, 0], text)
    idx = perturbed_topk.hard_topk_indices(scores, k)
    if train or self.stochastic_eval:
      if not self.has_rng("dropout"):
        raise ValueError("perturbed frame selection draws its noise from the 'dropout' rng; pass "
                         "rngs={'dropout': key} (the step's key), or select deterministically (train=False).")
      indicators = perturbed_topk.perturbed_topk(scores, k, self.make_rng("dropout"),
                                                 num_samples=self.selection_samples, sigma=self.selection_sigma)
      return frame_selection.select_frames(frames, indicators), idx, scores
    return jnp.take_along_axis(frames, idx[:, :, None, None], axis=1), idx, scores


# ================================================================================================= weights
def _heads(w: np.ndarray, heads: int) -> np.ndarray:
  """torch Linear weight [out, in] -> our [in, heads, head_dim] kernel."""
  return w.T.reshape(w.shape[1], heads, -1)


def from_hf_timesformer(flat: Mapping[str, Any], num_heads: int) -> dict[str, Any]:
  """TimeSformer params from HF `TimesformerModel` weights ({name: array}, optional `timesformer.` prefix).

  HF fuses q, k, v in one `qkv` Linear per attention; its tokens are patch-major (1 + n T + t): only the
  parameters matter here, the layout of the activations is ours.
  """
  flat = hf_weights.strip_prefix(flat, "timesformer.")
  take = lambda name: hf_weights.take(flat, name, "HF TimeSformer checkpoint")
  kernel = take("embeddings.patch_embeddings.projection.weight")  # [D, 3, P, P]
  d = kernel.shape[0]
  out: dict[str, Any] = {
      "patch_embedding": {"kernel": kernel.transpose(2, 3, 1, 0)[None],
                          "bias": take("embeddings.patch_embeddings.projection.bias")},
      "cls": take("embeddings.cls_token"), "pos_embedding": take("embeddings.position_embeddings"),
      "time_embedding": take("embeddings.time_embeddings"),
      "encoder_norm": {"scale": take("layernorm.weight"), "bias": take("layernorm.bias")},
  }
  linear = lambda name: {"kernel": take(name + ".weight").T, "bias": take(name + ".bias")}
  norm = lambda name: {"scale": take(name + ".weight"), "bias": take(name + ".bias")}

  def attention(prefix: str) -> dict[str, Any]:
    qkv = take(prefix + ".attention.qkv.weight")
    bias = flat.get(prefix + ".attention.qkv.bias")
    bias = np.zeros((3 * d,), np.float32) if bias is None else np.asarray(bias)
    att = {}
    for j, name in enumerate(("query", "key", "value")):
      att[name] = {"kernel": _heads(qkv[j * d:(j + 1) * d], num_heads),
                   "bias": bias[j * d:(j + 1) * d].reshape(num_heads, -1)}
    w = take(prefix + ".output.dense.weight")
    att["out"] = {"kernel": w.T.reshape(num_heads, -1, d), "bias": take(prefix + ".output.dense.bias")}
    return att

  layers = sorted({int(m.group(1)) for k in flat if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
  for i in layers:
    p = f"encoder.layer.{i}."
    out[f"layer_{i:02d}"] = {
        "ln_temporal": norm(p + "temporal_layernorm"), "temporal_attention": attention(p + "temporal_attention"),
        "temporal_dense": linear(p + "temporal_dense"), "ln_attention": norm(p + "layernorm_before"),
        "attention": attention(p + "attention"), "ln_mlp": norm(p + "layernorm_after"),
        "mlp": {"wi": linear(p + "intermediate.dense"), "wo": linear(p + "output.dense")},
    }
  return jax.tree.map(jnp.asarray, out)


def from_vit(vit: Any, frames: int) -> dict[str, Any]:
  """TimeSformer params from an image ViT (`vit_checkpoints.ViTWeights`), TimeSformer's inflation.

  The spatial layers, patch kernel, [CLS], position table and final norm are the ViT's; each temporal attention
  and its LayerNorm start as copies of the layer's spatial ones and the temporal Dense at zero, so the first
  forward pass equals the image ViT on every frame; the temporal table is zeros.
  """
  if vit.cls is None or vit.pos_embedding is None:
    raise ValueError("TimeSformer starts from a ViT with a [CLS] token and a learned position table; this "
                     "checkpoint lacks " + ("the [CLS]." if vit.cls is None else "the position table."))
  d = vit.hidden_size
  out: dict[str, Any] = {
      "patch_embedding": {"kernel": np.asarray(vit.patch_kernel)[None], "bias": np.asarray(vit.patch_bias)},
      "cls": np.asarray(vit.cls), "pos_embedding": np.asarray(vit.pos_embedding),
      "time_embedding": np.zeros((1, frames, d), np.float32),
      "encoder_norm": {k: np.asarray(v) for k, v in vit.encoder_norm.items()},
  }
  for i, layer in enumerate(vit.layers):
    tree: dict[str, Any] = {}
    for path, value in layer.items():
      node = tree
      *parents, leaf = path.split("/")
      for name in parents:
        node = node.setdefault(name, {})
      node[leaf] = np.asarray(value)
    tree["temporal_attention"] = jax.tree.map(np.copy, tree["attention"])
    tree["ln_temporal"] = jax.tree.map(np.copy, tree["ln_attention"])
    tree["temporal_dense"] = {"kernel": np.zeros((d, d), np.float32), "bias": np.zeros((d,), np.float32)}
    out[f"layer_{i:02d}"] = tree
  return out


def resize_time_table(table: np.ndarray, frames: int, method: str = "zeros") -> np.ndarray:
  """Temporal table [1, T, D] -> [1, frames, D] (Frozen-in-Time's `_inflate_positional_embeds`).

  Fewer frames keep the first ones. More frames: 'zeros' appends zero rows (the default there), 'nearest' and
  'linear' resample the T rows over the new length.
  """
  table = np.asarray(table)
  t = table.shape[1]
  if method not in TIME_RESIZE:
    raise ValueError(f"time table resize method={method!r}; expected one of {TIME_RESIZE}.")
  if frames <= t:
    return table[:, :frames]
  if method == "zeros":
    return np.concatenate([table, np.zeros((1, frames - t, table.shape[2]), table.dtype)], axis=1)
  return np.asarray(jax.image.resize(jnp.asarray(table, jnp.float32), (1, frames, table.shape[2]),
                                     method="nearest" if method == "nearest" else "linear"), table.dtype)
