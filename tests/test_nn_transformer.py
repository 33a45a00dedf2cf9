"""Pre-norm Transformer encoder: scan / remat equivalence, logical axis names."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import kernels
from vlm.nn.kernels import dense
from vlm.nn import logical
from vlm.nn import transformer

KW = dict(num_layers=2, num_heads=2, mlp_dim=32, relative_position_buckets=8)


def _x():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32), jnp.array([[1, 1, 1, 0, 0], [1] * 5])


def _stack_layers(params):
  """Unrolled params (encoderblock_00, _01, ...) -> the scanned layout (encoderblock, leading layer axis)."""
  blocks = sorted(k for k in params if k.startswith("encoderblock_"))
  out = {k: v for k, v in params.items() if k not in blocks}
  out["encoderblock"] = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[params[k] for k in blocks])
  return out


@pytest.mark.parametrize("kernel", [{}, dict(attention="block_sparse", attention_kwargs=dict(
    block_size=1, local_blocks=1, random_blocks=1, num_global=1, eval_seed=2))])
def test_scan_and_remat_match_unrolled(kernel):
  """Also with block-sparse attention: the scanned layers get their index traced and evaluate with the unrolled
  layers' per-layer patterns (4 local tokens in blocks of 1, 2 key blocks each: patterns differ by layer)."""
  x, mask = _x()
  KW = dict(globals()["KW"], **kernel)  # pylint: disable=invalid-name
  plain = transformer.Encoder(**KW)
  shapes = nn.unbox(jax.eval_shape(lambda r: plain.init(r, x, mask=mask), jax.random.PRNGKey(0))["params"])
  rng = np.random.default_rng(0)  # numpy values: no init to compile
  params = jax.tree_util.tree_map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
  scanned_params = _stack_layers(params)

  def loss(module, p):
    y, aux = module.apply({"params": p}, x, mask=mask)
    return jnp.sum(y ** 2 * mask[..., None]), (y, aux)

  (_, (y_plain, aux)), g_plain = jax.jit(jax.value_and_grad(lambda p: loss(plain, p), has_aux=True))(params)
  assert y_plain.shape == x.shape and aux["pre_norm"].shape == x.shape
  scan = transformer.Encoder(**KW, scan=True)
  np.testing.assert_allclose(jax.jit(lambda p: loss(scan, p)[1][0])(scanned_params), y_plain, atol=1e-5)
  remat = transformer.Encoder(**KW, scan=True, remat=True)
  (_, (y, _)), g = jax.jit(jax.value_and_grad(lambda p: loss(remat, p), has_aux=True))(scanned_params)
  np.testing.assert_allclose(y, y_plain, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(_stack_layers(g_plain))):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_logical_axis_names():
  x, mask = _x()
  enc = transformer.Encoder(**KW, scan=True)
  variables = jax.eval_shape(lambda r: enc.init(r, x, mask=mask), jax.random.PRNGKey(0))
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(variables)["params"], sep="/")
  assert tuple(specs["encoderblock/attention/query/kernel"]) == ("layers", "embed", "heads", "kv")
  assert tuple(specs["encoderblock/mlp/wi/kernel"]) == ("layers", "embed", "mlp")
  assert tuple(specs["encoderblock/mlp/wo/kernel"]) == ("layers", "mlp", "embed")
  assert tuple(specs["encoder_norm/scale"]) == ("embed",)
  assert tuple(specs["relative_position_bias/rel_embedding"]) == (None, "heads")


def test_names_belong_to_the_parallel_vocabulary():
  try:
    from vlm.parallel import axes  # pylint: disable=g-import-not-at-top
  except ImportError:
    return  # The vocabulary module is optional for the library itself.
  assert set(logical.ALL) <= set(axes.VOCABULARY), set(logical.ALL) - set(axes.VOCABULARY)


def test_registered_kernel_with_options_runs_under_scan_and_remat():
  seen = []

  @kernels.register_attention("test_scaled_dense")
  def scaled(query, key, value, *, mask=None, bias=None, dropout_rate=0.0, dropout_rng=None, deterministic=True,
             query_scale=1.0):
    seen.append(query_scale)
    return dense.dense_attention(query * query_scale, key, value, mask=mask, bias=bias)

  x, mask = _x()
  enc = transformer.Encoder(**KW, scan=True, remat=True, attention="test_scaled_dense",
                            attention_kwargs={"query_scale": 0.5})
  out = jax.eval_shape(lambda r: enc.init_with_output({"params": r, "dropout": r}, x, mask=mask,
                                                      train=True)[0][0], jax.random.PRNGKey(0))
  assert out.shape == x.shape and seen and set(seen) == {0.5}
