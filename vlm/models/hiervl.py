"""HierVL: a dual encoder whose clip embeddings are also aggregated into episode embeddings (Ashutosh et al. 2023).

  f_v  video encoder  `timesformer.TimeSformer` (divided space-time ViT-B/16, Frozen-in-Time's), [CLS] output.
  f_n  text encoder   DistilBERT (`bert.BertEncoder` with type_vocab_size=0, 6 layers), [CLS] output.
  heads               to the joint space (embed_dim 256, as released "minimal"): video Linear, text ReLU -> Linear;
                      similarity is the cosine of the two.
  Agg                 `Aggregator`: N clip embeddings (or N narration embeddings) [B, N, E] -> one [B, E]. ONE
                      aggregator, its weights shared by the clip-video and the narration-text inputs, as released.

Clip level (child step): EgoNCE between clips and their narrations; summary level (parent step): EgoNCE between
Agg(clip videos) and the summary text plus EgoNCE between Agg(narrations) and the summary text
(vlm/losses/egonce.py).

Construction: `Model.from_config(config)`: `config.model.variant` is a key of SIZES ('base', 'tiny'), any field
below by its name (e.g. `aggregator='average'`, `aggregator_positions=16`, `video_layers=4`); frames and the
image size come from config.input (num_frames [4], crop_size [224]). `build_backbone(config)` is f_v alone (the
[CLS] feature), for classification.

Aggregator positions: the release hard-codes a learned table of 16 positions; here its length is
`aggregator_positions`, and an episode of fewer clips is padded and masked (`Aggregator`'s `mask`).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.models import bert
from vlm.models import common
from vlm.models import hf_weights
from vlm.models import timesformer
from vlm.models import vit_checkpoints
from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax
from vlm.nn import transformer

AGGREGATORS = ("self_attention", "average")

SIZES = {
    "base": dict(video_layers=12, video_width=768, video_mlp_dim=3072, video_heads=12, patch_size=16,
                 text_layers=6, text_width=768, text_mlp_dim=3072, text_heads=12, vocab_size=30522,
                 embed_dim=256, aggregator_layers=6, aggregator_heads=8),
    "tiny": dict(video_layers=2, video_width=64, video_mlp_dim=128, video_heads=2, patch_size=8,
                 text_layers=2, text_width=64, text_mlp_dim=128, text_heads=2, vocab_size=160,
                 embed_dim=64, aggregator_layers=2, aggregator_heads=4),
}


class Aggregator(nn.Module):
  """[B, N, E] embeddings (+ mask [B, N], nonzero = a real clip) -> [B, E] (HierVL's Agg).

  'self_attention' (as released, a small timm ViT): a learned [CLS] (no position) before the N inputs, each with
  a learned position of a table of `num_positions`, `num_layers` pre-norm layers (heads, MLP x4, no q/k/v bias,
  stochastic depth rising to `drop_path_rate`), a final LayerNorm, the [CLS] out. 'average': the mean of the
  real inputs.

  Attributes:
    kind: 'self_attention' | 'average'.
    num_layers, num_heads: the self-attention aggregator's depth (6) and heads (8).
    num_positions: length of the position table (the release's 16); more inputs than this is an error.
    drop_path_rate: 0.1.
    dtype: computation dtype.
  """
  kind: str = "self_attention"
  num_layers: int = 6
  num_heads: int = 8
  num_positions: int = 16
  drop_path_rate: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    b, n, e = x.shape
    valid = jnp.ones((b, n), bool) if mask is None else mask.astype(bool)
    if self.kind == "average":
      w = valid.astype(x.dtype)[..., None]
      return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    if self.kind != "self_attention":
      raise ValueError(f"model.aggregator={self.kind!r}; expected one of {AGGREGATORS}.")
    if n > self.num_positions:
      raise ValueError(f"{n} clips per episode for an aggregator of {self.num_positions} positions: set "
                       "model.aggregator_positions (the release uses 16) or input.group.size.")
    param = lambda name, shape: self.param(name, nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, ax.EMBED)), shape, jnp.float32)
    pos = param("pos_embedding", (1, self.num_positions, e))
    cls = param("cls", (1, 1, e))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, e)).astype(x.dtype), x + pos[:, :n].astype(x.dtype)], 1)
    key_mask = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
    block_kwargs = dict(num_heads=self.num_heads, mlp_dim=4 * e, dropout_rate=0.0, attention_dropout_rate=0.0,
                        qkv_bias=False, drop_path_rates=dropout_lib.linear_rates(self.drop_path_rate,
                                                                                 self.num_layers),
                        dtype=self.dtype)
    x, _ = transformer.Stack(transformer.EncoderBlock, self.num_layers, block_kwargs, layer_name="layer",
                             name="encoder")(x, shared={"mask": key_mask}, train=train)
    return transformer.layer_norm(1e-6, self.dtype, "encoder_norm")(x)[:, 0]


class Model(nn.Module):
  """HierVL (module docstring). Fields: the SIZES entries, and

  Attributes:
    frames, image_size: the clips f_v reads (from config.input).
    max_text_len: text positions (DistilBERT: 512).
    aggregator: 'self_attention' | 'average'; aggregator_positions: 16; aggregator_drop_path_rate: 0.1.
    drop_path_rate: f_v's stochastic depth (0.1); dropout_rate: f_n's dropout (0.1).
    attention: f_v's spatial attention kernel (vlm/nn/kernels/).
    remat, scan: f_v's and f_n's layer stacks.
  """
  video_layers: int = 12
  video_width: int = 768
  video_mlp_dim: int = 3072
  video_heads: int = 12
  patch_size: int = 16
  frames: int = 4
  image_size: int = 224
  text_layers: int = 6
  text_width: int = 768
  text_mlp_dim: int = 3072
  text_heads: int = 12
  vocab_size: int = 30522
  max_text_len: int = 512
  embed_dim: int = 256
  aggregator: str = "self_attention"
  aggregator_layers: int = 6
  aggregator_heads: int = 8
  aggregator_positions: int = 16
  aggregator_drop_path_rate: float = 0.1
  drop_path_rate: float = 0.1
  dropout_rate: float = 0.1
  attention: str = "dense"
  remat: bool = False
  scan: bool = False
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Model":
    """config.model (variant + fields) and config.input's num_frames / crop_size; errors name the key."""
    inp = config.get("input") or ml_collections.ConfigDict()
    kwargs = common.model_kwargs(cls, config.get("model"), sizes=SIZES, family="hiervl",
                                 derived=dict(frames=int(inp.get("num_frames", 4)),
                                              image_size=int(inp.get("crop_size", 224))))
    if kwargs.get("aggregator", "self_attention") not in AGGREGATORS:
      raise ValueError(f"config.model.aggregator={kwargs['aggregator']!r}; expected one of {AGGREGATORS}.")
    patch = kwargs.get("patch_size", 16)
    if kwargs["image_size"] % patch:
      raise ValueError(f"config.input.crop_size={kwargs['image_size']} is not a multiple of the {patch}-pixel "
                       "patches.")
    return cls(**kwargs)

  def setup(self):
    self.video_encoder = timesformer.TimeSformer(**video_kwargs(self))
    self.text_encoder = bert.BertEncoder(
        vocab_size=self.vocab_size, num_layers=self.text_layers, hidden_size=self.text_width,
        mlp_dim=self.text_mlp_dim, num_heads=self.text_heads, max_positions=self.max_text_len, type_vocab_size=0,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.dropout_rate, remat=self.remat,
        scan=self.scan, dtype=self.dtype)
    dense = lambda name: nn.Dense(self.embed_dim, dtype=self.dtype, name=name, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (ax.EMBED, ax.PROJ)))
    self.video_proj = dense("video_proj")
    self.text_proj = dense("text_proj")
    self.aggregate_fn = Aggregator(kind=self.aggregator, num_layers=self.aggregator_layers,
                                   num_heads=self.aggregator_heads, num_positions=self.aggregator_positions,
                                   drop_path_rate=self.aggregator_drop_path_rate, dtype=self.dtype,
                                   name="aggregator")

  def embed_video(self, video: jax.Array, *, train: bool = False) -> jax.Array:
    """video [B, T, H, W, 3] -> [B, E] (not normalised; the losses and evaluators take the cosine)."""
    _, aux = self.video_encoder(video, train=train)
    return self.video_proj(aux["pooled"]).astype(jnp.float32)

  def embed_text(self, text: jax.Array, text_mask: jax.Array, *, train: bool = False) -> jax.Array:
    """ids / mask [B, L] ([CLS] first) -> [B, E]: ReLU then Linear on the [CLS] state (as released)."""
    hidden, _ = self.text_encoder(text, text_mask, train=train)
    return self.text_proj(nn.relu(hidden[:, 0])).astype(jnp.float32)

  def aggregate(self, embeddings: jax.Array, mask: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """[B, N, E] clip or narration embeddings (+ [B, N] mask) -> [B, E]: the one shared aggregator."""
    return self.aggregate_fn(embeddings, mask, train=train).astype(jnp.float32)

  def __call__(self, video: jax.Array, text: jax.Array, text_mask: jax.Array, *, train: bool = False
               ) -> dict[str, jax.Array]:
    """Every part once (creates all parameters; used by `init`): video [B, T, H, W, 3], text [B, L]."""
    v = self.embed_video(video, train=train)
    t = self.embed_text(text, text_mask, train=train)
    return {"video": v, "text": t, "episode": self.aggregate(jnp.stack([v, t], axis=1), train=train)}


def video_kwargs(model: Model) -> dict[str, Any]:
  """The `timesformer.TimeSformer` fields of a HierVL `Model` (f_v)."""
  return dict(num_layers=model.video_layers, hidden_size=model.video_width, mlp_dim=model.video_mlp_dim,
              num_heads=model.video_heads, patch_size=model.patch_size, frames=model.frames,
              image_size=model.image_size, drop_path_rate=model.drop_path_rate, attention=model.attention,
              remat=model.remat, scan=model.scan, dtype=model.dtype)


class VideoBackbone(nn.Module):
  """f_v alone, the classification backbone: video -> ([CLS] feature [B, D], aux); params under video_encoder/.

  Attributes:
    video: `timesformer.TimeSformer` fields (`video_kwargs` of the HierVL model the config describes).
  """
  video: Mapping[str, Any]

  def setup(self):
    self.video_encoder = timesformer.TimeSformer(**dict(self.video))

  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    _, aux = self.video_encoder(video, train=train)
    return aux["pooled"], aux


def build_backbone(config: ml_collections.ConfigDict) -> VideoBackbone:
  """The classification backbone for config.model.name = 'hiervl' (vlm/tasks/classification.py)."""
  return VideoBackbone(video=video_kwargs(Model.from_config(config)))


# ================================================================================================= loading
def load(params: dict[str, Any], restored: dict[str, Any] | None, init: Any, model: Any) -> dict[str, Any]:
  """HierVL's part of `config.init` (vlm/train/init.py): external weights for a run from scratch.

  `config.init.options`:
    video_vit: an image ViT (big_vision / vision_transformer .npz or HF ViT .safetensors), inflated to f_v
      (`timesformer.from_vit`; Frozen-in-Time starts from ViT-B/16 IN-21k);
    video_timesformer: an HF `TimesformerModel` .safetensors (config.json beside it) for f_v;
    time_resize ['zeros']: how a temporal table of another frame count is resized ('zeros' | 'nearest' |
      'linear', Frozen-in-Time's options);
    text_distilbert: an HF `DistilBertModel` .safetensors (config.json beside it) for f_n.
  Under a task that wraps the model (classification's `backbone/`, anticipation's `model/`) the options fill the
  wrapped encoders.
  A checkpoint (`config.init.path`) loads as it is, its temporal table resized the same way when its frame count
  differs. Anything that does not fit is an error naming the parameter.
  """
  options = {k: v for k, v in dict(init.get("options") or {}).items() if v is not None}
  method = str(options.get("time_resize", "zeros"))
  table = next(p for p in params if p.endswith("video_encoder/time_embedding"))
  prefix = table[:-len("video_encoder/time_embedding")]  # '', 'backbone/' or 'model/'
  frames = int(np.shape(params[table])[1])
  def heads(path: str) -> int | None:  # HF configs: num_attention_heads (TimeSformer), n_heads (DistilBERT)
    hf = hf_weights.hf_config(path)
    return None if hf is None else int(hf.get("num_attention_heads", hf.get("n_heads")))

  loaded: dict[str, Any] = {}

  def put(tree: Any, at: str) -> None:
    for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items():
      loaded[f"{at}/{k}"] = np.asarray(v)

  if options.get("video_vit") and options.get("video_timesformer"):
    raise ValueError("config.init.options.video_vit and .video_timesformer both set: choose one start for f_v.")
  if options.get("video_vit"):
    put(timesformer.from_vit(vit_checkpoints.read_vit(options["video_vit"]), frames), prefix + "video_encoder")
  if options.get("video_timesformer"):
    path = options["video_timesformer"]
    if heads(path) is None:
      raise ValueError(f"config.init.options.video_timesformer={path!r}: no config.json beside the weights.")
    put(timesformer.from_hf_timesformer(hf_weights.read_weights(path), heads(path)), prefix + "video_encoder")
  if options.get("text_distilbert"):
    if not any(p.startswith(prefix + "text_encoder/") for p in params):
      raise ValueError("config.init.options.text_distilbert: the HierVL video backbone has no text encoder.")
    path = options["text_distilbert"]
    if heads(path) is None:
      raise ValueError(f"config.init.options.text_distilbert={path!r}: no config.json beside the weights.")
    put(bert.from_hf_distilbert(hf_weights.read_weights(path), heads(path)), prefix + "text_encoder")
  source = dict(restored or {})
  source.update(loaded)
  out, problems = {}, []
  for path, src in source.items():
    if path not in params:
      problems.append(f"{path}: not a parameter of this model")
      continue
    if path.endswith("video_encoder/time_embedding") and np.shape(src)[1] != frames:
      src = timesformer.resize_time_table(src, frames, method)
    if np.shape(src) != np.shape(params[path]):
      problems.append(f"{path}: weights {np.shape(src)} vs model {np.shape(params[path])}")
      continue
    out[path] = src
  if problems and loaded:
    raise ValueError("Pretrained weights (config.init.options) do not fit the HierVL model:\n  "
                     + "\n  ".join(problems))
  if problems:
    raise ValueError("Checkpoint does not fit the HierVL model:\n  " + "\n  ".join(problems))
  return out if (restored is not None or loaded) else {}
