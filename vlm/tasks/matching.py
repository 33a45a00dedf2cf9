"""Video-text matching pre-training: VTC + VTM (hard negatives) + MLM, equal weights (SViTT supplement A.3,
equations 12-15; TW-BERT / ALPRO with ALBEF's momentum distillation).

  VTC  InfoNCE between the L2-normalised video and text features in both directions (eqs. 12-13), the two
       directions averaged as released, negatives from the whole (global) batch, learned temperature (init
       0.07, clamped to [0.001, 0.5] as released). With `momentum` > 0 (TW-BERT: 0.995), ALBEF's form: a
       momentum copy of the encoders (`model.momentum_modules`, an exponential moving average of the online
       weights, updated before each training step's forward pass) gives the in-batch candidates and a queue of
       `queue_size` earlier candidates, and the targets mix the one-hot positive with the momentum model's
       softmax by `distill_alpha` (0.4; vlm/losses/contrastive.py `distilled_nce_loss`). The momentum weights
       and the queue are the run's `model_state`: checkpointed with it, so a resumed run continues exactly.
       Evaluation batches use the in-batch form (as released).
  VTM  the multimodal encoder on the B matched pairs, each text with a negative video and each video with a
       negative text (drawn by softmax of the VTC similarity: hard negatives as released; uniform with
       `hard_negatives=False`, eq. 14 as written); 2-way cross-entropy (vlm/losses/matching.py).
  MLM  BERT 80/10/10 corruption of the caption (vlm/losses/mlm.py), f_t then f_m with the matched video, the
       original words predicted at the corrupted positions (eq. 15).
  loss = vtc_weight VTC + vtm_weight VTM + mlm_weight MLM.

A model whose video encoder reads the text (`video_reads_text`, TW-BERT's frame selector) encodes every video
with its own caption's [CLS]; VTM's negative videos keep the encoding made for their own caption, as released.

config.task (`Objective`; its fields are the defaults):
  name 'matching'; vtc_weight / vtm_weight / mlm_weight [1.0]; temperature [0.07]; learn_temperature [True];
  hard_negatives [True]; mlm_probability [0.5 as released; BERT uses 0.15]; mask_id [103] / special_ids
  [(0, 100, 101, 102, 103)] / first_regular_id [999]: BERT-base-uncased's [MASK], specials and first ordinary
  WordPiece (tiny: 4, (0, 1, 2, 3, 4), 5 for the built-in vocabulary); momentum [0.0: none] / queue_size [0] /
  distill_alpha [0.4] (queue_size a multiple of the global batch).
config.model: a `protocols.MatchingModel` (`Model.from_config`: vlm/models/svitt.py, vlm/models/twbert.py).
config.input: num_frames [4] (T), crop_size [224], max_text_len [32] ([CLS] ... [SEP]), batch_size.

Batches: video [B, T, H, W, 3] in [-1, 1]; text / text_mask [B, L] or [B, 1, L].
Metrics: loss, vtc, vtm, mlm, vtc_top1 (in-batch text -> video), vtm_accuracy, vtm_matched_prob, mlm_accuracy,
temperature; with a queue, queue_filled (the fraction of the queue holding features).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm import registry
from vlm import tasks as tasks_lib
from vlm.losses import contrastive
from vlm.losses import matching
from vlm.losses import mlm as mlm_lib


def flat_text(text: jax.Array, name: str = "text") -> jax.Array:
  """[B, L] or [B, 1, L] -> [B, L] (the data layer's tokenize gives one caption as [1, L])."""
  if text.ndim == 3:
    if text.shape[1] != 1:
      raise ValueError(f"{name} has {text.shape[1]} captions per clip; matching takes one ([B, L] or [B, 1, L]).")
    return text[:, 0]
  return text


@dataclasses.dataclass(frozen=True)
class Objective:
  """config.task of the matching objective (module docstring)."""
  vtc_weight: float = 1.0
  vtm_weight: float = 1.0
  mlm_weight: float = 1.0
  temperature: float = 0.07
  learn_temperature: bool = True
  hard_negatives: bool = True
  mlm_probability: float = 0.5
  mask_id: int = 103
  special_ids: tuple[int, ...] = (0, 100, 101, 102, 103)
  first_regular_id: int = 999
  momentum: float = 0.0
  queue_size: int = 0
  distill_alpha: float = 0.4

  @classmethod
  def from_config(cls, task: Any, global_batch: int) -> "Objective":
    options = tasks_lib.objective_options(cls, task, kind="matching")
    if "special_ids" in options:
      options["special_ids"] = tuple(int(v) for v in options["special_ids"])
    o = cls(**options)
    if not 0.0 < o.mlm_probability < 1.0:
      raise ValueError(f"config.task.mlm_probability={o.mlm_probability}; expected a fraction in (0, 1).")
    if not 0.0 <= o.momentum < 1.0:
      raise ValueError(f"config.task.momentum={o.momentum}; expected a decay in [0, 1) (0: no momentum encoder).")
    if o.queue_size and not o.momentum:
      raise ValueError("config.task.queue_size needs a momentum encoder: set config.task.momentum (ALBEF: 0.995).")
    if o.queue_size < 0 or (o.queue_size and o.queue_size % global_batch):
      raise ValueError(f"config.task.queue_size={o.queue_size}: expected a multiple of the global batch "
                       f"(config.input.batch_size={global_batch}), so that each step's features fill whole slots.")
    if not 0.0 <= o.distill_alpha <= 1.0:
      raise ValueError(f"config.task.distill_alpha={o.distill_alpha}; expected a weight in [0, 1].")
    return o


class Task:
  """VTC + VTM + MLM pre-training (task protocol of vlm/README.md)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = registry.resolve(config.model.get("name", "svitt"), "models").Model.from_config(config)
    inp = config.input
    self.objective = Objective.from_config(config.get("task"), int(inp.get("batch_size", 2)))
    o = self.objective
    self.weights = {"vtc": o.vtc_weight, "vtm": o.vtm_weight, "mlm": o.mlm_weight}
    self.mlm = dict(probability=o.mlm_probability, mask_id=o.mask_id, special_ids=o.special_ids,
                    first_regular_id=o.first_regular_id)
    self.frames, self.crop = int(inp.get("num_frames", 4)), int(inp.get("crop_size", 224))
    self.text_len = int(inp.get("max_text_len", 32))
    if self.text_len > 512:
      raise ValueError(f"input.max_text_len={self.text_len} exceeds BERT's 512 positions.")
    self.video_reads_text = bool(getattr(self.model, "video_reads_text", False))
    if hasattr(self.model, "attention_edges"):  # the inspect tool's EdgeCounter role, where the model has edges
      self.attention_edges = lambda: self.model.attention_edges(self.text_len)
    if hasattr(self.model, "video_features"):  # the frame_selection evaluator's FrameSelector role
      self.frame_selection = self._frame_selection

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
    params["log_temperature"] = jnp.asarray(math.log(self.objective.temperature), jnp.float32)
    out = {"params": params}
    if self.objective.momentum:
      out["momentum"] = {name: params[name] for name in self._momentum_names(params)}
      e, q = int(self.model.embed_dim), self.objective.queue_size
      out["queue"] = {"video": jnp.zeros((q, e), jnp.float32), "text": jnp.zeros((q, e), jnp.float32),
                      "filled": jnp.zeros((), jnp.int32), "ptr": jnp.zeros((), jnp.int32),
                      "momentum_ready": jnp.zeros((), jnp.int32)}
    return out

  def _momentum_names(self, params: dict[str, Any]) -> list[str]:
    names = getattr(self.model, "momentum_modules", None)
    names = [n for n in params if n != "log_temperature"] if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
      raise ValueError(f"momentum_modules {missing} are not parameters of the model.")
    return names

  def temperature(self, params: Any) -> jax.Array:
    t = jnp.exp(params["log_temperature"])
    if not self.objective.learn_temperature:
      t = jax.lax.stop_gradient(t)
    return jnp.clip(t, 0.001, 0.5)

  def _encode(self, model, video, text, mask, train):
    """(video tokens, video feature, text states, text feature); the video read with its caption if needed."""
    hidden, text_feat = model.encode_text(text, mask, train=train)
    if self.video_reads_text:
      tokens, video_feat = model.encode_video(video, hidden[:, 0], train=train)
    else:
      tokens, video_feat = model.encode_video(video, train=train)
    return tokens, video_feat, hidden, text_feat

  def loss_fn(self, params: Any, model_state: dict[str, Any], batch: dict[str, Any], rng: jax.Array, *,
              train: bool) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """VTC + VTM + MLM on a batch -> (loss, (metrics, model_state))."""
    video = jnp.asarray(batch["video"])
    text, mask = jnp.asarray(flat_text(batch["text"])), jnp.asarray(flat_text(batch["text_mask"], "text_mask"))
    temp = self.temperature(params)
    k_drop, k_neg, k_mlm, k_momentum = jax.random.split(rng, 4)
    model_params = {k: v for k, v in params.items() if k != "log_temperature"}
    queued = bool(self.objective.momentum) and train
    new_state, teacher, extra = model_state, None, {}
    if queued:
      new_state, teacher = self._momentum_step(model_params, model_state, video, text, mask, temp, k_momentum)
      extra["queue_filled"] = new_state["queue"]["filled"].astype(jnp.float32) / max(1, self.objective.queue_size)

    def forward(model):
      tokens, video_feat, hidden, text_feat = self._encode(model, video, text, mask, train)
      v = contrastive.l2_normalize(video_feat.astype(jnp.float32))
      t = contrastive.l2_normalize(text_feat.astype(jnp.float32))
      b = video.shape[0]
      if teacher is None:
        # The mean of the two directions, as released (docs/design.md, SViTT: VTC).
        vtc, vtc_x = contrastive.nce_loss(anchors=t, positives=v, temperature=temp, directions="average",
                                          normalize=False)
        vtc_top1 = vtc_x["top1"]
      else:
        v_all, t_all, valid = teacher["video"], teacher["text"], teacher["valid"]
        t2v, t2v_x = contrastive.distilled_nce_loss(t @ v_all.T / temp, teacher["t2v"], valid=valid,
                                                    alpha=self.objective.distill_alpha)
        v2t, _ = contrastive.distilled_nce_loss(v @ t_all.T / temp, teacher["v2t"], valid=valid,
                                                alpha=self.objective.distill_alpha)
        vtc, vtc_top1 = (t2v + v2t) / 2, t2v_x["top1"]
      # VTM: B matched pairs, B (text, negative video), B (negative text, video).
      neg_video, neg_text = matching.sample_negatives(k_neg, (t @ v.T) / temp, hard=self.objective.hard_negatives)
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
      return {"vtc": vtc, "vtm": vtm, "mlm": mlm, "vtc_top1": vtc_top1, "vtm_accuracy": vtm_x["accuracy"],
              "vtm_matched_prob": vtm_x["matched_prob"], "mlm_accuracy": mlm_x["accuracy"]}

    out = self.model.apply({"params": model_params}, method=forward, rngs={"dropout": k_drop})
    loss = sum(w * out[name] for name, w in self.weights.items() if w > 0)
    metrics = {"loss": loss, **out, "temperature": temp, **extra}
    return loss, (metrics, new_state)

  def _momentum_step(self, model_params, state, video, text, mask, temp, rng):
    """ALBEF's momentum half of VTC: the EMA update, the momentum features and targets, the queue update.

    Returns (new model_state, teacher): teacher holds the candidates [B + Q, E] (this batch's momentum
    features first, then the queue), their validity [B + Q] and the momentum model's logits in both directions.
    """
    m = self.objective.momentum
    queue = state["queue"]
    ready = queue["momentum_ready"] > 0
    # The first step copies the online weights (whatever init loaded into them), later steps take the EMA.
    ema = jax.tree.map(lambda old, new: jnp.where(ready, m * old + (1.0 - m) * new, new),
                       state["momentum"], jax.lax.stop_gradient({k: model_params[k] for k in state["momentum"]}))
    teacher_params = {**jax.lax.stop_gradient(model_params), **ema}

    def encode(model):
      _, video_feat, _, text_feat = self._encode(model, video, text, mask, True)
      return (contrastive.l2_normalize(video_feat.astype(jnp.float32)),
              contrastive.l2_normalize(text_feat.astype(jnp.float32)))

    v_m, t_m = self.model.apply({"params": teacher_params}, method=encode, rngs={"dropout": rng})
    v_m, t_m = jax.lax.stop_gradient(v_m), jax.lax.stop_gradient(t_m)
    b, q = v_m.shape[0], self.objective.queue_size
    valid = jnp.concatenate([jnp.ones((b,), bool), jnp.arange(q) < queue["filled"]])
    v_all = jnp.concatenate([v_m, queue["video"]])
    t_all = jnp.concatenate([t_m, queue["text"]])
    teacher = {"video": v_all, "text": t_all, "valid": valid, "t2v": t_m @ v_all.T / temp,
               "v2t": v_m @ t_all.T / temp}
    new_queue = dict(queue, momentum_ready=jnp.ones((), jnp.int32))
    if q:
      new_queue.update(video=jax.lax.dynamic_update_slice(queue["video"], v_m, (queue["ptr"], 0)),
                       text=jax.lax.dynamic_update_slice(queue["text"], t_m, (queue["ptr"], 0)),
                       ptr=(queue["ptr"] + b) % q, filled=jnp.minimum(queue["filled"] + b, q))
    return {**state, "momentum": ema, "queue": new_queue}, teacher

  # ---------------------------------------------------------------------------------- prediction functions
  def _model_vars(self, variables):
    return {"params": {k: v for k, v in variables["params"].items() if k != "log_temperature"}}

  def encode_video(self, variables, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, H, W, 3] -> (fusion tokens [B, M, Dv], L2-normalised VTC features [B, E]) in eval mode (a
    text-reading video encoder without a text: its text-free form, e.g. TW-BERT's evenly spaced frames)."""
    tokens, feat = self.model.apply(self._model_vars(variables), video, method=type(self.model).encode_video)
    return tokens, contrastive.l2_normalize(feat.astype(jnp.float32))

  def encode_text(self, variables, text: jax.Array, text_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, L] ids and mask -> (f_t hidden states [B, L, D], L2-normalised VTC features [B, E])."""
    hidden, feat = self.model.apply(self._model_vars(variables), text, text_mask,
                                    method=type(self.model).encode_text)
    return hidden, contrastive.l2_normalize(feat.astype(jnp.float32))

  def match_scores(self, variables, text_hidden, text_mask, video_tokens) -> jax.Array:
    """VTM score of each (text, video) row pair: log p(matched) - log p(not matched), [B]."""
    def fn(model):
      logits = model.vtm_logits(model.fuse(text_hidden, text_mask, video_tokens))
      return logits[:, 1] - logits[:, 0]
    return self.model.apply(self._model_vars(variables), method=fn)

  def _frame_selection(self, variables, video, text, text_mask) -> dict[str, jax.Array]:
    """Each clip read with its own text: the frames the selector keeps and f_c's word-to-frame weights."""
    text, text_mask = flat_text(text), flat_text(text_mask, "text_mask")

    def fn(model):
      hidden, _ = model.encode_text(text, text_mask)
      tokens, _, aux = model.video_features(video, hidden[:, 0])
      _, fuse_aux = model.fuse(hidden, text_mask, tokens, with_aux=True)
      weights = jnp.stack([layer["frame_weights"] for layer in fuse_aux["layers"]], axis=1)
      kept = aux.get("selected_frames")
      if kept is None:  # no selector: every frame is kept
        kept = jnp.broadcast_to(jnp.arange(aux["frames"], dtype=jnp.int32), (video.shape[0], aux["frames"]))
      return {"selected_frames": kept, "frame_weights": weights}
    return self.model.apply(self._model_vars(variables), method=fn)

  def embed_video(self, variables, video: jax.Array) -> jax.Array:
    """[B, T, H, W, 3] -> [B, E] L2-normalised VTC features (the dual-encoder retrieval protocol)."""
    return self.encode_video(variables, video)[1]

  def embed_text(self, variables, text: jax.Array, text_mask: jax.Array) -> jax.Array:
    return self.encode_text(variables, text, text_mask)[1]

  # -------------------------------------------------------------------------------------------------- tools
  def token_counts(self) -> dict[str, int]:
    """Tokens per stage (the model's own count where it has one) and text tokens."""
    out = dict(self.model.token_counts()) if hasattr(self.model, "token_counts") else {}
    out["text"] = self.text_len
    return out

