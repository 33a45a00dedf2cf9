"""The one layer stack (vlm/nn/transformer.py `Stack`) for every block kind: scan = unrolled, remat keeps the
gradients, per-layer options, cross-attention through the kernel registry, and the kernels' import direction."""
import ast
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.models import beit
from vlm.models import bert
from vlm.nn import dropout as dropout_lib
from vlm.nn import kernels
from vlm.nn import transformer
from vlm.nn.kernels import dense

ROOT = pathlib.Path(__file__).resolve().parents[1]
BS = dict(block_size=4, local_blocks=1, random_blocks=2, num_global=1, eval_seed=2)


def _stacked(params, name):
  """Unrolled params ({name}_00, _01, ...) -> the scanned layout ({name}, arrays with a leading layer axis)."""
  layers = sorted(k for k in params if k.startswith(name + "_"))
  out = {k: v for k, v in params.items() if k not in layers}
  out[name] = jax.tree.map(lambda *xs: np.stack(xs), *[params[k] for k in layers])
  return out


def _random_params(module, *args, **kwargs):
  """Parameters of `module` drawn in numpy (no init to compile), the same for every build of the module."""
  shapes = jax.eval_shape(lambda r: module.init(r, *args, **kwargs), jax.random.key(0))["params"]
  shapes = jax.tree.map(lambda p: getattr(p, "value", p), shapes, is_leaf=lambda p: hasattr(p, "value"))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def _cases():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 1 + 16, 16)), jnp.float32)
  mask = jnp.ones((2, 17), bool).at[1, 12:].set(False)
  video = jnp.asarray(rng.normal(size=(2, 2, 16, 16, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(5, 50, (2, 6)))
  text_mask = jnp.asarray([[1] * 6, [1, 1, 1, 1, 0, 0]])
  context = jnp.asarray(rng.normal(size=(2, 9, 24)), jnp.float32)
  context_mask = jnp.ones((2, 9), bool).at[0, 7:].set(False)
  vit = lambda **kw: transformer.Encoder(num_layers=3, num_heads=2, mlp_dim=32, dropout_rate=0.0,
                                         attention_dropout_rate=0.0, relative_position_buckets=8, **kw)
  vit_bs = lambda **kw: transformer.Encoder(num_layers=3, num_heads=2, mlp_dim=32, dropout_rate=0.0,
                                            attention_dropout_rate=0.0, attention="block_sparse", attention_kwargs=BS,
                                            **kw)
  video_beit = lambda **kw: beit.VideoBeit(num_layers=3, hidden_size=16, mlp_dim=32, num_heads=2, patch_size=8,
                                           frames=2, image_size=16, attention="block_sparse", attention_kwargs=BS,
                                           **kw)
  fusion = lambda **kw: bert.BertEncoder(vocab_size=50, num_layers=3, hidden_size=16, mlp_dim=32, num_heads=2,
                                         max_positions=16, cross_attention_from=0, dropout_rate=0.0,
                                         attention_dropout_rate=0.0, **kw)
  decoder = lambda **kw: bert.BertEncoder(vocab_size=50, num_layers=2, hidden_size=16, mlp_dim=32, num_heads=2,
                                          max_positions=16, cross_attention_from=0, causal=True, dropout_rate=0.0,
                                          attention_dropout_rate=0.0, **kw)
  return {
      "vit": (vit, "encoderblock", (x,), dict(mask=mask)),
      "vit, block-sparse": (vit_bs, "encoderblock", (x,), dict(mask=mask)),
      "beit, block-sparse": (video_beit, "layer", (video,), {}),
      "bert cross-attention": (fusion, "layer", (ids, text_mask), dict(context=context, context_mask=context_mask)),
      "bert causal decoder": (decoder, "layer", (ids, text_mask), dict(context=context)),
  }


@pytest.mark.parametrize("kind", list(_cases()))
def test_scan_matches_unrolled_and_remat_keeps_gradients(kind):
  """Each block kind through the one stack: the scanned stack (params stacked, the layer index traced; per-layer
  block-sparse evaluation patterns included) gives the unrolled stack's outputs, and remat (unrolled and scanned)
  its gradients."""
  make, layer_name, args, kwargs = _cases()[kind]
  params = _random_params(make(), *args, **kwargs)
  cot = None

  def loss(module, p):
    y, aux = module.apply({"params": p}, *args, **kwargs)
    return jnp.sum(jnp.sin(y) * cot), (y, aux)

  y_plain, _ = make().apply({"params": params}, *args, **kwargs)
  cot = jnp.asarray(np.random.default_rng(2).normal(size=y_plain.shape), jnp.float32)
  grad = lambda module, p: jax.jit(jax.grad(lambda p: loss(module, p)[0]))(p)
  g_plain = grad(make(), params)
  scanned = _stacked(params, layer_name)
  y_scan, aux = make(scan=True).apply({"params": scanned}, *args, **kwargs)
  np.testing.assert_allclose(y_scan, y_plain, atol=1e-5)
  assert len(aux["layers"]) == (3 if "decoder" not in kind else 2)
  for got, want in ((grad(make(remat=True), params), g_plain),
                    (grad(make(scan=True, remat=True), scanned), _stacked(g_plain, layer_name))):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, atol=1e-4)


def test_scan_refuses_layers_that_differ():
  """BERT with cross-attention from layer 1, or BEiT pruning after layer 1: the layers differ, so no scan."""
  ids = jnp.zeros((1, 4), jnp.int32)
  enc = bert.BertEncoder(vocab_size=50, num_layers=2, hidden_size=16, mlp_dim=32, num_heads=2, max_positions=8,
                         cross_attention_from=1, scan=True)
  with pytest.raises(ValueError, match="scan runs identical layers"):
    jax.eval_shape(lambda r: enc.init(r, ids, context=jnp.zeros((1, 3, 16))), jax.random.key(0))
  vit = beit.VideoBeit(num_layers=2, hidden_size=16, mlp_dim=32, num_heads=2, patch_size=8, frames=1,
                       image_size=16, prune_after=(1,), keep_rate=0.5, scan=True)
  with pytest.raises(ValueError, match="scan runs identical layers"):
    jax.eval_shape(lambda r: vit.init(r, jnp.zeros((1, 1, 16, 16, 3))), jax.random.key(0))


def test_beit_drop_path_reads_the_same_rate_at_a_traced_layer():
  """Stochastic depth under scan: the layer's rate read at the traced index (exact threshold and divisor tables)
  drops the same examples, with the same scaling, as the static rate of the unrolled layer."""
  block = beit.BeitBlock(num_heads=2, mlp_dim=32, grid=(1, 2, 2), drop_path_rates=(0.0, 0.3, 0.6))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(16, 5, 16)), jnp.float32)
  carry = {"x": x, "positions": jnp.broadcast_to(jnp.arange(5), (16, 5))}
  params = block.init(jax.random.key(0), carry, {}, 0, False)
  rngs = {"dropout": jax.random.key(4)}
  ones = jnp.ones((64, 5, 16))
  drop = lambda layer: block.apply(
      params, ones, layer, True, rngs=rngs,
      method=lambda m, y, i, train: dropout_lib.drop_path(m, y, m.drop_path_rates, i, train))
  for layer in range(3):
    static = drop(layer)
    traced = jax.jit(drop)(jnp.int32(layer))
    np.testing.assert_array_equal(static, traced)
    rate = block.drop_path_rates[layer]
    assert set(np.unique(np.asarray(static))) <= {0.0, np.float32(1.0 / (1.0 - rate))}
  assert 0 < np.sum(np.asarray(static[:, 0, 0]) == 0.0) < 64  # rate 0.6: some examples dropped, not all
  static, _ = block.apply(params, carry, {}, 2, True, rngs=rngs)
  evaluation, _ = block.apply(params, carry, {}, 2, False)
  assert not np.allclose(static["x"], evaluation["x"])  # rate 0.6 over 16 examples drops some


def test_bert_cross_attention_takes_any_registered_kernel():
  """The cross-attention kernel is chosen by name like the self-attention's: a registered kernel sees the text
  queries against the context keys, and the dense kernel's implementations agree."""
  seen = []

  @kernels.register_attention("test_cross_recorder")
  def recorder(query, key, value, *, mask=None, bias=None, dropout_rate=0.0, dropout_rng=None, deterministic=True):
    seen.append((query.shape[1], key.shape[1]))
    return dense.dense_attention(query, key, value, mask=mask, bias=bias, implementation="explicit")

  ids = jnp.asarray(np.random.default_rng(5).integers(5, 50, (2, 6)))
  context = jnp.asarray(np.random.default_rng(6).normal(size=(2, 9, 24)), jnp.float32)
  make = lambda kernel, options=None: bert.BertEncoder(
      vocab_size=50, num_layers=2, hidden_size=16, mlp_dim=32, num_heads=2, max_positions=16, cross_attention_from=0,
      dropout_rate=0.0, attention_dropout_rate=0.0, cross_attention_kernel=kernel, cross_attention_kwargs=options)
  params = make("dense").init(jax.random.key(0), ids, context=context)["params"]
  want, _ = make("dense", {"implementation": "explicit"}).apply({"params": params}, ids, context=context)
  got, _ = make("test_cross_recorder").apply({"params": params}, ids, context=context)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert seen == [(6, 9), (6, 9)]
  fused, _ = make("dense", {"implementation": "fused"}).apply({"params": params}, ids, context=context)
  np.testing.assert_allclose(fused, want, atol=1e-5)


def _vlm_imports(path: pathlib.Path) -> set[str]:
  """The vlm modules a file imports at module level (`import a.b`, `from a import b` as module or name)."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names if a.name.startswith("vlm"))
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlm"):
      for a in node.names:
        candidate = f"{node.module}.{a.name}"
        where = ROOT / candidate.replace(".", "/")
        names.add(candidate if where.with_suffix(".py").exists() or where.is_dir() else node.module)
  return names


def test_layers_import_kernels_and_never_the_reverse():
  """vlm/nn has no import cycle: walking the module-level imports of vlm.nn finds none, and the kernels import
  no layer (only the registry, each other and the dropout hash); each module imports first in a fresh process."""
  files = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "vlm" / "nn").rglob("*.py")}
  module = {name.removesuffix(".__init__"): path for path, name in files.items()}
  graph = {name: {m for m in _vlm_imports(path) if m in module} for name, path in module.items()}
  for name, deps in graph.items():
    if name.startswith("vlm.nn.kernels"):
      assert deps <= {"vlm.nn.kernels.registry", "vlm.nn.kernels.dense", "vlm.nn.kernels.block_sparse",
                      "vlm.nn.dropout"}, (name, deps)
  state = {}

  def visit(name, path):
    state[name] = "open"
    for dep in graph[name]:
      assert state.get(dep) != "open", f"import cycle: {' -> '.join(path + [name, dep])}"
      if dep not in state:
        visit(dep, path + [name])
    state[name] = "done"

  for name in graph:
    if name not in state:
      visit(name, [])
  first = ["vlm.nn.kernels.block_sparse", "vlm.nn.kernels.dense", "vlm.nn.kernels.registry", "vlm.nn.attention",
           "vlm.nn.transformer"]
  script = "; ".join(f"subprocess.run([sys.executable, '-c', 'import {m}'], check=True)" for m in first)
  subprocess.run([sys.executable, "-c", f"import subprocess, sys; {script}"], check=True, cwd=ROOT)
