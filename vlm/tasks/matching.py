"""SViTT pre-training: VTC + VTM (hard negatives) + MLM, equal weights (SViTT supplement A.3, equations 12-15).

  VTC  InfoNCE between the L2-normalised video and text features in both directions (eqs. 12-13), the two
       directions averaged as released, negatives from the whole (global) batch, learned temperature (init
       0.07, clamped to [0.001, 0.5] as released).
  VTM  the multimodal encoder on the B matched pairs, each text with a negative video and each video with a
       negative text (drawn by softmax of the VTC similarity: hard negatives as released; uniform with
       `hard_negatives=False`, eq. 14 as written); 2-way cross-entropy on f_m's [CLS] (vlm/losses/matching.py).
  MLM  BERT 80/10/10 corruption of the caption (vlm/losses/mlm.py), f_t then f_m with the matched video, the
       original words predicted at the corrupted positions (eq. 15).
  loss = w_vtc VTC + w_vtm VTM + w_mlm MLM (all weights 1).

Config fields read (defaults in brackets):

config.model: the model's keys (size, depths, attention, keep rates, ...), read only by
  `vlm.models.svitt.Model.from_config` (listed in vlm/models/svitt.py's docstring, with their defaults).
config.init (vlm/train/init.py; SViTT's options in vlm/models/svitt.py `load`): options.frames_from (temporal
  expansion of a checkpoint with another frame count), options.beit / options.bert (HF weights for a run from
  scratch).
config.task:
  name ['matching']; vtc_weight / vtm_weight / mlm_weight [1.0]; temperature [0.07];
  learn_temperature [True]; hard_negatives [True]; mlm_probability [0.5 as released; BERT uses 0.15];
  mask_id [103] / special_ids [(0, 100, 101, 102, 103)] / first_regular_id [999]: BERT-base-uncased's [MASK],
  specials and first ordinary WordPiece (tiny: 4, (0, 1, 2, 3, 4), 5 for the built-in vocabulary).
config.input: num_frames [4] (T, sparse-sampled), crop_size [224], max_text_len [32] ([CLS] ... [SEP]).

Batches: video [B, T, H, W, 3] in [-1, 1]; text / text_mask [B, L] or [B, 1, L].
Metrics: loss, vtc, vtm, mlm, vtc_top1 (in-batch text -> video), vtm_accuracy, mlm_accuracy, temperature.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.losses import contrastive
from vlm.losses import matching
from vlm.losses import mlm as mlm_lib
from vlm.models import svitt
from vlm.nn.kernels import block_sparse

def _ints(x) -> tuple[int, ...]:
  return tuple(int(v) for v in (x or ()))


def flat_text(text: jax.Array, name: str = "text") -> jax.Array:
  """[B, L] or [B, 1, L] -> [B, L] (the data layer's tokenize gives one caption as [1, L])."""
  if text.ndim == 3:
    if text.shape[1] != 1:
      raise ValueError(f"{name} has {text.shape[1]} captions per clip; SViTT takes one ([B, L] or [B, 1, L]).")
    return text[:, 0]
  return text


class Task:
  """SViTT VTC + VTM + MLM pre-training (task protocol of vlm/README.md)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = svitt.Model.from_config(config)
    t = config.get("task") or ml_collections.ConfigDict()
    self.weights = {"vtc": float(t.get("vtc_weight", 1.0)), "vtm": float(t.get("vtm_weight", 1.0)),
                    "mlm": float(t.get("mlm_weight", 1.0))}
    self.init_temperature = float(t.get("temperature", 0.07))
    self.learn_temperature = bool(t.get("learn_temperature", True))
    self.hard_negatives = bool(t.get("hard_negatives", True))
    self.mlm = dict(probability=float(t.get("mlm_probability", 0.5)), mask_id=int(t.get("mask_id", 103)),
                    special_ids=_ints(t.get("special_ids", (0, 100, 101, 102, 103))),
                    first_regular_id=int(t.get("first_regular_id", 999)))
    if not 0.0 < self.mlm["probability"] < 1.0:
      raise ValueError(f"task.mlm_probability={self.mlm['probability']}; expected a fraction in (0, 1).")
    inp = config.input
    self.frames, self.crop = int(inp.get("num_frames", 4)), int(inp.get("crop_size", 224))
    self.text_len = int(inp.get("max_text_len", 32))
    if self.text_len > 512:
      raise ValueError(f"input.max_text_len={self.text_len} exceeds BERT's 512 positions.")

  # ------------------------------------------------------------------------------------------- protocol
  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    text = np.zeros((batch_size, self.text_len), np.int32)
    text[:, 0] = 2
    return {"video": np.zeros((batch_size, self.frames, self.crop, self.crop, 3), np.float32),
            "text": text, "text_mask": (text > 0).astype(np.int32)}

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    variables = dict(self.model.init({"params": rng}, batch["video"], flat_text(batch["text"]),
                                     flat_text(batch["text_mask"]), train=False))
    params = dict(variables["params"])
    # log of the VTC temperature beside the model (a scalar: replicated by the sharding rules)
    params["log_temperature"] = jnp.asarray(math.log(self.init_temperature), jnp.float32)
    return {"params": params}

  def temperature(self, params: Any) -> jax.Array:
    t = jnp.exp(params["log_temperature"])
    if not self.learn_temperature:
      t = jax.lax.stop_gradient(t)
    return jnp.clip(t, 0.001, 0.5)

  def loss_fn(self, params: Any, model_state: dict[str, Any], batch: dict[str, Any], rng: jax.Array, *,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """VTC + VTM + MLM on a batch -> (loss, (metrics, model_state))."""
    video = jnp.asarray(batch["video"])
    text, mask = jnp.asarray(flat_text(batch["text"])), jnp.asarray(flat_text(batch["text_mask"], "text_mask"))
    temp = self.temperature(params)
    k_drop, k_neg, k_mlm = jax.random.split(rng, 3)
    model_params = {k: v for k, v in params.items() if k != "log_temperature"}

    def forward(model: svitt.Model):
      tokens, video_feat = model.encode_video(video, train=train)
      hidden, text_feat = model.encode_text(text, mask, train=train)
      v = contrastive.l2_normalize(video_feat.astype(jnp.float32))
      t = contrastive.l2_normalize(text_feat.astype(jnp.float32))
      # The mean of the two directions, as released (docs/design.md, SViTT: VTC).
      vtc, vtc_x = contrastive.nce_loss(anchors=t, positives=v, temperature=temp, directions="average",
                                        normalize=False)
      # VTM: B matched pairs, B (text, negative video), B (negative text, video).
      b = video.shape[0]
      neg_video, neg_text = matching.sample_negatives(k_neg, (t @ v.T) / temp, hard=self.hard_negatives)
      fused = model.fuse(jnp.concatenate([hidden, hidden, hidden[neg_text]]),
                         jnp.concatenate([mask, mask, mask[neg_text]]),
                         jnp.concatenate([tokens, tokens[neg_video], tokens]), train=train)
      labels = jnp.concatenate([jnp.ones((b,), jnp.int32), jnp.zeros((2 * b,), jnp.int32)])
      vtm, vtm_x = matching.vtm_loss(model.vtm_logits(fused), labels)
      # MLM on the matched pairs.
      corrupted, selected = mlm_lib.mask_tokens(k_mlm, text, mask, vocab_size=model.vocab_size, **self.mlm)
      masked_hidden, _ = model.encode_text(corrupted, mask, train=train)
      logits = model.mlm_logits(model.fuse(masked_hidden, mask, tokens, train=train))
      mlm, mlm_x = mlm_lib.mlm_loss(logits, text, selected)
      return {"vtc": vtc, "vtm": vtm, "mlm": mlm, "vtc_top1": vtc_x["top1"], "vtm_accuracy": vtm_x["accuracy"],
              "vtm_matched_prob": vtm_x["matched_prob"], "mlm_accuracy": mlm_x["accuracy"]}

    out = self.model.apply({"params": model_params}, method=forward, rngs={"dropout": k_drop})
    loss = sum(w * out[name] for name, w in self.weights.items() if w > 0)
    metrics = {"loss": loss, **out, "temperature": temp}
    return loss, (metrics, model_state)

  # ---------------------------------------------------------------------------------- prediction functions
  def _model_vars(self, variables):
    return {"params": {k: v for k, v in variables["params"].items() if k != "log_temperature"}}

  def encode_video(self, variables, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, H, W, 3] -> (fusion tokens [B, M, Dv], L2-normalised VTC features [B, E]) in eval mode."""
    tokens, feat = self.model.apply(self._model_vars(variables), video, method=svitt.Model.encode_video)
    return tokens, contrastive.l2_normalize(feat.astype(jnp.float32))

  def encode_text(self, variables, text: jax.Array, text_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, L] ids and mask -> (f_t hidden states [B, L, D], L2-normalised VTC features [B, E])."""
    hidden, feat = self.model.apply(self._model_vars(variables), text, text_mask, method=svitt.Model.encode_text)
    return hidden, contrastive.l2_normalize(feat.astype(jnp.float32))

  def match_scores(self, variables, text_hidden, text_mask, video_tokens) -> jax.Array:
    """VTM score of each (text, video) row pair: log p(matched) - log p(not matched), [B]."""
    def fn(model):
      logits = model.vtm_logits(model.fuse(text_hidden, text_mask, video_tokens))
      return logits[:, 1] - logits[:, 0]
    return self.model.apply(self._model_vars(variables), method=fn)

  def embed_video(self, variables, video: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] -> [B, E] L2-normalised VTC features (the dual-encoder retrieval protocol)."""
    return self.encode_video(variables, video)[1]

  def embed_text(self, variables, text: jax.Array, text_mask: jax.Array) -> jax.Array:
    return self.encode_text(variables, text, text_mask)[1]

  # -------------------------------------------------------------------------------------------------- tools
  def token_counts(self) -> dict[str, int]:
    """Video tokens entering the encoder and after each pruning; text tokens."""
    v = self.model.vision
    n = self.frames * (self.crop // v["patch_size"]) ** 2
    out = {"video": n}
    if v["keep_rate"] < 1.0:
      for layer in v["prune_after"]:
        n = math.ceil(v["keep_rate"] * n - 1e-9)
        out[f"video_after_layer_{layer}"] = n
    out["text"] = self.text_len
    return out

  def attention_edges(self) -> dict[str, float]:
    """Attention-graph size and edge sparsity of this configuration (equations 1-3; `svitt_edges`)."""
    v, m = self.model.vision, self.model
    sparse = v["attention"] == "block_sparse"
    patches = (self.crop // v["patch_size"]) ** 2
    n = self.frames * patches
    bs = v["attention_kwargs"] or {}
    # Dense attention is one block of all tokens: every query meets N keys.
    g, kl, kr = ((bs["block_size"], bs["local_blocks"], bs["random_blocks"]) if sparse else (n, 1, 0))
    return block_sparse.svitt_edges(
        self.frames, patches_per_frame=patches, visual_layers=v["num_layers"], multimodal_layers=m.fusion_layers,
        text_len=self.text_len, local_blocks=kl, random_blocks=kr, block_size=g, visual_keep=v["keep_rate"],
        visual_prune_after=v["prune_after"], multimodal_keep=m.fusion_keep_rate,
        multimodal_prune_after=m.fusion_prune_after)
