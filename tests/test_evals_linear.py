"""Linear evaluation: the B.8 low-rank classifier and the appendix-C linear SVM on synthetic features, and the
evaluator end to end on a frozen tiny VATT (features of the built-in train split, scored on its test split)."""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm import config_lib
from vlm.evals import linear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blobs(n=600, d=16, c=4, seed=0, spread=0.6):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(c, d)) * 2.0
  y = rng.integers(c, size=n)
  return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int32)


def test_component_mask_keeps_exactly_k():
  for seed in range(5):
    m = np.asarray(linear.component_mask(jax.random.key(seed), 128, 0.1))
    assert set(np.unique(m)) == {0.0, 1.0} and m.sum() == 13
  masks = np.stack([np.asarray(linear.component_mask(jax.random.key(s), 128, 0.1)) for s in range(200)])
  assert masks.mean(axis=0).min() > 0.0  # every component gets trained


def test_low_rank_eval_logits_are_the_full_product():
  params = linear.low_rank_init(jax.random.key(0), 8, 3, 16)
  x = jax.random.normal(jax.random.key(1), (5, 8))
  np.testing.assert_allclose(linear.low_rank_logits(params, x),
                             x @ (params["U"] @ params["V"]) + params["b"], rtol=1e-5, atol=1e-5)
  ones = jnp.ones((16,))
  np.testing.assert_allclose(linear.low_rank_logits(params, x, ones, 1.0), linear.low_rank_logits(params, x),
                             rtol=1e-6)


def test_low_rank_classifier_learns_separable_classes():
  x, y = _blobs()
  params = linear.fit_low_rank(x[:400], y[:400], 4, components=32, keep=0.25, lr=5e-3, batch_size=64,
                               steps=600)
  acc = (np.asarray(linear.low_rank_logits(params, jnp.asarray(x[400:]))).argmax(1) == y[400:]).mean()
  assert acc > 0.9


def test_svm_reaches_the_optimum_of_its_objective():
  x, y = _blobs(n=300, spread=2.0)  # overlapping classes: the hinge terms are active
  c = 0.5
  params = linear.fit_svm(x, y, 4, C=c, max_iters=1000, tol=1e-8)
  y_pm = 2.0 * jax.nn.one_hot(y, 4) - 1.0
  grad = jax.grad(linear.svm_objective)(params, jnp.asarray(x), y_pm, c)
  scale = float(jnp.abs(linear.svm_objective(params, jnp.asarray(x), y_pm, c)))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad)) < 1e-3 * scale
  # Independent check of optimality: random perturbations never lower the (convex) objective.
  base = float(linear.svm_objective(params, jnp.asarray(x), y_pm, c))
  rng = np.random.default_rng(0)
  for _ in range(10):
    moved = jax.tree.map(lambda p: p + 1e-2 * rng.normal(size=p.shape).astype(np.float32), params)
    assert float(linear.svm_objective(moved, jnp.asarray(x), y_pm, c)) >= base - 1e-4 * abs(base)
  acc = (np.asarray(jnp.asarray(x) @ params["W"] + params["b"]).argmax(1) == y).mean()
  assert acc > 0.7


def test_bad_options():
  x, y = _blobs(n=20)
  with pytest.raises(ValueError, match="keep"):
    linear.fit_low_rank(x, y, 4, keep=0.0, steps=1)


def test_linear_eval_on_frozen_tiny_vatt():
  """The config's evaluator on the tiny VATT video tower (freshly initialised: no train step to compile):
  features of both splits, both classifiers fitted and scored. Learning itself is tested above on synthetic
  features; configs/vatt/README.md reports the tiny pre-trained model's figures."""
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/linear_eval.py:tiny"))
  small = dict(num_train=128, num_test=64, num_images=8, num_frames=16, sample_rate=16_000)
  for key in ("train_input", "input"):
    config.evals.linear[key].data.options = dict(small)
  config.evals.linear.low_rank.steps = 100
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  with setup.context():
    variables = task.init_variables(jax.random.key(0), task.dummy_batch(8))
    variables = flax.core.meta.unbox(variables)
    results = linear.Evaluator(config, config.evals.linear, task, setup.mesh).run(variables, 0)
  assert results["num_train"] == 128 and results["num_test"] == 64
  assert results["chance_top1"] == 100.0 / 12
  for name in ("low_rank", "svm"):
    assert 0.0 <= results[f"{name}/top1"] <= results[f"{name}/top5"] <= 100.0, results
