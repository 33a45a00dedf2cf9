"""Feed-forward block of a Transformer layer."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlm.nn import dropout as dropout_lib
from vlm.nn import logical as ax

# VATT's released code uses Keras' exact (erf) GELU, not the tanh approximation that jax.nn.gelu defaults to.
gelu_exact = functools.partial(jax.nn.gelu, approximate=False)


class MlpBlock(nn.Module):
  """Dense -> activation -> dropout -> Dense (VATT `DenseGeLUDense`).

  Attributes:
    mlp_dim: hidden units.
    dropout_rate: dropout after the activation (training only).
    use_bias: whether both Dense layers have a bias.
    activation: elementwise non-linearity.
    dtype: computation dtype (params stay float32).
  """
  mlp_dim: int
  dropout_rate: float = 0.1
  use_bias: bool = True
  activation: Callable[[jax.Array], jax.Array] = gelu_exact
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    """[B, N, D] -> [B, N, D]."""
    d = x.shape[-1]
    init = nn.initializers.xavier_uniform()
    x = nn.Dense(self.mlp_dim, use_bias=self.use_bias, dtype=self.dtype, name="wi",
                 kernel_init=nn.with_logical_partitioning(init, (ax.EMBED, ax.MLP)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.MLP,)))(x)
    x = self.activation(x)
    x = nn.with_logical_constraint(x, (ax.BATCH, ax.TOKENS, ax.ACT_MLP))
    x = dropout_lib.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return nn.Dense(d, use_bias=self.use_bias, dtype=self.dtype, name="wo",
                    kernel_init=nn.with_logical_partitioning(init, (ax.MLP, ax.EMBED)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (ax.EMBED,)))(x)
