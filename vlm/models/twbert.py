"""TW-BERT: trajectory-word alignment with a text-conditioned frame selector (Yang et al. 2023; built on ALPRO).

  f_t  text encoder        `bert.BertEncoder`, BERT-base's lower 6 layers ([CLS] first).
  f_v  video encoder       `timesformer.TimeSformer` with a [CLS] per frame and the hierarchical frame selector:
                           after layers `select_after` (1-based; table A2: 6 and 12) it keeps `select_frames`
                           frames (20 -> 14 -> 8 or 32 -> 24 -> 16), scored from each frame's [CLS] and f_t's
                           text [CLS], by the differentiable perturbed Top-K (vlm/nn/frame_selection.py). The
                           video is therefore encoded for a given text.
  pooling                  each kept frame's patches averaged 2 x 2 (`pool_patches`), the video [CLS] the mean of the
                           frames' [CLS] (as released).
  f_c  cross-modal encoder `cross_layers` trajectory-word layers (vlm/nn/trajectory_attention.py: W2P + T2W, or
                           the P2W baseline with `cross_attention='p2w'`) and a final LayerNorm; initialised from
                           BERT layers 6-11 (`from_hf_bert_cross`).
  heads                    `vision_proj` / `text_proj` (D -> embed_dim 256, VTC on the [CLS] features),
                           `vtm_head` (concat(text [CLS], video [CLS]) after f_c -> 2), `mlm_head` (BERT's, tied to
                           f_t's word embeddings).

Stages (the `matching` task's `MatchingModel`, with `video_reads_text`): `encode_text`, `encode_video(video,
text_cls)`, `fuse` (-> [B, L + 1, D]: the text states, then the video [CLS]), `vtm_logits`, `mlm_logits`. Without
a text `encode_video` keeps evenly spaced frames: the text-free embedding a retrieval index holds, re-ranked with
the text by the full model.

Construction: `Model.from_config(config)`: `config.model.variant` is a key of SIZES ('base', 'tiny'), any field
below by its name (e.g. `select_frames=(24, 16)`, `cross_attention='p2w'`); frames and image size come from
config.input (num_frames, crop_size). CLIP's pixel normalisation is an input option (vlm/data/ops_video.py).
"""
from __future__ import annotations

from typing import Any, ClassVar

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
from vlm.nn import logical as ax
from vlm.nn import trajectory_attention
from vlm.nn import transformer

SIZES = {
    "base": dict(video_layers=12, width=768, mlp_dim=3072, heads=12, patch_size=16, text_layers=6,
                 cross_layers=6, vocab_size=30522, select_after=(6, 12), select_frames=(14, 8)),
    "tiny": dict(video_layers=4, width=64, mlp_dim=128, heads=2, patch_size=8, text_layers=2, cross_layers=2,
                 vocab_size=160, select_after=(2, 4), select_frames=(6, 4)),
}


class Model(nn.Module):
  """TW-BERT (module docstring). Fields: the SIZES entries, and

  Attributes:
    width, mlp_dim, heads: shared by f_v, f_t and f_c (768, 3072, 12; the cross-modal layers mix the two).
    frames, image_size: the clips f_v reads (from config.input).
    select_after, select_frames: the frame selector's layers (1-based) and frames kept at each; () for none.
    selection_samples, selection_sigma: the perturbed Top-K's draws (500) and noise scale (0.05), as released.
    stochastic_eval: also select by perturbed Top-K at evaluation (the release's behaviour); else hard Top-K.
    cross_attention: 't2w' (W2P + T2W) | 'p2w'.
    pool_patches: side of the average pooling of each frame's patch grid before f_c (2, as released; 1: none).
    max_text_len: text positions (512).
    embed_dim: VTC space (256).
    drop_path_rate: f_v's stochastic depth (0.1); dropout_rate / attention_dropout_rate: f_t's and f_c's (0.1).
    remat: rematerialise every layer in the backward pass.
  """
  video_layers: int = 12
  width: int = 768
  mlp_dim: int = 3072
  heads: int = 12
  patch_size: int = 16
  frames: int = 8
  image_size: int = 224
  select_after: tuple[int, ...] = (6, 12)
  select_frames: tuple[int, ...] = (14, 8)
  selection_samples: int = 500
  selection_sigma: float = 0.05
  stochastic_eval: bool = False
  text_layers: int = 6
  cross_layers: int = 6
  cross_attention: str = "t2w"
  pool_patches: int = 2
  vocab_size: int = 30522
  max_text_len: int = 512
  embed_dim: int = 256
  drop_path_rate: float = 0.1
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  remat: bool = False
  dtype: Any = jnp.float32

  video_reads_text: ClassVar[bool] = True  # encode_video takes the text [CLS] (the matching task reads this)
  # What the momentum encoder of ALBEF's VTC copies (the matching task's `momentum`).
  momentum_modules: ClassVar[tuple[str, ...]] = ("video_encoder", "vision_proj", "text_encoder", "text_proj")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Model":
    """config.model (variant + fields) and config.input's num_frames / crop_size; errors name the key."""
    inp = config.get("input") or ml_collections.ConfigDict()
    kwargs = common.model_kwargs(cls, config.get("model"), sizes=SIZES, family="twbert",
                                 derived=dict(frames=int(inp.get("num_frames", 8)),
                                              image_size=int(inp.get("crop_size", 224))))
    model = cls(**kwargs)
    model.check()
    return model

  def check(self) -> None:
    """Raises ValueError naming the config key of a setting this model cannot run (before anything is built)."""
    if self.cross_attention not in trajectory_attention.MODES:
      raise ValueError(f"config.model.cross_attention={self.cross_attention!r}; expected one of "
                       f"{trajectory_attention.MODES}.")
    side = self.image_size // self.patch_size
    if self.image_size % self.patch_size:
      raise ValueError(f"config.input.crop_size={self.image_size} is not a multiple of the {self.patch_size}-pixel "
                       "patches.")
    if self.pool_patches < 1 or side % self.pool_patches:
      raise ValueError(f"config.model.pool_patches={self.pool_patches}: the {side} x {side} patch grid is pooled "
                       "in squares of that side; expected a divisor of it.")
    try:
      timesformer.TimeSformer(**self.video_kwargs(), parent=None).check_selection()
    except ValueError as e:
      raise ValueError(f"config.model.select_after / select_frames (input.num_frames={self.frames}): {e}") from e

  def video_kwargs(self) -> dict[str, Any]:
    """The `timesformer.TimeSformer` fields of f_v."""
    return dict(num_layers=self.video_layers, hidden_size=self.width, mlp_dim=self.mlp_dim, num_heads=self.heads,
                patch_size=self.patch_size, frames=self.frames, image_size=self.image_size,
                drop_path_rate=self.drop_path_rate, frame_cls=True, select_after=tuple(self.select_after),
                select_frames=tuple(self.select_frames), selection_samples=self.selection_samples,
                selection_sigma=self.selection_sigma, stochastic_eval=self.stochastic_eval, remat=self.remat,
                dtype=self.dtype)

  @property
  def frames_out(self) -> int:
    """Frames after the selector (what f_c reads)."""
    return self.select_frames[-1] if self.select_frames else self.frames

  def token_counts(self) -> dict[str, int]:
    """Video tokens per encoder stage (frames x (1 + N)) and those f_c reads (the inspect tool)."""
    n = (self.image_size // self.patch_size) ** 2
    out = {"video": self.frames * (1 + n)}
    for layer, kept in zip(self.select_after, self.select_frames):
      out[f"video_after_layer_{layer}"] = kept * (1 + n)
    out["cross_modal_video"] = 1 + self.frames_out * n // self.pool_patches ** 2
    return out

  def setup(self):
    self.video_encoder = timesformer.TimeSformer(**self.video_kwargs())
    self.text_encoder = bert.BertEncoder(
        vocab_size=self.vocab_size, num_layers=self.text_layers, hidden_size=self.width, mlp_dim=self.mlp_dim,
        num_heads=self.heads, max_positions=self.max_text_len, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, remat=self.remat, dtype=self.dtype)
    self.cross_encoder = transformer.Stack(
        trajectory_attention.TrajectoryWordBlock, self.cross_layers,
        dict(num_heads=self.heads, mlp_dim=self.mlp_dim, frames=self.frames_out, mode=self.cross_attention,
             dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype),
        layer_name="layer", remat=self.remat)
    self.cross_norm = transformer.layer_norm(1e-12, self.dtype, None)
    proj = lambda name: nn.Dense(self.embed_dim, dtype=self.dtype, name=name, kernel_init=(
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (ax.EMBED, ax.PROJ))))
    self.vision_proj = proj("vision_proj")
    self.text_proj = proj("text_proj")
    self.vtm_head = nn.Dense(2, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (ax.EMBED, None)))
    self.mlm_head = bert.MlmHead(dtype=self.dtype)

  # ----------------------------------------------------------------------------------------------- stages
  def encode_text(self, text: jax.Array, text_mask: jax.Array, *, train: bool = False
                  ) -> tuple[jax.Array, jax.Array]:
    """ids [B, L] ([CLS] first) and mask -> (f_t hidden states [B, L, D], VTC feature [B, embed_dim])."""
    hidden, _ = self.text_encoder(text, text_mask, train=train)
    return hidden, self.text_proj(hidden[:, 0])

  def video_features(self, video: jax.Array, text_cls: jax.Array | None = None, *, train: bool = False
                     ) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
    """video [B, T, H, W, 3] (+ text [CLS] [B, D]) -> (f_c tokens [B, 1 + T' N', D], VTC feature, f_v aux).

    The tokens are the video [CLS] (mean of the kept frames' [CLS]) and each kept frame's pooled patches,
    frame-major; aux holds 'selected_frames' [B, T'] and 'frame_scores' (vlm/models/timesformer.py).
    """
    x, aux = self.video_encoder(video, text_cls, train=train)
    b, t, d = x.shape[0], aux["frames"], x.shape[-1]
    side = self.image_size // self.patch_size
    frames = x.reshape(b, t, 1 + side * side, d)
    p = self.pool_patches
    grid = frames[:, :, 1:].reshape(b, t, side // p, p, side // p, p, d).mean(axis=(3, 5))
    tokens = jnp.concatenate([aux["pooled"][:, None], grid.reshape(b, -1, d)], axis=1)
    return tokens, self.vision_proj(aux["pooled"]), aux

  def encode_video(self, video: jax.Array, text_cls: jax.Array | None = None, *, train: bool = False
                   ) -> tuple[jax.Array, jax.Array]:
    """-> (f_c tokens, VTC feature [B, embed_dim]): `video_features` without its aux."""
    tokens, feat, _ = self.video_features(video, text_cls, train=train)
    return tokens, feat

  def fuse(self, text_hidden: jax.Array, text_mask: jax.Array, video_tokens: jax.Array, *, train: bool = False,
           with_aux: bool = False) -> jax.Array | tuple[jax.Array, dict[str, Any]]:
    """f_c on row-paired text states [B, L, D] and video tokens -> [B, L + 1, D] (text, then the video [CLS]).

    `with_aux` also returns the layers' attention maps ('layers': each {'frame_weights' [B, H, L, T'],
    'word_patch_attention' [B, H, T', L, N']}; vlm/nn/trajectory_attention.py).
    """
    text, aux = self.cross_encoder(text_hidden, {"video": video_tokens}, {"text_mask": text_mask}, train=train)
    fused = jnp.concatenate([self.cross_norm(text), self.cross_norm(aux["video"][:, :1])], axis=1)
    return (fused, aux) if with_aux else fused

  def vtm_logits(self, fused: jax.Array) -> jax.Array:
    """[B, L + 1, D] -> [B, 2] (not matched, matched) from concat(text [CLS], video [CLS]) (as released)."""
    return self.vtm_head(jnp.concatenate([fused[:, 0], fused[:, -1]], axis=-1)).astype(jnp.float32)

  def mlm_logits(self, fused: jax.Array) -> jax.Array:
    """[B, L + 1, D] -> [B, L, V] word logits at the text positions (head tied to f_t's word embeddings)."""
    table = nn.meta.unbox(self.text_encoder.variables["params"]["word_embeddings"])
    return self.mlm_head(fused[:, :-1], table)

  def __call__(self, video: jax.Array, text: jax.Array, text_mask: jax.Array, *, train: bool = False
               ) -> dict[str, jax.Array]:
    """Every stage once on matched pairs (creates all parameters; used by `init`)."""
    hidden, text_feat = self.encode_text(text, text_mask, train=train)
    tokens, video_feat = self.encode_video(video, hidden[:, 0], train=train)
    fused = self.fuse(hidden, text_mask, tokens, train=train)
    return {"video_feat": video_feat, "text_feat": text_feat, "vtm_logits": self.vtm_logits(fused),
            "mlm_logits": self.mlm_logits(fused)}


# ================================================================================================== loading
def from_hf_bert_cross(flat: dict[str, Any], num_heads: int, *, first_layer: int, num_layers: int
                       ) -> dict[str, Any]:
  """f_c params from HF BERT layers [first_layer, first_layer + num_layers) (TW-BERT: 6-11), as released:
  W2P's and the video update's q / k / v and T2W's q / k / v all start from the layer's self-attention q / k / v,
  both output projections from its output dense, the trajectory norm and the MLP's pre-norm from the attention
  output LayerNorm, the attention pre-norm from the layer's output LayerNorm; the final norm is the last layer's
  output LayerNorm."""
  layers = bert.from_hf_bert(flat, num_heads, first_layer=first_layer, num_layers=num_layers, embeddings=False)
  out: dict[str, Any] = {}
  for j in range(num_layers):
    src = layers[f"layer_{j:02d}"]
    att = src["attention"]
    out[f"layer_{j:02d}"] = {
        "attention": {**{name: att[name] for name in ("query", "key", "value")},
                      **{f"word_{name}": att[name] for name in ("query", "key", "value")},
                      "out": att["out"], "trajectory_out": att["out"], "trajectory_norm": src["ln_attention"]},
        "attention_norm": src["ln_mlp"], "mlp_norm": src["ln_attention"], "mlp": src["mlp"]}
  return {"cross_encoder": out, "cross_norm": layers[f"layer_{num_layers - 1:02d}"]["ln_mlp"]}


def load(params: dict[str, Any], restored: dict[str, Any] | None, init: Any, model: Model) -> dict[str, Any]:
  """TW-BERT's part of `config.init` (vlm/train/init.py): external weights for a run from scratch.

  `config.init.options`:
    video_vit: an image ViT (big_vision .npz or HF ViT .safetensors; the release starts from ViT-B/16) inflated
      to f_v (`timesformer.from_vit`; the frame selectors stay fresh);
    bert: an HF `BertModel` / `BertForMaskedLM` .safetensors (config.json beside it): layers 0..text_layers-1
      fill f_t, the next cross_layers fill f_c (`from_hf_bert_cross`), the MLM head when the file has one;
    time_resize ['zeros']: how a temporal table of another frame count is resized.
  A checkpoint (`config.init.path`) loads as it is (its temporal table resized when its frame count differs).
  Anything that does not fit is an error naming the parameter.
  """
  options = {k: v for k, v in dict(init.get("options") or {}).items() if v is not None}
  loaded: dict[str, Any] = {}

  def put(tree: Any, at: str) -> None:
    loaded.update({f"{at}/{k}": np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()})

  if options.get("video_vit"):
    put(timesformer.from_vit(vit_checkpoints.read_vit(options["video_vit"]), model.frames), "video_encoder")
  if options.get("bert"):
    path = options["bert"]
    hf = hf_weights.hf_config(path)
    if hf is None:
      raise ValueError(f"config.init.options.bert={path!r}: no config.json beside the weights (it gives the heads).")
    if int(hf["num_attention_heads"]) != model.heads:
      raise ValueError(f"config.init.options.bert={path!r} has {hf['num_attention_heads']} heads; the model has "
                       f"{model.heads}.")
    flat = hf_weights.read_weights(path)
    put(bert.from_hf_bert(flat, model.heads, num_layers=model.text_layers), "text_encoder")
    put(from_hf_bert_cross(flat, model.heads, first_layer=model.text_layers, num_layers=model.cross_layers), "")
    put(bert.mlm_head_from_hf(flat), "mlm_head")
  loaded = {k.lstrip("/"): v for k, v in loaded.items()}
  frames = model.frames
  source = {**dict(restored or {}), **loaded}
  out, problems = {}, []
  for path, src in source.items():
    if path not in params:
      problems.append(f"{path}: not a parameter of this model")
      continue
    if path == "video_encoder/time_embedding" and np.shape(src)[1] != frames:
      src = timesformer.resize_time_table(src, frames, str(options.get("time_resize", "zeros")))
    if np.shape(src) != np.shape(params[path]):
      problems.append(f"{path}: weights {np.shape(src)} vs model {np.shape(params[path])}")
      continue
    out[path] = src
  if problems:
    what = "Pretrained weights (config.init.options)" if loaded else "Checkpoint"
    raise ValueError(f"{what} do not fit the TW-BERT model:\n  " + "\n  ".join(problems))
  return out if (restored is not None or loaded) else {}
