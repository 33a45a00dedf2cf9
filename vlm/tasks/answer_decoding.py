"""SViTT video question answering: an answer decoder on the multimodal encoder (SViTT A.3, following Singularity).

The question (25 tokens, table A4) goes through f_t and then f_m with the video (multimodal keep rate q_m 0.5 for
QA); a causal BERT decoder (`model.decoder_layers`, 3 as the release) cross-attends to f_m's output and is trained
with teacher forcing to generate the answer ([CLS] answer [SEP], 5 tokens): the cross-entropy of each next token.
Evaluation ranks a closed answer list by the decoder's log-likelihood of each candidate (`answer_scores`), as
Singularity ranks its answer list (it scores the 128 best first tokens fully; here every candidate is scored).

Starting from a pre-training checkpoint (`config.init.path`), the decoder starts from the multimodal layers, its
embeddings from the text encoder's and its head from the MLM head (`vlm.models.svitt.load`).

Config: config.model as vlm/models/svitt.py (`Model.from_config`; `model.decoder_layers` must be set), and
  config.task: name ['answer_decoding'].
  config.input: num_frames, crop_size, max_question_len [25], max_answer_len [5].
Batches: video [B, T, H, W, 3]; question / question_mask [B, Lq]; answer / answer_mask [B, La].
Metrics: loss (mean next-token cross-entropy over answer tokens), token_accuracy.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlm.models import svitt
from vlm.tasks import matching


def sequence_log_likelihood(logits: jax.Array, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced next-token log-likelihoods.

  Args:
    logits: [B, L, V] decoder outputs at positions 0..L-1 (position j predicts token j + 1).
    ids: [B, L] the sequence ([CLS] first); mask: [B, L].

  Returns:
    (per-token log p [B, L - 1], weights [B, L - 1]: 1 where token j + 1 is real).
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  target = ids[:, 1:].astype(jnp.int32)
  token_logp = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  return token_logp, mask[:, 1:].astype(jnp.float32)


class Task(matching.Task):
  """SViTT QA fine-tuning (task protocol of vlm/README.md)."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)  # builds the model (svitt.Model.from_config); no compute yet
    if self.model.decoder_layers <= 0:
      raise ValueError("The SViTT QA task needs an answer decoder: set model.decoder_layers (3 as released).")
    self.question_len = int(config.input.get("max_question_len", 25))
    self.answer_len = int(config.input.get("max_answer_len", 5))
    if self.answer_len < 2:
      raise ValueError(f"input.max_answer_len={self.answer_len}: an answer needs [CLS] and at least one token.")

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    q = np.zeros((batch_size, self.question_len), np.int32)
    q[:, 0] = 2
    a = np.zeros((batch_size, self.answer_len), np.int32)
    a[:, :2] = 2
    return {"video": np.zeros((batch_size, self.frames, self.crop, self.crop, 3), np.float32),
            "question": q, "question_mask": (q > 0).astype(np.int32),
            "answer": a, "answer_mask": (a > 0).astype(np.int32)}

  def init_variables(self, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
    variables = dict(self.model.init({"params": rng}, batch["video"], batch["question"], batch["question_mask"],
                                     batch["answer"], batch["answer_mask"], train=False))
    return {"params": dict(variables["params"])}

  def _fused_question(self, model: svitt.Model, video, question, question_mask, train: bool):
    tokens, _ = model.encode_video(video, train=train)
    hidden, _ = model.encode_text(question, question_mask, train=train)
    return model.fuse(hidden, question_mask, tokens, train=train)

  def loss_fn(self, params, model_state, batch, rng, *, train: bool):
    video, question, qmask = batch["video"], batch["question"], batch["question_mask"]
    answer, amask = batch["answer"], batch["answer_mask"]

    def forward(model: svitt.Model):
      fused = self._fused_question(model, video, question, qmask, train)
      return model.answer_logits(answer, amask, fused, qmask, train=train)

    logits = self.model.apply({"params": params}, method=forward, rngs={"dropout": rng})
    token_logp, w = sequence_log_likelihood(logits, answer, amask)
    n = jnp.maximum(w.sum(), 1.0)
    loss = -(token_logp * w).sum() / n
    correct = (jnp.argmax(logits[:, :-1], axis=-1) == answer[:, 1:]).astype(jnp.float32)
    return loss, ({"loss": loss, "token_accuracy": (correct * w).sum() / n}, model_state)

  def answer_scores(self, variables, video, question, question_mask, candidates, candidate_mask) -> jax.Array:
    """Log-likelihood of each candidate answer: video [B, ...], question [B, Lq], candidates [C, La] -> [B, C]."""
    b, c = question.shape[0], candidates.shape[0]

    def fn(model: svitt.Model):
      fused = self._fused_question(model, video, question, question_mask, False)  # [B, Lq, D]
      rep = lambda x: jnp.repeat(x, c, axis=0)  # [B * C, ...]: every example with every candidate
      cand = jnp.tile(candidates, (b, 1))
      cmask = jnp.tile(candidate_mask, (b, 1))
      logits = model.answer_logits(cand, cmask, rep(fused), rep(question_mask))
      token_logp, w = sequence_log_likelihood(logits, cand, cmask)
      return (token_logp * w).sum(-1).reshape(b, c)

    return self.model.apply({"params": variables["params"]}, method=fn)

  def token_counts(self) -> dict[str, int]:
    out = super().token_counts()
    out.pop("text", None)
    out.update(question=self.question_len, answer=self.answer_len)
    return out
