"""Block-sparse attention (SViTT edge sparsity): equal to dense attention under the same mask (values and
gradients, with padding, global tokens, biases and token orders), the block pattern, space-filling orders."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import attention
from vlm.nn import kernels
from vlm.nn import transformer
from vlm.nn.kernels import block_sparse as bs
from vlm.nn.kernels import dense as dense_lib


def _qkv(b=2, n=1 + 37, h=2, k=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(kk, (b, n, h, k)) for kk in keys]


def _dense_reference(q, k, v, pattern, num_global, block_size, mask=None, bias=None, order=None):
  """Dense attention with the sparse graph as a mask, in the caller's (unpermuted) token order."""
  n_total = q.shape[1]
  n = n_total - num_global
  edges = bs.dense_mask(pattern, num_global, n, block_size)  # in blocking order
  if order is not None:
    full_order = np.concatenate([np.arange(num_global), num_global + np.asarray(order)])
    inv = np.argsort(full_order)
    edges = edges[inv][:, inv]  # (query, key) in the caller's order
  logits = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
  if bias is not None:
    logits = logits + bias
  allowed = edges[None, None]
  if mask is not None:
    allowed = allowed & mask[:, None, None, :]
  logits = jnp.where(allowed, logits, -1e30)
  return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), v)


@pytest.mark.parametrize("order_kind,implementation", [(None, "explicit"), ("morton", "explicit"),
                                                       ("hilbert", "explicit"), (None, "fused"),
                                                       ("hilbert", "fused")])
def test_equals_dense_attention_under_the_same_mask(order_kind, implementation):
  """Both block layouts: the written-out blocked softmax, and the blocks as a batch of small attention problems
  for the fused kernel (its XLA composition on CPU; cuDNN's on GPUs, see test_fused_paths_take_cudnn_on_gpu)."""
  q, k, v = _qkv(n=1 + 48)  # 48 local tokens = a 3 x 4 x 4 grid; G = 5 pads the last block
  g, kl, kr = 5, 3, 2
  nblk = bs.num_blocks(48, g)
  pattern = bs.block_pattern(jax.random.key(3), nblk, kl, kr)
  mask = jnp.ones((2, 49), bool).at[1, 40:].set(False)  # padded keys in the second example
  bias = jax.random.normal(jax.random.key(4), (1, 2, 49, 49))
  order = None if order_kind is None else bs.token_order((3, 4, 4), order_kind)
  kw = dict(block_size=g, local_blocks=kl, random_blocks=kr, num_global=1, pattern=pattern, order=order,
            implementation=implementation)

  def sparse(q, k, v, bias):
    return bs.block_sparse_attention(q, k, v, mask=mask, bias=bias, **kw)

  def dense(q, k, v, bias):
    return _dense_reference(q, k, v, pattern, 1, g, mask=mask, bias=bias, order=order)

  np.testing.assert_allclose(sparse(q, k, v, bias), dense(q, k, v, bias), atol=1e-5, rtol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  gs = jax.grad(loss(sparse), argnums=(0, 1, 2, 3))(q, k, v, bias)  # the bias is learned (relative positions)
  gd = jax.grad(loss(dense), argnums=(0, 1, 2, 3))(q, k, v, bias)
  for a, b in zip(gs, gd):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias_batch", [1, 2])
def test_gradients_with_attention_dropout_match_finite_differences(bias_batch):
  """With attention dropout (one fixed draw) there is no dense reference: the gradient's directional derivative
  along a random direction of (q, k, v, bias) must match a central finite difference of the same function. A
  key-padding mask, a batch whose second example has every key masked, and per-example or shared biases."""
  q, k, v = _qkv(n=1 + 24)
  g = 6
  pattern = bs.block_pattern(jax.random.key(3), bs.num_blocks(24, g), 1, 2)
  mask = jnp.ones((2, 25), bool).at[0, 20:].set(False).at[1].set(False)
  bias = jax.random.normal(jax.random.key(4), (bias_batch, 2, 25, 25))
  cot = jax.random.normal(jax.random.key(7), q.shape)

  @jax.jit
  def f(q, k, v, bias):
    out = bs.block_sparse_attention(q, k, v, mask=mask, bias=bias, block_size=g, local_blocks=1, random_blocks=2,
                                    num_global=1, pattern=pattern, implementation="explicit", dropout_rate=0.3,
                                    dropout_rng=jax.random.key(8), deterministic=False)
    return jnp.vdot(out, cot)

  x = (q, k, v, bias)
  u = [jax.random.normal(jax.random.key(10 + i), a.shape) for i, a in enumerate(x)]
  grads = jax.grad(f, argnums=(0, 1, 2, 3))(*x)
  eps = 1e-2
  shifted = lambda sign: f(*(a + sign * eps * d for a, d in zip(x, u)))
  numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
  analytic = sum(jnp.vdot(gr, d) for gr, d in zip(grads, u))
  np.testing.assert_allclose(analytic, numeric, rtol=1e-2)
  assert float(jnp.abs(grads[3]).sum()) > 0.0  # the bias does get a gradient


def test_head_groups_give_the_same_values_and_gradients():
  q, k, v = _qkv(h=4)
  pattern = bs.block_pattern(jax.random.key(3), bs.num_blocks(37, 6), 1, 2)
  bias = jax.random.normal(jax.random.key(4), (2, 4, 38, 38))
  kw = dict(block_size=6, local_blocks=1, random_blocks=2, num_global=1, pattern=pattern, implementation="explicit",
            dropout_rate=0.2, dropout_rng=jax.random.key(5), deterministic=False)
  run = lambda groups: jax.value_and_grad(
      lambda q, k, v, bias: jnp.sum(jnp.sin(bs.block_sparse_attention(q, k, v, bias=bias, head_groups=groups, **kw))),
      argnums=(0, 1, 2, 3))(q, k, v, bias)
  (value1, grads1), (value2, grads2), (value4, _) = run(1), run(2), run(4)
  np.testing.assert_allclose(value2, value1, rtol=1e-6)
  np.testing.assert_allclose(value4, value1, rtol=1e-6)
  for a, b in zip(grads2, grads1):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
  with pytest.raises(ValueError, match="divisor of the 4 heads"):
    run(3)


def test_equals_dense_without_mask_or_padding():
  # No caller mask and G dividing N: the kernel skips its where-mask; values and gradients must not change.
  q, k, v = _qkv(n=1 + 48)
  g, kl, kr = 6, 1, 2
  pattern = bs.block_pattern(jax.random.key(5), bs.num_blocks(48, g), kl, kr)
  bias = jax.random.normal(jax.random.key(6), (1, 2, 49, 49))
  kw = dict(block_size=g, local_blocks=kl, random_blocks=kr, num_global=1, pattern=pattern)
  sparse = lambda q, k, v: bs.block_sparse_attention(q, k, v, bias=bias, **kw)
  dense = lambda q, k, v: _dense_reference(q, k, v, pattern, 1, g, bias=bias)
  np.testing.assert_allclose(sparse(q, k, v), dense(q, k, v), atol=1e-5, rtol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  for a, b in zip(jax.grad(loss(sparse), argnums=(0, 1, 2))(q, k, v),
                  jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_all_blocks_is_dense_attention():
  """A pattern naming every block (gather path) is dense attention; so is the shortcut the kernel takes when
  K_l + K_r >= nblk (the late, pruned layers of an encoder), even when K_l + K_r exceeds the block count."""
  q, k, v = _qkv(n=1 + 24)
  dense = dense_lib.explicit_attention(q, k, v)
  every = jnp.asarray([[i, (i + 1) % 4, (i + 2) % 4, (i + 3) % 4] for i in range(4)], jnp.int32)
  gathered = bs.block_sparse_attention(q, k, v, block_size=6, local_blocks=1, random_blocks=3, pattern=every)
  np.testing.assert_allclose(gathered, dense, atol=1e-5, rtol=1e-5)
  for kl, kr in ((1, 3), (3, 2)):
    out = bs.block_sparse_attention(q, k, v, block_size=6, local_blocks=kl, random_blocks=kr, num_global=1)
    np.testing.assert_allclose(out, dense, atol=1e-5, rtol=1e-5)


def test_pattern_local_then_distinct_random_blocks():
  pattern = np.asarray(bs.block_pattern(jax.random.key(0), 10, 3, 4))
  assert pattern.shape == (10, 7)
  for i, row in enumerate(pattern):
    assert list(row[:3]) == [(i - 1) % 10, i, (i + 1) % 10]
    assert len(set(row)) == 7  # random blocks distinct and never local
    assert list(row[3:]) == sorted(row[3:])
  other = np.asarray(bs.block_pattern(jax.random.key(1), 10, 3, 4))
  assert not np.array_equal(pattern, other)
  # Every non-local block is drawn sometimes (uniform over the candidates).
  counts = np.zeros((10, 10))
  for s in range(200):
    p = np.asarray(bs.block_pattern(jax.random.key(s), 10, 3, 4))
    counts[np.arange(10)[:, None], p[:, 3:]] += 1
  np.testing.assert_allclose(counts[0, 2:9], 200 * 4 / 7, rtol=0.25)


def test_training_redraws_the_pattern_and_eval_is_fixed():
  q, k, v = _qkv(n=1 + 60, seed=1)
  kw = dict(block_size=6, local_blocks=1, random_blocks=2, num_global=1)
  ev1 = bs.block_sparse_attention(q, k, v, **kw)
  ev2 = bs.block_sparse_attention(q, k, v, **kw)
  np.testing.assert_array_equal(ev1, ev2)
  tr1 = bs.block_sparse_attention(q, k, v, deterministic=False, dropout_rng=jax.random.key(1), **kw)
  tr2 = bs.block_sparse_attention(q, k, v, deterministic=False, dropout_rng=jax.random.key(2), **kw)
  assert not np.allclose(tr1, tr2)
  # The encoder layer selects it by name, with options through attention_kwargs.
  layer = attention.MultiHeadAttention(num_heads=2, head_dim=8, attention="block_sparse", attention_kwargs=kw)
  x = jax.random.normal(jax.random.key(0), (2, 61, 16))
  params = layer.init(jax.random.key(0), x)
  a, _ = layer.apply(params, x, train=True, rngs={"dropout": jax.random.key(5)})
  b, _ = layer.apply(params, x, train=True, rngs={"dropout": jax.random.key(6)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(layer.apply(params, x)[0], layer.apply(params, x)[0])


def test_every_encoder_layer_evaluates_with_its_own_fixed_pattern():
  kw = dict(block_size=6, local_blocks=1, random_blocks=2, num_global=1, eval_seed=3)
  # The registry says which kernels take the layer index: attention layers pass it to those only.
  assert kernels.takes_layer("block_sparse") and not kernels.takes_layer("dense")
  per_layer = [dict(kw, layer=i) for i in range(3)]
  # Layer i evaluates with the pattern of the seed's key with i folded in, eval_key((seed, i)): fixed, distinct.
  patterns = [np.asarray(bs.block_pattern(bs.eval_key((3, i)), 10, 1, 2)) for i in range(3)]
  assert not np.array_equal(patterns[0], patterns[1]) and not np.array_equal(patterns[1], patterns[2])
  q, k, v = _qkv(n=61)
  opts = dict(block_size=6, local_blocks=1, random_blocks=2, num_global=1)
  np.testing.assert_array_equal(bs.block_sparse_attention(q, k, v, **per_layer[1]),
                                bs.block_sparse_attention(q, k, v, pattern=jnp.asarray(patterns[1]), **opts))
  # In an encoder: deterministic at evaluation, and not the old behaviour (layer 0's pattern in every layer).
  make = lambda options: transformer.Encoder(num_layers=3, num_heads=2, mlp_dim=32, dropout_rate=0.0,
                                             attention_dropout_rate=0.0, attention="block_sparse",
                                             attention_kwargs=options)
  x = jax.random.normal(jax.random.key(0), (2, 61, 16))
  params = make(kw).init(jax.random.key(0), x)
  got = make(kw).apply(params, x)[0]
  np.testing.assert_array_equal(got, make(kw).apply(params, x)[0])
  one_pattern = dict(kw, pattern=bs.block_pattern(bs.eval_key((3, 0)), 10, 1, 2))
  assert not np.allclose(got, make(one_pattern).apply(params, x)[0], atol=1e-4)
  # The attention layer hands its `layer` argument to the kernel: layer 1's pattern, as the kernel called directly.
  mha = attention.MultiHeadAttention(num_heads=2, head_dim=8, attention="block_sparse", attention_kwargs=kw)
  mha_params = mha.init(jax.random.key(0), x)
  with_pattern = attention.MultiHeadAttention(num_heads=2, head_dim=8, attention="block_sparse",
                                              attention_kwargs=dict(opts, pattern=jnp.asarray(patterns[1])))
  np.testing.assert_array_equal(mha.apply(mha_params, x, layer=1)[0], with_pattern.apply(mha_params, x)[0])


def test_block_sparse_is_self_attention_only():
  q, k, v = _qkv(n=61)
  with pytest.raises(ValueError, match="self-attention"):
    bs.block_sparse_attention(q, k[:, :40], v[:, :40], block_size=6, local_blocks=1, random_blocks=2)


def test_space_filling_orders():
  for kind in ("morton", "hilbert"):
    perm = bs.token_order((4, 4, 4), kind)
    assert sorted(perm) == list(range(64))
  coords = np.stack(np.unravel_index(bs.token_order((4, 4, 4), "hilbert"), (4, 4, 4)), -1)
  steps = np.abs(np.diff(coords, axis=0)).sum(-1)
  assert (steps == 1).all()  # the Hilbert curve moves to a face neighbour at every step
  morton = np.stack(np.unravel_index(bs.token_order((4, 4, 4), "morton"), (4, 4, 4)), -1)
  for start in range(0, 64, 8):  # every 8 consecutive Morton tokens form a 2x2x2 cube
    cube = morton[start:start + 8]
    assert (cube.max(0) - cube.min(0) == 1).all()
  # Grids that are not powers of two: still permutations.
  assert sorted(bs.token_order((8, 14, 14), "hilbert")) == list(range(8 * 14 * 14))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention runs on NVIDIA GPUs only")
def test_fused_paths_take_cudnn_on_gpu():
  """On a GPU, bf16 dense and block-sparse attention in their fused form run cuDNN's flash kernel (its
  `__cudnn$fmha*` custom calls are in the compiled forward + backward program) and agree with the float32
  explicit kernels to bf16 rounding, at odd lengths too (cuDNN trains on even lengths only: padded inside)."""
  b, n, h, d = 2, 1 + 4 * 16, 4, 64  # [CLS] + 4 blocks of G = 16: 65 tokens, key blocks of 1 + 2 * 16 = 33
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(b=b, n=n, h=h, k=d))
  kw = dict(block_size=16, local_blocks=1, random_blocks=2, num_global=1,
            pattern=bs.block_pattern(jax.random.key(7), 4, 1, 2))
  cot = jax.random.normal(jax.random.key(8), (b, n, h, d))
  mask = jnp.ones((b, n), bool).at[1, 50:].set(False)
  bias = jax.random.normal(jax.random.key(9), (1, h, n, n))
  kernels = {"dense": lambda impl: lambda *a: dense_lib.dense_attention(*a, implementation=impl),
             "dense, mask and bias": lambda impl: lambda *a: dense_lib.dense_attention(
                 *a, mask=mask, bias=bias, implementation=impl),
             "block_sparse": lambda impl: lambda *a: bs.block_sparse_attention(*a, implementation=impl, **kw),
             "block_sparse, mask and bias": lambda impl: lambda *a: bs.block_sparse_attention(
                 *a, mask=mask, bias=bias, implementation=impl, **kw)}
  for name, kernel in kernels.items():
    def value_and_grads(impl, kernel=kernel):
      return jax.jit(jax.value_and_grad(lambda *a: jnp.vdot(kernel(impl)(*a).astype(jnp.float32), cot),
                                        argnums=(0, 1, 2)))
    fused = value_and_grads("fused")
    assert "fmha" in fused.lower(q, k, v).compile().as_text(), f"{name}: no cuDNN attention in the fused program"
    want = value_and_grads("explicit")(*(x.astype(jnp.float32) for x in (q, k, v)))
    for got, ref in zip(jax.tree.leaves(fused(q, k, v)), jax.tree.leaves(want)):
      got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
      error = np.linalg.norm(got - ref) / np.linalg.norm(ref)
      assert error < 2e-2, (name, error)


def test_bad_arguments():
  q, k, v = _qkv(n=1 + 20)
  with pytest.raises(ValueError, match="exceeds the 4 blocks"):  # where a model is built (svitt.Model.from_config)
    bs.check_pattern_args(bs.num_blocks(20, 5), 3, 2)
  with pytest.raises(ValueError, match="odd"):
    bs.block_sparse_attention(q, k, v, block_size=5, local_blocks=2, random_blocks=0)
  with pytest.raises(ValueError, match="positive"):
    bs.block_sparse_attention(q, k, v, block_size=0)
  with pytest.raises(ValueError, match="permutation"):
    bs.block_sparse_attention(q, k, v, block_size=5, local_blocks=1, random_blocks=1, order=np.arange(7))


@pytest.mark.parametrize("frames,keep,edges_m,sparsity", [(4, 0.7, 1.48, 0.80), (8, 0.6, 2.60, 0.91),
                                                          (16, 0.5, 4.61, 0.96)])
def test_table_a1_edges_and_sparsity(frames, keep, edges_m, sparsity):
  out = bs.svitt_edges(frames, visual_keep=keep, multimodal_keep=0.1)
  assert abs(out["edges"] / 1e6 - edges_m) / edges_m < 0.005  # table A1 rounds to 3 digits
  assert round(out["sparsity"], 2) == sparsity
  # The per-layer count of the kernel matches equation 1 plus the [CLS] edges.
  assert bs.edge_count(784, 1, 56, 1, 3) == 784 * 224 + 2 * 784 + 1
