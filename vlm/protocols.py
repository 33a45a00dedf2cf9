"""What each part of vlm must offer the others, as `typing.Protocol`s checked when a run is built.

Two sides:
  * task side: what the trainer, the evaluators and the tools call on a task (`config.task.name` ->
    `vlm.tasks.<name>.Task(config)`). Every task is a `Task`; the others are roles an evaluator or tool needs.
  * model side: what a task kind needs from the flax model a family builds (`Model.from_config(config)`).

A mismatch is one error, raised before anything compiles, naming the object, the protocol, the methods it lacks
and who needed them (`require`). Protocols are runtime-checkable, so `isinstance(task, DualEncoder)` works for
optional features (the inspect tool prints token counts only for a `TokenCounter`).

Shapes: B batch, T frames, H x W pixels, L text tokens, N video tokens, D width, E joint-space width.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Array = Any  # jax.Array or numpy array
Batch = dict[str, Any]
Variables = dict[str, Any]  # {'params': ..., other collections}


# ================================================================================================ task side
@runtime_checkable
class Task(Protocol):
  """What the trainer needs of every task."""
  model: Any  # the family's flax model, as config.model builds it (its `load` receives it)

  def dummy_batch(self, batch_size: int) -> dict[str, Any]:
    """Numpy arrays with the shapes and dtypes of a training batch of `batch_size` examples."""

  def init_variables(self, rng: Array, batch: Batch) -> Variables:
    """Fresh variables ({'params': ..., maybe 'batch_stats': ...}) for `batch`'s shapes."""

  def loss_fn(self, params: Any, model_state: Any, batch: Batch, rng: Array, *, train: bool
              ) -> tuple[Array, tuple[dict[str, Array], Any]]:
    """-> (scalar loss, (metrics, new model_state))."""


@runtime_checkable
class DualEncoder(Protocol):
  """Retrieval by the similarity of independent video and text embeddings (the `retrieval` evaluator)."""

  def embed_video(self, variables: Variables, video: Array) -> Array:
    """video [B, T, H, W, 3] -> L2-normalised [B, E]."""

  def embed_text(self, variables: Variables, text: Array, text_mask: Array) -> Array:
    """ids / mask [B, L] -> L2-normalised [B, E]."""


@runtime_checkable
class EpisodeEncoder(Protocol):
  """Dual encoder that also embeds a set of clips as one (the `multiple_choice` evaluator's SummaryMCQ)."""

  def embed_video(self, variables: Variables, video: Array) -> Array:
    """video [B, T, H, W, 3] -> L2-normalised [B, E]."""

  def embed_text(self, variables: Variables, text: Array, text_mask: Array) -> Array:
    """ids / mask [B, L] -> L2-normalised [B, E]."""

  def embed_episode(self, variables: Variables, video: Array, mask: Array | None = None) -> Array:
    """video [B, N, T, H, W, 3] (+ clip mask [B, N]) -> L2-normalised [B, E] of the N clips together."""


@runtime_checkable
class CrossEncoder(Protocol):
  """A model that scores (text, video) pairs jointly: retrieval re-ranks its top k with `match_scores`."""

  def encode_video(self, variables: Variables, video: Array) -> tuple[Array, Array]:
    """video -> (tokens [B, N, Dv] for the cross-encoder, L2-normalised [B, E])."""

  def encode_text(self, variables: Variables, text: Array, text_mask: Array) -> tuple[Array, Array]:
    """ids / mask -> (hidden states [B, L, D], L2-normalised [B, E])."""

  def match_scores(self, variables: Variables, text_hidden: Array, text_mask: Array, video_tokens: Array
                   ) -> Array:
    """Row-paired inputs -> [B] matching scores (higher: more likely a match)."""


@runtime_checkable
class FrameSelector(Protocol):
  """A text-conditioned frame selector and its cross-modal frame attention (the `frame_selection` evaluator)."""

  def frame_selection(self, variables: Variables, video: Array, text: Array, text_mask: Array
                      ) -> dict[str, Array]:
    """Each clip with its own text -> {'selected_frames' [B, T'] (indices into the T input frames),
    'frame_weights' [B, layers, H, L, T'] (each word's attention over the kept frames)}."""


@runtime_checkable
class FeatureExtractor(Protocol):
  """Frozen features of a batch's videos (the `linear` evaluator)."""

  def features(self, variables: Variables, batch: Batch) -> Array:
    """-> [B, D]."""


@runtime_checkable
class Classifier(Protocol):
  """Class scores per head (the `classification` evaluator)."""
  head_names: tuple[str, ...]  # one head per dataset of the mixture

  def predict_logits(self, variables: Variables, batch: Batch, *, head: str | None = None) -> Array:
    """-> [B, C] logits of `head` (None: the only one)."""


@runtime_checkable
class AnswerScorer(Protocol):
  """Closed-vocabulary video QA (the `qa` evaluator)."""

  def answer_scores(self, variables: Variables, video: Array, question: Array, question_mask: Array,
                    candidates: Array, candidate_mask: Array) -> Array:
    """candidates / candidate_mask [A, La] -> [B, A] scores of every candidate answer."""


@runtime_checkable
class TokenCounter(Protocol):
  """Token counts per stage (the inspect tool)."""

  def token_counts(self) -> dict[str, int]:
    ...


@runtime_checkable
class EdgeCounter(Protocol):
  """Attention-graph size and edge sparsity (the inspect tool; SViTT equations 1-3)."""

  def attention_edges(self) -> dict[str, float]:
    ...


@runtime_checkable
class PartialObjectives(Protocol):
  """Parts of a task's objective that the bench tool can time alone (`--objective=NAME`)."""

  def bench_objectives(self) -> dict[str, Task]:
    """{name: an object with the Task protocol's dummy_batch / init_variables / loss_fn}."""


# =============================================================================================== model side
@runtime_checkable
class ContrastiveModel(Protocol):
  """What the `contrastive` task needs: named embeddings in joint spaces, and the two retrieval towers."""

  def embeddings(self, batch: Batch, *, train: bool = False) -> tuple[dict[str, Array], dict[str, Any]]:
    """-> ({name: [B, E] or [B, K, E]}, aux): the spaces the task's terms pair up (e.g. 'video_audio')."""

  def embed_video(self, video: Array) -> Array:
    """Eval-mode video embedding in the video-text space, [B, E] (not yet normalised)."""

  def embed_text(self, text: Array, text_mask: Array) -> Array:
    """Eval-mode text embedding, [B, E] (not yet normalised)."""


@runtime_checkable
class HierarchicalModel(Protocol):
  """What the `hierarchical` task (clip-level + summary-level contrastive, HierVL) needs of a dual encoder."""

  def embed_video(self, video: Array, *, train: bool = False) -> Array:
    """video [B, T, H, W, 3] -> [B, E] (not yet normalised)."""

  def embed_text(self, text: Array, text_mask: Array, *, train: bool = False) -> Array:
    """ids / mask [B, L] -> [B, E] (not yet normalised)."""

  def aggregate(self, embeddings: Array, mask: Array | None = None, *, train: bool = False) -> Array:
    """[B, N, E] clip or narration embeddings (+ [B, N] mask) -> [B, E], one aggregator for both."""


@runtime_checkable
class MatchingModel(Protocol):
  """What the `matching` task (VTC + VTM + MLM) needs of a cross-encoder model."""
  vocab_size: int

  def encode_video(self, video: Array, *, train: bool = False) -> tuple[Array, Array]:
    """video -> (tokens [B, N, Dv], VTC feature [B, E])."""

  def encode_text(self, text: Array, text_mask: Array, *, train: bool = False) -> tuple[Array, Array]:
    """ids / mask [B, L] -> (hidden [B, L, D], VTC feature [B, E])."""

  def fuse(self, text_hidden: Array, text_mask: Array, video_tokens: Array, *, train: bool = False) -> Array:
    """Text cross-attending to video -> [B, L, D]."""

  def vtm_logits(self, fused: Array) -> Array:
    """[B, L, D] -> [B, 2] (not matched, matched)."""

  def mlm_logits(self, fused: Array) -> Array:
    """[B, L, D] -> [B, L, V]."""


@runtime_checkable
class AnswerDecoderModel(MatchingModel, Protocol):
  """A matching model with an answer decoder (the `answer_decoding` task)."""

  def answer_logits(self, answer: Array, answer_mask: Array, fused: Array, fused_mask: Array, *,
                    train: bool = False) -> Array:
    """Teacher-forced answer ids [B, La] -> next-token logits [B, La, V]."""


@runtime_checkable
class Backbone(Protocol):
  """A video tower for classification (`vlm.models.<family>.build_backbone(config)`)."""

  def __call__(self, video: Array, *, train: bool = False) -> tuple[Array, dict[str, Any]]:
    """video [B, T, H, W, 3] -> (features [B, D], aux)."""


# ==================================================================================================== checks
def missing_methods(obj: Any, protocol: type) -> list[str]:
  """Names `protocol` declares (methods and attributes) that `obj` does not have."""
  names = []
  for klass in protocol.__mro__:
    if klass in (Protocol, object) or not getattr(klass, "_is_protocol", False):
      continue
    names += [n for n in vars(klass) if not n.startswith("_")]
    names += list(getattr(klass, "__annotations__", {}))
  if protocol.__dict__.get("__call__") is not None or any("__call__" in vars(k) for k in protocol.__mro__
                                                        if getattr(k, "_is_protocol", False)):
    names.append("__call__")
  return sorted({n for n in names if not hasattr(obj, n)})


def require(obj: Any, protocol: type, role: str) -> None:
  """Raises TypeError naming what `obj` lacks of `protocol`, and `role` (who needs it, e.g. a config key).

  Example message: "config.evals.retrieval (type 'retrieval') needs a DualEncoder task; the Task of
  vlm.tasks.classification lacks: embed_text, embed_video."
  """
  missing = missing_methods(obj, protocol)
  if missing:
    owner = type(obj)
    raise TypeError(f"{role} needs a {protocol.__name__}; the {owner.__name__} of {owner.__module__} lacks: "
                    f"{', '.join(missing)}.")
