"""TW-BERT pre-training through the matching task: the text-conditioned video, ALBEF's momentum encoder and
queue (numbers against their definitions), the distilled loss against numpy, and the bad settings."""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm import config_lib
from vlm.losses import contrastive
from vlm.tasks import matching

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg="tiny", **overrides):
  config = config_lib.load_config(os.path.join(ROOT, "configs/twbert/pretrain.py") + ":" + arg)
  small = {"model.video_layers": 2, "model.select_after": (1, 2), "model.select_frames": (3, 2),
           "model.selection_samples": 16, "model.text_layers": 1, "model.cross_layers": 1,
           "input.batch_size": 4, "input.num_frames": 4, "task.queue_size": 8}
  with config.unlocked():
    for dotted, value in {**small, **overrides}.items():
      node = config
      *parents, leaf = dotted.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def _batch(task, b=4, seed=0):
  rng = np.random.default_rng(seed)
  batch = task.dummy_batch(b)
  batch["video"] = rng.uniform(-1, 1, batch["video"].shape).astype(np.float32)
  text = rng.integers(5, 150, batch["text"].shape).astype(np.int32)
  text[:, 0], text[:, 6], text[:, 7:] = 2, 3, 0
  batch["text"], batch["text_mask"] = text, (text > 0).astype(np.int32)
  return batch


def test_distilled_nce_matches_numpy():
  rng = np.random.default_rng(0)
  b, q = 3, 4
  logits, teacher = rng.normal(size=(b, b + q)), rng.normal(size=(b, b + q))
  valid = np.array([1, 1, 1, 1, 1, 0, 0], bool)
  loss, _ = contrastive.distilled_nce_loss(jnp.asarray(logits), jnp.asarray(teacher), valid=jnp.asarray(valid),
                                           alpha=0.4)
  ref = 0.0
  for i in range(b):
    lg, tg = logits[i][valid], teacher[i][valid]
    p_t = np.exp(tg - tg.max()) / np.exp(tg - tg.max()).sum()
    target = 0.4 * p_t + 0.6 * np.eye(len(lg))[i]
    ref += -(target * (lg - np.log(np.exp(lg).sum()))).sum() / b
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  plain, _ = contrastive.distilled_nce_loss(jnp.asarray(logits), jnp.asarray(teacher), alpha=0.0)
  lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(float(plain), -np.mean([lsm[i, i] for i in range(b)]), rtol=1e-5)


def test_momentum_encoder_and_queue_follow_albef():
  task = matching.Task(_config())
  batch = _batch(task)
  variables = flax.core.meta.unbox(task.init_variables(jax.random.key(0), batch))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  assert sorted(state) == ["momentum", "queue"] and state["queue"]["video"].shape == (8, 256)

  @jax.jit
  def step(params, state, rng):
    (loss, (m, new_state)), g = jax.value_and_grad(
        lambda p: task.loss_fn(p, state, batch, rng, train=True), has_aux=True)(params)
    return loss, m, new_state, g

  loss, m, s1, g = step(params, state, jax.random.key(1))
  assert np.isfinite(float(loss)) and float(m["queue_filled"]) == 0.5
  # Step 1 copies the online weights (whatever init loaded), then enqueues this batch's momentum features.
  for name in task.model.momentum_modules:
    jax.tree.map(np.testing.assert_array_equal, s1["momentum"][name], params[name])
  assert int(s1["queue"]["ptr"]) == 4 and int(s1["queue"]["filled"]) == 4
  np.testing.assert_allclose(np.linalg.norm(np.asarray(s1["queue"]["video"][:4]), axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(s1["queue"]["video"][4:]), 0.0)
  # The frame selector learns from the loss (no auxiliary loss): gradients reach both scorers.
  for stage in (0, 1):
    assert float(jnp.abs(g["video_encoder"][f"frame_selector_{stage}"]["score"]["kernel"]).sum()) > 0
  # Step 2 with moved weights: momentum = 0.995 old + 0.005 new; the queue fills up and then wraps around.
  moved = jax.tree.map(lambda x: x + 0.1, params)
  _, m2, s2, _ = step(moved, s1, jax.random.key(2))
  for name in task.model.momentum_modules:
    jax.tree.map(lambda new, old, p: np.testing.assert_allclose(new, 0.995 * old + 0.005 * p, rtol=1e-6,
                                                                atol=1e-7), s2["momentum"][name],
                 s1["momentum"][name], moved[name])
  assert float(m2["queue_filled"]) == 1.0 and int(s2["queue"]["ptr"]) == 0
  np.testing.assert_array_equal(np.asarray(s2["queue"]["video"][:4]), np.asarray(s1["queue"]["video"][:4]))
  _, _, s3, _ = step(moved, s2, jax.random.key(3))
  assert int(s3["queue"]["ptr"]) == 4
  assert not np.allclose(np.asarray(s3["queue"]["video"][:4]), np.asarray(s2["queue"]["video"][:4]))
  # Evaluation batches: the in-batch form, the state untouched.
  _, (_, same) = task.loss_fn(params, s1, batch, jax.random.key(4), train=False)
  assert same is s1


@pytest.mark.parametrize("overrides, message", [
    ({"task.queue_size": 6}, "queue_size=6: expected a multiple of the global batch"),
    ({"task.momentum": 1.0}, "momentum=1.0"),
    ({"task.momentum": 0.0}, "queue_size needs a momentum encoder"),
    ({"task.distill_alpha": 1.5}, "distill_alpha=1.5"),
    ({"task.queue_length": 6}, "config.task.queue_length: not an option of the matching task"),
])
def test_bad_objective_settings_are_named(overrides, message):
  with pytest.raises(ValueError, match=message):
    matching.Task(_config(**overrides))
