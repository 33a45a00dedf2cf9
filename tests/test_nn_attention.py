"""Attention kernels (vlm/nn/kernels/), the registry, the attention layer and T5 relative position buckets."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import attention
from vlm.nn import kernels
from vlm.nn.kernels import dense


def _qkv(b=2, t=5, h=3, k=8, seed=0):
  rng = np.random.default_rng(seed)  # numpy inputs: no PRNG kernels to compile
  return [jnp.asarray(rng.normal(size=(b, t, h, k)), jnp.float32) for _ in range(3)]


def _numpy_attention(q, k, v, mask, bias):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1]) + np.asarray(bias, np.float64)
  logits = np.where(np.asarray(mask)[:, None, None, :], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhts,bshd->bthd", w, v)


def test_dense_matches_numpy_with_mask_and_bias():
  q, k, v = _qkv()
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  bias = jnp.asarray(np.random.default_rng(3).normal(size=(1, 3, 5, 5)), jnp.float32)
  want = _numpy_attention(q, k, v, mask, bias)
  run = jax.jit(lambda *a: [dense.dense_attention(*a, mask=mask, bias=bias, implementation=impl)
                            for impl in ("auto", "fused", "explicit")])
  for got in run(q, k, v):
    np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match="implementation='flash'"):
    dense.dense_attention(q, k, v, implementation="flash")


@pytest.mark.parametrize("t,s,masked,biased", [(5, 7, False, False), (5, 7, True, True), (4, 7, False, True),
                                                (5, 6, True, False)])
def test_even_length_inputs_give_the_same_attention(t, s, masked, biased):
  """cuDNN trains on even lengths only (`fused_attention` pads on GPUs): the padded inputs, run here through jax's
  XLA composition, give the unpadded attention's values and gradients."""
  rng = np.random.default_rng(7)
  q = jnp.asarray(rng.normal(size=(2, t, 3, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, s, 3, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((2, s)) > 0.4).at[:, 0].set(True) if masked else None
  bias = jnp.asarray(rng.normal(size=(1, 3, t, s)), jnp.float32) if biased else None
  cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

  def padded(q, k, v):
    qp, kp, vp, c_bias, c_mask, lengths = dense.even_length_inputs(q, k, v, mask=mask, bias=bias)
    assert qp.shape[1] % 2 == 0 and kp.shape[1] % 2 == 0 and vp.shape == kp.shape
    return jax.nn.dot_product_attention(qp, kp, vp, bias=c_bias, mask=c_mask, key_value_seq_lengths=lengths,
                                        implementation="xla")[:, :t]

  def reference(q, k, v):
    return dense.explicit_attention(q, k, v, mask=mask, bias=bias)

  np.testing.assert_allclose(padded(q, k, v), reference(q, k, v), atol=1e-5)
  grads = [jax.grad(lambda *a, f=f: jnp.vdot(f(*a), cot), argnums=(0, 1, 2))(q, k, v) for f in (padded, reference)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_written_out_softmax_matches_jax_values_and_gradients():
  # Masked entries at finfo.min (as the kernels write them), a fully masked row, and the key axis not last
  # (block-sparse attention normalises over axis -2).
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(2, 7, 4)).astype(np.float32) * 4
  logits[0, :3, 1] = np.finfo(np.float32).min
  logits[1, :, 2] = np.finfo(np.float32).min
  logits = jnp.asarray(logits)
  cot = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
  for axis in (-1, -2):
    ours = lambda x, axis=axis: jnp.vdot(dense.softmax(x, axis=axis), cot)
    ref = lambda x, axis=axis: jnp.vdot(jax.nn.softmax(x, axis=axis), cot)
    np.testing.assert_allclose(dense.softmax(logits, axis), jax.nn.softmax(logits, axis=axis), atol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(ref)(logits), atol=1e-5)
    np.testing.assert_allclose(np.sum(dense.softmax(logits, axis), axis), 1.0, atol=1e-6)


def test_attention_dropout_only_in_training():
  q, k, v = _qkv()
  rng = jax.random.PRNGKey(1)
  run = jax.jit(lambda q, k, v: (
      dense.dense_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng, deterministic=True),
      dense.dense_attention(q, k, v),
      dense.dense_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng, deterministic=False)))
  det, plain, noisy = run(q, k, v)
  np.testing.assert_allclose(det, plain, atol=1e-6)
  assert not np.allclose(noisy, det)
  with pytest.raises(ValueError, match="dropout_rng"):
    dense.dense_attention(q, k, v, dropout_rate=0.5, deterministic=False)


def test_dispatch_point():
  assert kernels.get_attention_fn("dense") is dense.dense_attention
  with pytest.raises(ValueError, match="Unknown attention 'nope'"):
    kernels.get_attention_fn("nope")
  with pytest.raises(ValueError, match="already registered"):
    kernels.register_attention("dense")(dense.dense_attention)


def test_mha_ignores_padded_keys_and_names_axes():
  mha = attention.MultiHeadAttention(num_heads=2, head_dim=4)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 8)), jnp.float32)
  mask = jnp.array([[1, 1, 0, 0]])
  variables = jax.jit(lambda r: mha.init(r, x, mask=mask))(jax.random.PRNGKey(1))
  apply = jax.jit(lambda x: mha.apply(variables, x, mask=mask)[0])
  y1 = apply(x)
  y2 = apply(x.at[:, 2:].set(100.0))  # change only the padding
  np.testing.assert_allclose(y1[:, :2], y2[:, :2], atol=1e-5)
  names = nn.get_partition_spec(variables)["params"]
  assert tuple(names["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(names["out"]["kernel"]) == ("heads", "kv", "embed")


def test_relative_position_buckets_match_t5():
  rel = np.arange(-100, 101)  # key - query
  b = attention.relative_position_bucket(rel, num_buckets=32, max_distance=64)
  at = lambda r: int(b[r + 100])
  # Keys at or before the query use buckets 0..15, keys after it 16..31; distances 0..7 are exact.
  assert [at(-d) for d in range(8)] == list(range(8))
  assert [at(d) for d in range(1, 8)] == list(range(17, 24))
  # Beyond: 8 + int(log(d / 8) / log(64 / 8) * 8), capped at 15 (T5's formula).
  assert (at(-8), at(-16), at(-32), at(-63), at(-64), at(-100)) == (8, 10, 13, 15, 15, 15)
  assert (at(16), at(100)) == (26, 31)
  assert np.all(np.diff(b[:101]) <= 0) and np.all(np.diff(b[101:]) >= 0)  # monotone in distance


def test_relative_position_bias_shape():
  mod = attention.RelativePositionBias(num_heads=3)
  variables = jax.jit(lambda r: mod.init(r, 7))(jax.random.PRNGKey(0))
  out = jax.jit(lambda v: mod.apply(v, 7))(variables)
  assert out.shape == (1, 3, 7, 7)
  # Toeplitz: the bias depends on key - query only.
  np.testing.assert_allclose(out[0, :, 1:, 1:], out[0, :, :-1, :-1])


def test_attention_dropout_keeps_the_configured_fraction_unbiased():
  # Uniform attention over S keys on all-ones values: each output is (kept keys / S) / (1 - rate).
  b, t, h, s, rate = 4, 64, 2, 256, 0.3
  zeros = jnp.zeros((b, t, h, 8))
  keys = jnp.zeros((b, s, h, 8))
  out = dense.explicit_attention(zeros, keys, jnp.ones((b, s, h, 8)), dropout_rate=rate,
                                     dropout_rng=jax.random.PRNGKey(0), deterministic=False)
  kept = np.asarray(out[..., 0]) * (1 - rate)  # fraction of keys kept per query
  assert abs(kept.mean() - (1 - rate)) < 0.005
  assert abs(np.asarray(out).mean() - 1.0) < 0.01
