"""Long-term anticipation: the edit-distance metric against hand-computed cases, the task's loss against the
decoder's own logits, the frozen encoder, and bad configs."""
import flax
import jax
import ml_collections
import numpy as np
import pytest

from vlm.evals import anticipation as lta_eval
from vlm.tasks import anticipation


def test_edit_distance_hand_computed():
  assert lta_eval.edit_distance([1, 2, 3], [1, 2, 3]) == 0
  assert lta_eval.edit_distance([1, 2, 3], [1, 3, 3]) == 1  # one substitution
  assert lta_eval.edit_distance([1, 2, 3, 4], [2, 3, 4, 5]) == 2  # a deletion and an insertion
  assert lta_eval.edit_distance([], [1, 2]) == 2
  assert lta_eval.edit_distance("kitten", "sitting") == 3
  # Best of K over Z = 4: the second candidate is one substitution away.
  cands = np.array([[0, 0, 0, 0], [1, 2, 3, 0]])
  assert lta_eval.best_edit_distance(cands, np.array([1, 2, 3, 4])) == pytest.approx(0.25)


def test_candidates_put_the_argmax_first_and_draw_the_rest():
  logp = np.log(np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]]))
  c = lta_eval.candidates_from(logp, 200, np.random.default_rng(0))
  assert c.shape == (200, 3) and list(c[0]) == [1, 0, 0]
  np.testing.assert_allclose(c[1:].mean(0), [0.9, 0.2, 0.5], atol=0.1)  # draws follow the distributions


def _config(**task):
  task = dict(dict(name="anticipation", observed=2, horizon=3, num_verbs=4, num_nouns=3, head_dropout=0.0), **task)
  return ml_collections.ConfigDict(dict(
      model=dict(name="hiervl", variant="tiny", aggregator_positions=4), task=task,
      input=dict(num_frames=2, crop_size=16, max_text_len=6)))


def test_loss_is_the_cross_entropy_of_each_head_on_its_future_clip():
  task = anticipation.Task(_config())
  variables = task.init_variables(jax.random.key(0), task.dummy_batch(2))
  params = flax.core.meta.unbox(variables["params"])
  assert "model" in params and "head_verb_3" in params and "head_noun_1" in params
  assert "text_encoder" in params["model"]  # the whole pre-trained model: its checkpoint loads as it is
  rng = np.random.default_rng(0)
  verb = rng.integers(0, 4, (3, 5)).astype(np.int32)
  noun = rng.integers(0, 3, (3, 5)).astype(np.int32)
  mask = np.ones((3, 5), np.int32)
  mask[2, 4] = 0  # a padding clip: its target does not count
  batch = {"video": rng.uniform(-1, 1, (3, 5, 2, 16, 16, 3)).astype(np.float32), "verb": verb, "noun": noun,
           "group_mask": mask}
  loss, (metrics, _) = jax.jit(lambda p, b: task.loss_fn(p, {}, b, jax.random.key(1), train=False))(params, batch)
  logp = jax.jit(lambda p, v: task.anticipate({"params": p}, v))(params, batch["video"][:, :2])
  want = 0.0
  for name, y in (("verb", verb), ("noun", noun)):
    lp = np.asarray(logp[name])  # [B, Z, C]
    nll = -np.take_along_axis(lp, y[:, 2:, None], axis=-1)[..., 0]
    w = mask[:, 2:].astype(float)
    want += (nll * w).sum() / w.sum()
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert 0 <= float(metrics["top1_verb"]) <= 1


def test_frozen_encoder_gets_no_update_and_the_decoder_learns():
  from vlm.train import optim  # pylint: disable=g-import-not-at-top
  task = anticipation.Task(_config(targets=("verb",)))
  params = flax.core.meta.unbox(task.init_variables(jax.random.key(0), task.dummy_batch(2))["params"])
  tx, _ = optim.make_optimizer(dict(name="adam", lr=1e-2, frozen=(r"model/(video|text)_.*",),
                                    lr_scale=((r"model/aggregator/.*", 0.1),)), params, 10)
  rng = np.random.default_rng(1)
  batch = {"video": rng.uniform(-1, 1, (4, 5, 2, 16, 16, 3)).astype(np.float32),
           "verb": np.tile(np.array([[0, 1, 2, 3, 0]], np.int32), (4, 1))}
  grad_fn = jax.jit(jax.value_and_grad(lambda p: task.loss_fn(p, {}, batch, jax.random.key(0), train=True)[0]))
  state = tx.init(params)
  first = None
  p = params
  for _ in range(15):
    loss, g = grad_fn(p)
    first = float(loss) if first is None else first
    updates, state = tx.update(g, state, p)
    p = jax.tree_util.tree_map(lambda a, u: a + u, p, updates)
  assert float(loss) < 0.5 * first  # the same future every time: the decoder learns it
  same = jax.tree_util.tree_map(lambda a, b: bool(np.all(np.asarray(a) == np.asarray(b))), params["model"], p["model"])
  assert all(jax.tree_util.tree_leaves(same["video_encoder"])) and all(jax.tree_util.tree_leaves(same["text_encoder"]))
  assert not all(jax.tree_util.tree_leaves(same["aggregator"]))


def test_bad_configs_and_batches_are_named():
  with pytest.raises(ValueError, match="targets"):
    anticipation.Task(_config(targets=("action",)))
  with pytest.raises(ValueError, match="horizon"):
    anticipation.Task(_config(horizon=0))
  task = anticipation.Task(_config())
  short = {"video": np.zeros((1, 4, 2, 16, 16, 3), np.float32), "verb": np.zeros((1, 4), np.int32),
           "noun": np.zeros((1, 4), np.int32)}
  with pytest.raises(ValueError, match="group.size"):
    task.split(short)
  with pytest.raises(KeyError, match="noun"):
    task.split({"video": np.zeros((1, 5, 2, 16, 16, 3), np.float32), "verb": np.zeros((1, 5), np.int32)})
