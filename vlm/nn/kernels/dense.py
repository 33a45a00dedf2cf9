"""Dense softmax attention: the explicit einsum kernel, the fused call (cuDNN flash attention on GPUs), and the
written-out softmax both dense and block-sparse attention use.

Registered as the attention kernel 'dense': on GPUs `fused_attention` (cuDNN flash attention where it takes the
inputs, else `jax.nn.dot_product_attention`'s XLA composition); elsewhere, and whenever attention-probability
dropout is active, the explicit einsum softmax. `attention_kwargs={'implementation': ...}` forces one
('auto' | 'fused' | 'explicit').
"""
from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp

from vlm.nn import dropout as dropout_lib
from vlm.nn.kernels import registry


def softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """Softmax over `axis`, written out: its autodiff fuses into fewer full-size passes on XLA:CPU.

  `jax.nn.softmax`'s own derivative rule materialises the broadcast normaliser and the max-shifted logits as
  separate [.., T, S] arrays; the plain expression lets XLA fuse them: dense and block-sparse attention forward +
  backward both ~1.08x faster on the 2-core CPU (N = 1569, 12 heads x 64, medians of 9 interleaved runs). Same
  values to float32 rounding; the max is a constant to autodiff (its gradient terms cancel exactly).
  """
  shifted = logits - jax.lax.stop_gradient(logits.max(axis=axis, keepdims=True))
  unnorm = jnp.exp(shifted)
  return unnorm * (1.0 / unnorm.sum(axis=axis, keepdims=True))


def explicit_attention(query, key, value, *, mask=None, bias=None, dropout_rate=0.0, dropout_rng=None,
                       deterministic=True):
  """Softmax attention written out (reference; the path used when attention dropout is active).

  Same arguments and result as `dense_attention`. Logits are scaled by d_kv**-0.5; the softmax runs in float32.
  """
  # Head-major operands ([B, H, T, K]): batch and head lead, so both einsums are plain batched matmuls. With the
  # heads in the middle XLA:CPU wraps each dot in transposes of the [B, H, T, S] arrays: forward + backward at
  # N = 1569, H = 12 took 1.25-1.3x longer (392 vs 300 ms at B = 1). The scale goes on the queries ([T, K], not
  # the [T, S] logits) for the same reason.
  scale = query.shape[-1] ** -0.5
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  query, key, value = heads_first(query * jnp.asarray(scale, query.dtype)), heads_first(key), heads_first(value)
  logits = jnp.einsum("bhtd,bhsd->bhts", query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = softmax(logits, axis=-1)
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError("Attention dropout needs dropout_rng.")
    # The [B, H, T, S] mask is the largest random tensor of a step: see vlm/nn/dropout.py for its cost.
    keep = dropout_lib.keep_mask(dropout_rng, weights.shape, dropout_rate)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  return heads_first(jnp.einsum("bhts,bhsd->bhtd", weights.astype(value.dtype), value))


@registry.register_attention("dense")
def dense_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                    bias: jax.Array | None = None, dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                    deterministic: bool = True, implementation: str = "auto") -> jax.Array:
  """Dense softmax attention.

  Why two paths: on XLA:CPU `jax.nn.dot_product_attention` lowers to a generic graph that is slower than the
  explicit einsum softmax (forward + backward, B = 4, N = 785, H = 12, K = 64: 372 against 326 ms on the 2-core
  AMD EPYC machine; 1.8x slower before the explicit path was made head-major with a written-out softmax), while
  on GPUs `fused_attention` reaches cuDNN's flash attention. 'auto' takes the fused call on GPUs only.

  Args:
    query: [B, T, H, K] queries.
    key: [B, S, H, K] keys.
    value: [B, S, H, K] values.
    mask: optional [B, S] bool key-padding mask, True where a key may be attended to.
    bias: optional additive logit bias broadcastable to [B, H, T, S] (e.g. relative positions [1, H, T, S]).
    dropout_rate: dropout on the attention probabilities (VATT applies 0.1 in training).
    dropout_rng: key for that dropout; needed only when it is active.
    deterministic: True disables dropout.
    implementation: 'auto' (fused on GPU, explicit elsewhere), 'fused' (`jax.nn.dot_product_attention`) or
      'explicit' (`explicit_attention`).

  Returns:
    [B, T, H, K] attended values.
  """
  implementation = resolve_implementation(implementation)
  if implementation == "explicit" or (not deterministic and dropout_rate > 0.0):
    # The fused kernel has no dropout on the probabilities; VATT's release applies it, so write it out.
    return explicit_attention(query, key, value, mask=mask, bias=bias, dropout_rate=dropout_rate,
                              dropout_rng=dropout_rng, deterministic=deterministic)
  return fused_attention(query, key, value, mask=mask, bias=bias)


def resolve_implementation(implementation: str) -> str:
  """'auto' | 'fused' | 'explicit' -> 'fused' or 'explicit' ('auto': fused on GPUs only; see `dense_attention`)."""
  if implementation not in ("auto", "fused", "explicit"):
    raise ValueError(f"attention implementation={implementation!r}; expected 'auto', 'fused' or 'explicit'.")
  if implementation == "auto":
    return "fused" if jax.default_backend() == "gpu" else "explicit"
  return implementation


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
  if message not in _WARNED:
    _WARNED.add(message)
    logging.warning(message)


def even_length_inputs(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                       bias: jax.Array | None = None):
  """Attention inputs in the form cuDNN trains on: T and S padded to even lengths, the bias at full [.., T, S]
  extent, the key mask as a [B, 1, T, S] mask; without a mask, a padded key is excluded through per-example key
  lengths. Returns (query, key, value, bias, mask, key lengths) for `jax.nn.dot_product_attention`; rows past the
  original T are to be dropped from its output. Tested off GPUs through jax's XLA composition."""
  b, t, s = query.shape[0], query.shape[1], key.shape[1]
  tp, sp = t + t % 2, s + s % 2
  pad = lambda x, n, fill=0: jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2),
                                     constant_values=fill)
  c_mask = c_bias = kv_lengths = None
  if mask is not None:
    c_mask = jnp.broadcast_to(pad(mask.astype(bool), sp, False)[:, None, None, :], (b, 1, tp, sp))
  elif sp != s:
    kv_lengths = jnp.full((b,), s, jnp.int32)
  if bias is not None:
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    c_bias = jnp.pad(jnp.broadcast_to(bias, bias.shape[:2] + (t, s)), [(0, 0), (0, 0), (0, tp - t), (0, sp - s)])
  return pad(query, tp), pad(key, sp), pad(value, sp), c_bias, c_mask, kv_lengths


def fused_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                    bias: jax.Array | None = None) -> jax.Array:
  """`jax.nn.dot_product_attention`, through cuDNN's flash attention wherever cuDNN takes the inputs.

  jax's default (`implementation=None`) is its XLA composition, never cuDNN: the flash kernel must be asked for by
  name. cuDNN takes fp16 / bf16 operands on a GPU, head dims that are multiples of 8 (<= 256 on Hopper), a bias
  of full [.., T, S] extent (a key mask is broadcast to it) and, for training, even T and S: jax refuses odd
  lengths while tracing the backward pass ("Unsupported sequence length Q 1569, KV 1569" on an H200: [CLS] + 8 x
  196 patches), so odd lengths are padded by one here (a query row that is dropped, a key excluded through the
  kernel's sequence lengths or the mask). Where jax still refuses (NotImplementedError or ValueError while
  tracing), a warning names the shapes and reason once, and the XLA composition (the same function) runs; it is
  also the path everywhere off GPUs.

  Args:
    query: [B, T, H, K]; key, value: [B, S, H, K].
    mask: optional [B, S] bool key mask, True where a key may be attended to.
    bias: optional logit bias broadcastable to [B, H, T, S].

  Returns:
    [B, T, H, K].
  """
  if bias is not None:
    bias = bias.astype(query.dtype)
  if jax.default_backend() == "gpu" and query.dtype in (jnp.float16, jnp.bfloat16):
    try:
      q, k, v, c_bias, c_mask, kv_lengths = even_length_inputs(query, key, value, mask=mask, bias=bias)
      out = jax.nn.dot_product_attention(q, k, v, bias=c_bias, mask=c_mask, key_value_seq_lengths=kv_lengths,
                                         implementation="cudnn")
      return out[:, :query.shape[1]]
    except (NotImplementedError, ValueError) as e:  # a shape or dtype cuDNN does not take (see above)
      _warn_once(f"fused attention: cuDNN does not take q {query.shape}, k {key.shape}, bias "
                 f"{None if bias is None else bias.shape}, mask {None if mask is None else mask.shape} "
                 f"({type(e).__name__}: {e}); using jax's XLA composition.")
  return jax.nn.dot_product_attention(query, key, value, bias=bias,
                                      mask=None if mask is None else mask[:, None, None, :])
