"""Word-embedding text tokenizer (VATT: word2vec vocabulary of 2**16 words, 300-d, frozen)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import logical as ax
from vlm.nn import mlp as mlp_lib


class TextEmbed(nn.Module):
  """Word embedding lookup, then a GELU Dense pre-projection to the model width.

  As released (`vatt/modeling/backbones/text/factory.py`): a 2**16 x 300 table meant to hold word2vec vectors
  (loaded from a checkpoint; string-to-id vocabularies live in the data layer), frozen by default, then
  `Dense(d_model, activation=gelu)` without bias for the modality-specific text Transformer, with bias in the
  modality-agnostic model. Frozen means the lookup is wrapped in `stop_gradient`: the table still lives in
  `params` (so checkpoints carry it) but receives zero gradient; optimisers should also exclude it from weight
  decay.

  Attributes:
    hidden_size: token width D after the projection.
    vocab_size: table rows (out-of-range ids are clipped into range, never NaN).
    embed_dim: word vector size (300 for word2vec).
    trainable: whether the table receives gradients.
    use_bias: bias in the pre-projection.
    dtype: computation dtype.
  """
  hidden_size: int
  vocab_size: int = 2 ** 16
  embed_dim: int = 300
  trainable: bool = False
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """[B, L] int ids (0 = padding) -> (tokens [B, L, D], aux{'grid': (L,), 'word_embeddings': [B, L, E]})."""
    del train
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_out", "normal"), (ax.VOCAB, None)),
                       (self.vocab_size, self.embed_dim))
    if not self.trainable:
      table = jax.lax.stop_gradient(table)
    words = jnp.take(table, ids, axis=0, mode="clip").astype(self.dtype)
    x = nn.Dense(self.hidden_size, use_bias=self.use_bias, dtype=self.dtype, name="pre_projection",
                 kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), (None, ax.EMBED)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)))(words)
    return mlp_lib.gelu_exact(x), {"grid": (ids.shape[1],), "word_embeddings": words}
