"""Learning-rate schedules (numerically) and optimizer options: weight-decay mask, frozen groups, clipping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm.train import optim


def _lr(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


def test_contrastive_quarter_cosine():
  # VATT B.4: peak 1e-4, 10k warmup, 500k steps, quarter-period cosine down to 5e-5.
  s = optim.make_schedule(1e-4, dict(kind="warmup_cosine", warmup_steps=10_000, end_lr=5e-5,
                                     period="quarter"), total_steps=500_000)
  np.testing.assert_allclose(_lr(s, [0, 5_000, 10_000]), [0.0, 5e-5, 1e-4], rtol=1e-6, atol=1e-12)
  mid = 10_000 + 245_000  # half of the decay
  np.testing.assert_allclose(float(s(mid)), 5e-5 + 5e-5 * math.cos(math.pi / 4), rtol=1e-5)
  np.testing.assert_allclose(_lr(s, [500_000, 600_000]), [5e-5, 5e-5], rtol=1e-6)
  decay = _lr(s, np.linspace(10_000, 500_000, 50))
  assert np.all(np.diff(decay) <= 1e-12)
  # Quarter period: slow at first, fastest at the end (unlike the half-period cosine).
  assert decay[0] - decay[1] < decay[-2] - decay[-1]


def test_vatt_finetune_half_cosine_to_zero():
  # VATT B.5: SGD 0.005, 2.5k warmup, 100k steps, half-period cosine to 0.
  s = optim.make_schedule(0.005, dict(kind="cosine", warmup_steps=2_500), total_steps=100_000)
  decay_steps = 97_500
  for frac, expected in [(0.0, 0.005), (0.25, 0.005 * (1 + math.cos(math.pi / 4)) / 2), (0.5, 0.0025),
                         (1.0, 0.0)]:
    np.testing.assert_allclose(float(s(2_500 + frac * decay_steps)), expected, rtol=1e-5, atol=1e-10)
  np.testing.assert_allclose(float(s(1_250)), 0.0025, rtol=1e-6)


def test_linear_constant_alpha_and_decay_steps():
  lin = optim.make_schedule(1.0, dict(kind="linear", warmup_steps=10, end_lr=0.1), total_steps=110)
  np.testing.assert_allclose(_lr(lin, [5, 10, 60, 110, 200]), [0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)
  const = optim.make_schedule(2.0, dict(kind="constant", warmup_steps=4, warmup_init_lr=1.0),
                              total_steps=10)
  np.testing.assert_allclose(_lr(const, [0, 2, 4, 9]), [1.0, 1.5, 2.0, 2.0], rtol=1e-6)
  cos = optim.make_schedule(1.0, dict(kind="cosine", alpha=0.1, decay_steps=10), total_steps=100)
  np.testing.assert_allclose(_lr(cos, [0, 5, 10, 50]), [1.0, 0.55, 0.1, 0.1], rtol=1e-6)
  np.testing.assert_allclose(float(optim.make_schedule(3.0, None, 10)(7)), 3.0)


@pytest.mark.parametrize("bad, match", [
    (dict(kind="cosine", warmup_step=3), "warmup_step"),
    (dict(kind="exp"), "Unknown schedule kind"),
    (dict(kind="linear", period="quarter"), "period"),
    (dict(kind="cosine", end_lr=0.1, alpha=0.1), "not both"),
])
def test_schedule_config_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    optim.make_schedule(1.0, bad, total_steps=10)


def _params():
  return {"enc": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
                  "norm": {"scale": jnp.ones((2,))}},
          "embed": {"embedding": jnp.ones((5, 2))},
          "head": {"kernel": jnp.ones((2, 4)), "bias": jnp.ones((4,))}}


def _step(tx, params, grads):
  updates, _ = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates)


def test_weight_decay_default_mask_is_kernels_only():
  params = _params()
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx, _ = optim.make_optimizer(dict(name="adamw", lr=1.0, weight_decay=0.5), params, total_steps=10)
  new = _step(tx, params, zeros)
  # Zero gradients: only the decoupled decay moves the parameters, and only kernels.
  np.testing.assert_allclose(new["enc"]["dense"]["kernel"], 0.5)
  np.testing.assert_allclose(new["head"]["kernel"], 0.5)
  for leaf in (new["enc"]["dense"]["bias"], new["enc"]["norm"]["scale"], new["embed"]["embedding"]):
    np.testing.assert_allclose(leaf, 1.0)
  tx, _ = optim.make_optimizer(dict(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.5,
                                    wd_mask=["embed/.*"]), params, total_steps=10)
  new = _step(tx, params, zeros)
  np.testing.assert_allclose(new["embed"]["embedding"], 0.5)
  np.testing.assert_allclose(new["head"]["kernel"], 1.0)


def test_frozen_groups_do_not_move_and_have_no_moments():
  params = _params()
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  tx, _ = optim.make_optimizer(dict(name="adam", lr=0.1, frozen=["enc/.*", "embed/.*"]), params, 10)
  new = _step(tx, params, grads)
  np.testing.assert_allclose(new["enc"]["dense"]["kernel"], 1.0)
  np.testing.assert_allclose(new["embed"]["embedding"], 1.0)
  assert float(new["head"]["kernel"][0, 0]) < 1.0
  n_state = sum(x.size for x in jax.tree_util.tree_leaves(tx.init(params)) if x.ndim)
  assert n_state == 2 * (8 + 4)  # Adam mu and nu for the head only
  with pytest.raises(ValueError, match="matches no parameter"):
    optim.make_optimizer(dict(name="adam", lr=0.1, frozen=["encoder/.*"]), params, 10)


def test_grad_clip_and_unknown_keys():
  params = {"w": {"kernel": jnp.zeros((4,))}}
  tx, _ = optim.make_optimizer(dict(name="sgd", lr=1.0, momentum=0.0, grad_clip_norm=1.0), params, 10)
  new = _step(tx, params, {"w": {"kernel": jnp.full((4,), 10.0)}})
  np.testing.assert_allclose(np.linalg.norm(new["w"]["kernel"]), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="weightdecay"):
    optim.make_optimizer(dict(name="sgd", lr=1.0, weightdecay=0.1), params, 10)
  with pytest.raises(ValueError, match="lamb"):
    optim.make_optimizer(dict(name="lamb", lr=1.0), params, 10)


def test_step_schedule_drops_to_the_floor_after_the_decay_steps():
  # EPIC-KITCHENS MIR fine-tuning: 3e-5 for the first 100 "epochs" (here steps), 1e-6 after.
  s = optim.make_schedule(3e-5, dict(kind="step", decay_steps=100, end_lr=1e-6), total_steps=200)
  np.testing.assert_allclose(_lr(s, [0, 50, 99, 100, 150, 199]), [3e-5] * 3 + [1e-6] * 3, rtol=1e-6)


def test_lr_scale_equals_a_lower_rate_for_its_group_inside_frozen():
  params = _params()
  rng = np.random.default_rng(0)
  grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  scaled, _ = optim.make_optimizer(dict(name="adamw", lr=0.1, weight_decay=0.1, frozen=["embed/.*"],
                                        lr_scale=[("head/.*", 0.25)]), params, 10)
  plain, _ = optim.make_optimizer(dict(name="adamw", lr=0.1, weight_decay=0.1, frozen=["embed/.*"]), params, 10)
  low, _ = optim.make_optimizer(dict(name="adamw", lr=0.025, weight_decay=0.1, frozen=["embed/.*"]), params, 10)
  a, b, c = (_step(tx, params, grads) for tx in (scaled, plain, low))
  np.testing.assert_allclose(a["head"]["kernel"], c["head"]["kernel"], rtol=1e-6)  # the group at 0.25 lr
  np.testing.assert_allclose(a["enc"]["dense"]["kernel"], b["enc"]["dense"]["kernel"], rtol=1e-6)  # the rest not
  np.testing.assert_allclose(a["embed"]["embedding"], params["embed"]["embedding"])  # frozen stays frozen
  with pytest.raises(ValueError, match="lr_scale"):
    optim.make_optimizer(dict(name="adam", lr=0.1, lr_scale=[("head/.*",)]), params, 10)
