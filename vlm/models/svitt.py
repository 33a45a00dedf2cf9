"""SViTT: sparse video-text transformer (Singularity layout with edge and node sparsity; supplement A.1, A.3).

Four encoders and three heads, each a library module:

  f_v  video encoder       `VideoBeit` (vlm/models/beit.py): [CLS] + T x 196 tokens, 3-D relative position bias,
                           block-sparse attention (vlm/nn/kernels/block_sparse.py) and visual token pruning (q_v).
  f_t  text encoder        `BertEncoder` lower layers (9 of BERT-base's 12).
  f_m  multimodal encoder  `BertEncoder` upper layers (3) with cross-attention to the video tokens, and
                           multimodal token pruning by the text [CLS]'s cross-attention (q_m).
  (QA) answer decoder      a causal `BertEncoder` with cross-attention to f_m's output and its own LM head
                           (Singularity's BertLMHeadModel; off unless `decoder_layers` > 0).

  heads: `vision_proj` / `text_proj` (D -> 256, VTC on the [CLS] / pooled features, equations 12-13),
         `vtm_head` (D -> 2 on f_m's [CLS], VTM, equation 14), `mlm_head` (BERT's transform + the word
         embeddings transposed, MLM, equation 15).

Video features for the fusion are f_v's tokens after a LayerNorm (`vision_norm`); the VTC video feature is f_v's
pooled output (BEiT mean pooling), as in the release. Each method below is one stage, so the task can run f_m on
any pairing of texts and videos (VTM hard negatives, retrieval re-ranking) without re-encoding either side.

`Model.from_config(config)` is the one construction path (vlm/tasks/matching.py, vlm/tasks/answer_decoding.py);
`build_backbone(config)` is its video encoder alone, for classification (vlm/tasks/classification.py).
config.model keys (defaults in brackets; an unknown key is an error naming it):
  name ['svitt'].
  size ['base']: a key of SIZES: 'base' (BEiT-B/16 video encoder; BERT-base split 9 text + 3 multimodal layers)
    or 'tiny' (CPU: 4 video layers of width 64, patch 8; 2 + 2 BERT layers of width 64).
  vision_layers / text_layers / fusion_layers [None: the size's]: depth overrides (e.g. a shallower test model).
  patch_size [None: the size's, 16 / tiny 8]: frame patch side in pixels (an HF BEiT init needs its own).
  vocab_size [None: the size's, 30522 base / 160 tiny]: BERT's WordPiece vocabulary; the tiny run uses the
    built-in dataset's 154 words.
  attention ['dense']: 'dense' | 'block_sparse' (edge sparsity, in the video encoder).
  block_size [56], local_blocks [1], random_blocks [3]: (G, K_l, K_r) of table A4; block_eval_seed [0]:
    the fixed evaluation patterns (each layer its own, from (seed, layer): vlm/nn/kernels/block_sparse.py).
  token_order ['raster']: 'morton' | 'hilbert' (table A7).
  visual_keep_rate [1.0]: q_v; visual_prune_after [(4, 7, 10)]: 1-based BEiT layers (the release's [3, 6, 9]).
  multimodal_keep_rate [1.0]: q_m (field `fusion_keep_rate`); multimodal_prune_after [(1,)]: 1-based
    multimodal layers (field `fusion_prune_after`).
  absolute_positions [False]: BEiT-B/16 (pt22k-ft22k) uses relative biases only.
  drop_path_rate [0.1]; dropout_rate [0.1]; attention_dropout_rate [0.1] (BERT).
  embed_dim [256]; decoder_layers [0] (the QA task sets 3).
  dtype ['float32'].
Derived from config.input (not config.model keys): the video encoder's frames (num_frames [4]) and image size
(crop_size [224], a multiple of the patch side).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.models import beit
from vlm.models import bert
from vlm.models import common
from vlm.models import hf_weights
from vlm.nn import video_positions
from vlm.nn import logical as ax
from vlm.nn import token_pruning
from vlm.nn import transformer
from vlm.nn.kernels import block_sparse

# config.model.size -> `vision` (VideoBeit fields) and the BERT fields of `Model`.
SIZES = {
    "base": dict(vision=dict(num_layers=12, hidden_size=768, mlp_dim=3072, num_heads=12, patch_size=16),
                 text_layers=9, fusion_layers=3, hidden_size=768, mlp_dim=3072, num_heads=12, vocab_size=30522),
    "tiny": dict(vision=dict(num_layers=4, hidden_size=64, mlp_dim=128, num_heads=2, patch_size=8),
                 text_layers=2, fusion_layers=2, hidden_size=64, mlp_dim=128, num_heads=2, vocab_size=160),
}


def _ints(x) -> tuple[int, ...]:
  return tuple(int(v) for v in (x or ()))


# SViTT's video encoder settings common to every size (the config.model keys below override the last five).
VISION_DEFAULTS = dict(mean_pooling=True, layer_scale_init=0.1, absolute_positions=False, drop_path_rate=0.1,
                       prune_after=(4, 7, 10), keep_rate=1.0, token_order="raster")
# config.model key -> (VideoBeit field in `Model.vision`, type); None (a placeholder) keeps the default.
VISION_KEYS = {"vision_layers": ("num_layers", int), "patch_size": ("patch_size", int),
               "attention": ("attention", str), "absolute_positions": ("absolute_positions", bool),
               "drop_path_rate": ("drop_path_rate", float), "visual_prune_after": ("prune_after", _ints),
               "visual_keep_rate": ("keep_rate", float), "token_order": ("token_order", str)}
# config.model key -> (block-sparse attention argument, default): `Model.vision['attention_kwargs']`.
BLOCK_KEYS = {"block_size": ("block_size", 56), "local_blocks": ("local_blocks", 1),
              "random_blocks": ("random_blocks", 3), "block_eval_seed": ("eval_seed", 0)}
# config.model key -> (`Model` field, type); the field's default unless set.
MODEL_KEYS = {"vocab_size": ("vocab_size", int), "text_layers": ("text_layers", int),
              "fusion_layers": ("fusion_layers", int), "decoder_layers": ("decoder_layers", int),
              "multimodal_prune_after": ("fusion_prune_after", _ints),
              "multimodal_keep_rate": ("fusion_keep_rate", float), "embed_dim": ("embed_dim", int),
              "dropout_rate": ("dropout_rate", float), "attention_dropout_rate": ("attention_dropout_rate", float),
              "dtype": ("dtype", jnp.dtype)}
SELECT_KEYS = ("name", "size")


class Model(nn.Module):
  """SViTT (see the module docstring).

  Attributes:
    vision: keyword arguments of `VideoBeit` (layers, width, heads, frames, image_size, attention,
      attention_kwargs, prune_after, keep_rate, ...).
    vocab_size: text vocabulary (BERT: 30522).
    text_layers: f_t layers (9); fusion_layers: f_m layers (3); decoder_layers: QA answer decoder (0 = none).
    hidden_size, mlp_dim, num_heads, max_positions: BERT sizes (base: 768, 3072, 12, 512).
    fusion_prune_after: 1-based f_m layers after which the video tokens are pruned (the release's (1,)).
    fusion_keep_rate: q_m (table A4: 0.1 in pre-training and retrieval, 0.5 for QA).
    embed_dim: VTC space (256).
    dropout_rate, attention_dropout_rate: BERT dropout (0.1).
  """
  vision: Mapping[str, Any]
  vocab_size: int = 30522
  text_layers: int = 9
  fusion_layers: int = 3
  decoder_layers: int = 0
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  max_positions: int = 512
  fusion_prune_after: tuple[int, ...] = (1,)
  fusion_keep_rate: float = 1.0
  embed_dim: int = 256
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Model":
    """The model of `config.model` (keys in the module docstring), frames and image size from `config.input`.

    Raises:
      ValueError: naming an unknown size or config.model key, a crop size that is not a multiple of the patch,
        a block-sparse pattern with too few blocks or a keep rate outside (0, 1], before anything is built.
    """
    m = common.plain(config.get("model") or {})
    inp = config.get("input") or ml_collections.ConfigDict()
    unknown = sorted(set(m) - set(SELECT_KEYS) - set(VISION_KEYS) - set(BLOCK_KEYS) - set(MODEL_KEYS))
    if unknown:
      raise ValueError(f"config.model.{unknown[0]}: not an SViTT model key; keys: "
                       f"{', '.join((*SELECT_KEYS, *VISION_KEYS, *BLOCK_KEYS, *MODEL_KEYS))}.")
    size = str(m.get("size") or "base")
    if size not in SIZES:
      raise ValueError(f"model.size={size!r}; expected one of {sorted(SIZES)}.")
    kwargs = {k: v for k, v in SIZES[size].items() if k != "vision"}
    vision = {**SIZES[size]["vision"], **VISION_DEFAULTS, "attention": "dense"}
    for key, (field, kind) in VISION_KEYS.items():
      if m.get(key) is not None:
        vision[field] = kind(m[key])
    for key, (field, kind) in MODEL_KEYS.items():
      if m.get(key) is not None:
        kwargs[field] = kind(m[key])
    kwargs.setdefault("dtype", jnp.dtype(jnp.float32))
    frames, crop = int(inp.get("num_frames", 4)), int(inp.get("crop_size", 224))
    patch = vision["patch_size"]
    if crop % patch:
      raise ValueError(f"input.crop_size={crop} is not a multiple of the {patch}-pixel patches.")
    attention_kwargs = None
    if vision["attention"] == "block_sparse":
      attention_kwargs = {field: int(m[key]) if m.get(key) is not None else default
                          for key, (field, default) in BLOCK_KEYS.items()}
      g, kl, kr = (attention_kwargs[k] for k in ("block_size", "local_blocks", "random_blocks"))
      block_sparse.check_pattern_args(block_sparse.num_blocks(frames * (crop // patch) ** 2, g), kl, kr)
      attention_kwargs["num_global"] = 1
    elif vision["attention"] != "dense":
      raise ValueError(f"model.attention={vision['attention']!r}; expected 'dense' or 'block_sparse'.")
    token_pruning.keep_count(1, vision["keep_rate"])  # q in (0, 1], checked before anything is built
    token_pruning.keep_count(1, kwargs.get("fusion_keep_rate", 1.0))
    vision.update(frames=frames, image_size=crop, attention_kwargs=attention_kwargs)
    return cls(vision=vision, **kwargs)

  def setup(self):
    self.video_encoder = beit.VideoBeit(**dict(self.vision), dtype=self.dtype)
    self.vision_norm = transformer.layer_norm(1e-12, self.dtype, None)
    text = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, mlp_dim=self.mlp_dim,
                num_heads=self.num_heads, max_positions=self.max_positions, dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype)
    self.text_encoder = bert.BertEncoder(num_layers=self.text_layers, **text)
    self.fusion_encoder = bert.BertEncoder(num_layers=self.fusion_layers, cross_attention_from=0, embed=False,
                                           context_prune_after=tuple(self.fusion_prune_after),
                                           context_keep_rate=self.fusion_keep_rate, **text)
    proj = lambda name: nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (ax.EMBED, ax.PROJ)), name=name)
    self.vision_proj = proj("vision_proj")
    self.text_proj = proj("text_proj")
    self.vtm_head = nn.Dense(2, dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (ax.EMBED, None)))
    self.mlm_head = bert.MlmHead(dtype=self.dtype)
    if self.decoder_layers:
      self.answer_decoder = bert.BertEncoder(num_layers=self.decoder_layers, cross_attention_from=0, causal=True,
                                             **text)
      self.answer_head = bert.MlmHead(dtype=self.dtype)

  # ----------------------------------------------------------------------------------------------- stages
  def encode_video(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """video [B, T, H, W, 3] -> (fusion tokens [B, 1 + N', Dv] after pruning, VTC feature [B, embed_dim])."""
    tokens, aux = self.video_encoder(video, train=train)
    return self.vision_norm(tokens), self.vision_proj(aux["pooled"])

  def encode_text(self, text: jax.Array, text_mask: jax.Array, *, train: bool = False
                  ) -> tuple[jax.Array, jax.Array]:
    """ids [B, L] ([CLS] first) and mask -> (f_t hidden states [B, L, D], VTC feature [B, embed_dim])."""
    hidden, _ = self.text_encoder(text, text_mask, train=train)
    return hidden, self.text_proj(hidden[:, 0])

  def fuse(self, text_hidden: jax.Array, text_mask: jax.Array, video_tokens: jax.Array, *,
           train: bool = False) -> jax.Array:
    """f_m: text hidden states cross-attending to video tokens (pruned to q_m) -> [B, L, D]."""
    fused, _ = self.fusion_encoder(text_hidden, text_mask, context=video_tokens, train=train)
    return fused

  def vtm_logits(self, fused: jax.Array) -> jax.Array:
    """[B, L, D] f_m output -> [B, 2] (not matched, matched) logits from the [CLS]."""
    return self.vtm_head(fused[:, 0]).astype(jnp.float32)

  def mlm_logits(self, fused: jax.Array) -> jax.Array:
    """[B, L, D] -> [B, L, V] word logits (head tied to the text encoder's word embeddings)."""
    table = nn.meta.unbox(self.text_encoder.variables["params"]["word_embeddings"])
    return self.mlm_head(fused, table)

  def answer_logits(self, answer: jax.Array, answer_mask: jax.Array, fused: jax.Array, fused_mask: jax.Array, *,
                    train: bool = False) -> jax.Array:
    """Teacher-forced answer decoder: answer ids [B, La] ([CLS] a_1 .. [SEP]) -> next-token logits [B, La, V]."""
    if not self.decoder_layers:
      raise ValueError("This SViTT model has no answer decoder: set model.decoder_layers (QA: 3).")
    hidden, _ = self.answer_decoder(answer, answer_mask, context=fused, context_mask=fused_mask, train=train)
    table = nn.meta.unbox(self.answer_decoder.variables["params"]["word_embeddings"])
    return self.answer_head(hidden, table)

  # -------------------------------------------------------------------------------------------------- tools
  def token_counts(self) -> dict[str, int]:
    """Video tokens entering the encoder and after each visual pruning (the inspect tool)."""
    v = self.vision
    n = v["frames"] * (v["image_size"] // v["patch_size"]) ** 2
    out = {"video": n}
    if v["keep_rate"] < 1.0:
      for layer in v["prune_after"]:
        n = math.ceil(v["keep_rate"] * n - 1e-9)
        out[f"video_after_layer_{layer}"] = n
    return out

  def attention_edges(self, text_len: int) -> dict[str, float]:
    """Attention-graph size and edge sparsity of this configuration (equations 1-3; `svitt_edges`)."""
    v = self.vision
    sparse = v["attention"] == "block_sparse"
    patches = (v["image_size"] // v["patch_size"]) ** 2
    n = v["frames"] * patches
    bs = v["attention_kwargs"] or {}
    # Dense attention is one block of all tokens: every query meets N keys.
    g, kl, kr = ((bs["block_size"], bs["local_blocks"], bs["random_blocks"]) if sparse else (n, 1, 0))
    return block_sparse.svitt_edges(
        v["frames"], patches_per_frame=patches, visual_layers=v["num_layers"], multimodal_layers=self.fusion_layers,
        text_len=text_len, local_blocks=kl, random_blocks=kr, block_size=g, visual_keep=v["keep_rate"],
        visual_prune_after=v["prune_after"], multimodal_keep=self.fusion_keep_rate,
        multimodal_prune_after=self.fusion_prune_after)

  def __call__(self, video: jax.Array, text: jax.Array, text_mask: jax.Array, answer: jax.Array | None = None,
               answer_mask: jax.Array | None = None, *, train: bool = False) -> dict[str, jax.Array]:
    """Every stage once on matched pairs (creates all parameters; used by `init`)."""
    tokens, video_feat = self.encode_video(video, train=train)
    hidden, text_feat = self.encode_text(text, text_mask, train=train)
    fused = self.fuse(hidden, text_mask, tokens, train=train)
    out = {"video_feat": video_feat, "text_feat": text_feat, "vtm_logits": self.vtm_logits(fused),
           "mlm_logits": self.mlm_logits(fused)}
    if self.decoder_layers and answer is not None:
      out["answer_logits"] = self.answer_logits(answer, answer_mask, fused, text_mask, train=train)
    return out


class VideoBackbone(nn.Module):
  """SViTT's video encoder f_v alone: the classification backbone (`build_backbone`).

  Its parameters sit under `video_encoder/`, as in `Model`, so a pre-training checkpoint's video encoder loads
  with `config.init.assignment_map = ((r"backbone/(.*)", r"\\1"), (r"head_.*", None))`.

  Attributes:
    vision: keyword arguments of `VideoBeit`, as `Model.vision`.
    dtype: computation dtype.
  """
  vision: Mapping[str, Any]
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "VideoBackbone":
    """The video encoder of the `Model` that `config.model` describes (its text keys are checked, then unused)."""
    model = Model.from_config(config)
    return cls(vision=model.vision, dtype=model.dtype)

  def setup(self):
    self.video_encoder = beit.VideoBeit(**dict(self.vision), dtype=self.dtype)

  def __call__(self, video: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """video [B, T, H, W, 3] -> (pooled feature [B, D] (BEiT mean pooling, as the VTC feature), encoder aux)."""
    _, aux = self.video_encoder(video, train=train)
    return aux["pooled"], aux


def build_backbone(config: ml_collections.ConfigDict) -> VideoBackbone:
  """The classification backbone for config.model.name = 'svitt' (vlm/tasks/classification.py)."""
  return VideoBackbone.from_config(config)


# ================================================================================================== loading
def load(params: dict[str, Any], restored: dict[str, Any] | None, init: Any, model: Model) -> dict[str, Any]:
  """SViTT's part of `config.init` (vlm/train/init.py): checkpoint surgery and HF weights.

  From a checkpoint (`config.init.path`; `restored` holds its params under the model's paths):
    * temporal expansion: `relative_position_bias_table` / `pos_embedding` of another frame count are expanded
      when `config.init.options.frames_from` names the checkpoint's frames (equations 7, 10-11: relative tables
      by nearest temporal offset, absolute ones by nearest frame); without it such a table is an error;
    * the QA answer decoder, absent from a pre-training checkpoint: its layers start from the multimodal
      encoder's (the text encoder's beyond those), its embeddings from the text encoder's, its head from the MLM
      head (the release initialises the decoder from BERT's upper layers).
  From scratch, SViTT starts from image BEiT and BERT (A.1): `config.init.options.beit` (an HF `BeitModel`
  .safetensors with its config.json) fills the video encoder, its 2-D relative tables inflated to 3-D (equations
  8-11); `config.init.options.bert` (HF `BertModel` / `BertForMaskedLM`) fills layers 0..L_t-1 into f_t, the
  next L_m into f_m (whose cross-attention stays fresh) and the MLM head when the file has one. Everything else
  keeps its fresh value; a weight that does not fit is an error naming it.
  Under a classification task (`model` holds the `VideoBackbone` as `.backbone`) the same applies to the video
  encoder at `backbone/video_encoder/`.
  """
  options = dict(init.get("options") or {})
  prefix = ""
  if not isinstance(model, (Model, VideoBackbone)):  # a task's model around the backbone (classification)
    model, prefix = model.backbone, "backbone/"
  hf_files = {k: options.get(k) for k in ("beit", "bert") if options.get(k)}
  if restored is not None and hf_files:
    raise ValueError("config.init.path and config.init.options.beit / .bert both set: start either from a "
                     "checkpoint or from HF weights.")
  if restored is not None:
    return _adapt_checkpoint(params, restored, options.get("frames_from"), model)
  return {**params, **_hf_weights(params, hf_files, model, prefix)} if hf_files else {}


def _adapt_checkpoint(params: dict[str, Any], restored: dict[str, Any], frames_from: int | None,
                      model: Model | VideoBackbone) -> dict[str, Any]:
  vision = dict(model.vision)
  frames, side = vision["frames"], vision["image_size"] // vision["patch_size"]
  out, problems = {}, []
  for path, target in params.items():
    src_path = path
    if path not in restored and path.startswith(("answer_decoder/", "answer_head/")):
      src_path = _decoder_source(path, restored)
    src = restored.get(src_path)
    if src is None:
      continue  # the completeness check names it (or keeps it fresh with fallback_to_scratch)
    src = np.asarray(src)
    if src.shape == tuple(target.shape):
      out[path] = src
      continue
    if path.endswith(("relative_position_bias_table", "pos_embedding")):
      if frames_from is None:
        problems.append(f"{path}: checkpoint {src.shape} vs model {tuple(target.shape)}: the checkpoint has "
                        "another number of frames; set config.init.options.frames_from to its frame count to "
                        "expand it")
        continue
      if path.endswith("relative_position_bias_table"):
        new = video_positions.expand_relative(src, (int(frames_from), side, side), frames)
      else:
        new = video_positions.expand_absolute(src[0], int(frames_from), frames)[None]
      if new.shape != tuple(target.shape):
        problems.append(f"{path}: expanded {new.shape} vs model {tuple(target.shape)}")
        continue
      out[path] = new
      continue
    problems.append(f"{path}: checkpoint {src.shape} vs model {tuple(target.shape)}")
  if problems:
    raise ValueError("Checkpoint does not fit the SViTT model:\n  " + "\n  ".join(problems))
  return out


def _decoder_source(path: str, restored: dict[str, Any]) -> str:
  """Where a QA decoder parameter starts from in a pre-training checkpoint (see `load`)."""
  if path.startswith("answer_head/"):
    return "mlm_head/" + path[len("answer_head/"):]
  rest = path[len("answer_decoder/"):]
  if rest.startswith("layer_"):
    candidate = "fusion_encoder/" + rest
    return candidate if candidate in restored else "text_encoder/" + rest
  return "text_encoder/" + rest  # embeddings


def _hf_weights(params: dict[str, Any], files: dict[str, str], model: Model | VideoBackbone, prefix: str = ""
                ) -> dict[str, np.ndarray]:
  """The HF BEiT / BERT tensors mapped onto this model's parameter paths (see `load`)."""
  vision = dict(model.vision)
  loaded: dict[str, np.ndarray] = {}
  if files.get("beit"):
    side = vision["image_size"] // vision["patch_size"]
    _check_hf_config(files["beit"], vision["num_heads"], "config.init.options.beit", grid=side)
    tree = beit.from_hf_beit(hf_weights.read_weights(files["beit"]), vision["num_heads"], image_grid=(side, side),
                             frames=vision["frames"])
    loaded.update(_prefixed(tree, prefix + "video_encoder"))
  if files.get("bert"):
    if not isinstance(model, Model):
      raise ValueError("config.init.options.bert: the SViTT video backbone has no text encoder.")
    _check_hf_config(files["bert"], model.num_heads, "config.init.options.bert")
    flat = hf_weights.read_weights(files["bert"])
    loaded.update(_prefixed(bert.from_hf_bert(flat, model.num_heads, num_layers=model.text_layers), "text_encoder"))
    loaded.update(_prefixed(bert.from_hf_bert(flat, model.num_heads, first_layer=model.text_layers,
                                              num_layers=model.fusion_layers, embeddings=False), "fusion_encoder"))
    loaded.update(_prefixed(bert.mlm_head_from_hf(flat), "mlm_head"))
  problems = [f"{k}: not a parameter of this model" for k in loaded if k not in params]
  problems += [f"{k}: file {tuple(v.shape)} vs model {tuple(params[k].shape)}" for k, v in loaded.items()
               if k in params and tuple(v.shape) != tuple(params[k].shape)]
  if problems:
    raise ValueError("Pretrained weights (config.init.options.beit / .bert) do not fit the SViTT model:\n  "
                     + "\n  ".join(problems))
  fresh = sorted({"/".join(k.split("/")[:2]) for k in params if k not in loaded})
  logging.info("SViTT: %d of %d tensors from pretrained weights; fresh: %s", len(loaded), len(params), fresh)
  return loaded


def _prefixed(tree: Any, prefix: str) -> dict[str, np.ndarray]:
  import flax  # pylint: disable=g-import-not-at-top
  return {f"{prefix}/{k}": np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _check_hf_config(path: str, heads: int, field: str, grid: int | None = None) -> None:
  """The config.json beside HF weights against the model: the head count (HF fuses the heads in its Linear
  layers, so another count would load without a shape error) and, for BEiT, the patch grid its relative
  tables were trained on (no 2-D resampling here: pick input.crop_size to match)."""
  config = hf_weights.hf_config(path)
  if config is None:
    raise ValueError(f"{field}={path!r}: no config.json beside the weights (save_pretrained writes one); it gives "
                     "the head count.")
  if int(config["num_attention_heads"]) != heads:
    raise ValueError(f"{field}={path!r} has {config['num_attention_heads']} attention heads; the model has {heads}.")
  if grid is not None and int(config["image_size"]) // int(config["patch_size"]) != grid:
    raise ValueError(f"{field}={path!r} was trained on a {config['image_size'] // config['patch_size']}-patch grid "
                     f"({config['image_size']} px / {config['patch_size']}); the model's frames have {grid} "
                     "patches a side: set input.crop_size to match.")
