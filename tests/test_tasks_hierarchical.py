"""The hierarchical contrastive task on tiny HierVL: child and parent steps against the losses computed from the
model's own embeddings, gradients reaching the shared aggregator, and bad configs."""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm.losses import egonce
from vlm.models import hiervl
from vlm.tasks import hierarchical


def _config(**task):
  return ml_collections.ConfigDict(dict(
      model=dict(name="hiervl", variant="tiny", aggregator_positions=4),
      task=dict(name="hierarchical", **task), input=dict(num_frames=2, crop_size=16, max_text_len=6)))


def _text(rng, shape):
  text = rng.integers(5, 150, shape + (6,)).astype(np.int32)
  text[..., 0], text[..., 4:] = 2, 0
  return text, (text > 0).astype(np.int32)


def test_child_and_parent_steps():
  task = hierarchical.Task(_config())
  rng = np.random.default_rng(0)
  params = flax.core.meta.unbox(task.init_variables(jax.random.key(0), task.dummy_batch(2))["params"])
  # Jitted: eager op-by-op tracing of these calls took minutes on 2 cores.
  loss_fn = jax.jit(lambda p, b: task.loss_fn(p, {}, b, jax.random.key(1), train=False))
  embed_v = jax.jit(lambda x: task.model.apply({"params": params}, x, method=hiervl.Model.embed_video))
  embed_t = jax.jit(lambda x, k: task.model.apply({"params": params}, x, k, method=hiervl.Model.embed_text))
  text, mask = _text(rng, (4,))
  nouns = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
  verbs = np.eye(3, dtype=np.float32)[[1, 1, 1, 2]]
  child = {"video": rng.uniform(-1, 1, (4, 2, 16, 16, 3)).astype(np.float32), "text": text, "text_mask": mask,
           "nouns": nouns, "verbs": verbs}
  loss, (m, _) = loss_fn(params, child)
  v, t = embed_v(child["video"]), embed_t(text, mask)
  want, _ = egonce.egonce_loss(v, t, nouns=nouns, verbs=verbs, temperature=0.05)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(m["parent_step"]) == 0 and float(m["summary_loss"]) == 0

  ntext, nmask = _text(rng, (3, 4))
  stext, smask = _text(rng, (3,))
  group_mask = np.ones((3, 4), np.float32)
  group_mask[2, 3] = 0
  parent = {"video": rng.uniform(-1, 1, (3, 4, 2, 16, 16, 3)).astype(np.float32), "text": ntext,
            "text_mask": nmask, "summary": stext, "summary_mask": smask, "group_mask": group_mask}
  loss, (m, _) = loss_fn(params, parent)
  agg = jax.jit(lambda x: task.model.apply({"params": params}, x, group_mask, method=hiervl.Model.aggregate))
  av = agg(embed_v(parent["video"].reshape(12, 2, 16, 16, 3)).reshape(3, 4, -1))
  at = agg(embed_t(ntext.reshape(12, 6), nmask.reshape(12, 6)).reshape(3, 4, -1))
  s = embed_t(stext, smask)
  want = (egonce.egonce_loss(at, s, nouns=None, verbs=None, positives="diagonal")[0]
          + egonce.egonce_loss(av, s, nouns=None, verbs=None, positives="diagonal")[0])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert float(m["parent_step"]) == 1 and float(m["clip_loss"]) == 0
  grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, {}, parent, jax.random.key(2), train=True)[0]))(params)
  for part in ("aggregator", "video_encoder", "text_encoder"):
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads[part]))) > 0, part
  # Only-video-with-summary: the narrations' aggregate leaves the loss.
  only_video = hierarchical.Task(_config(summary_terms=("video_summary",)))
  loss_v, _ = jax.jit(lambda p, b: only_video.loss_fn(p, {}, b, jax.random.key(1), train=False))(params, parent)
  np.testing.assert_allclose(loss_v, egonce.egonce_loss(av, s, nouns=None, verbs=None, positives="diagonal")[0],
                             rtol=1e-5)


def test_bad_task_options():
  with pytest.raises(ValueError, match="summary_terms"):
    hierarchical.Task(_config(summary_terms=("video_text",)))
  with pytest.raises(ValueError, match="config.task.tau: not an option"):
    hierarchical.Task(_config(tau=0.1))


def test_a_model_without_an_aggregator_is_named():
  config = _config()
  config.model = dict(name="tubevit", variant="tiny")
  with pytest.raises(TypeError, match="HierarchicalModel.*lacks: aggregate, embed_text, embed_video"):
    hierarchical.Task(config)


def test_parent_step_bench_objective():
  """`bench --objective=parent` times the parent step: episodes of aggregator_positions clips, same variables."""
  from vlm import protocols  # pylint: disable=g-import-not-at-top
  task = hierarchical.Task(_config())
  assert isinstance(task, protocols.PartialObjectives)
  parent = task.bench_objectives()["parent"]
  batch = parent.dummy_batch(2)
  assert batch["video"].shape == (2, 4, 2, 16, 16, 3) and batch["text"].shape == (2, 4, 6)
  assert batch["summary"].shape == (2, 6) and batch["group_mask"].shape == (2, 4)
  params = parent.init_variables(jax.random.key(0), batch)["params"]
  loss, (m, _) = jax.jit(lambda p, b: parent.loss_fn(p, {}, b, jax.random.key(1), train=False))(
      flax.core.meta.unbox(params), batch)
  assert float(m["parent_step"]) == 1 and np.isfinite(float(loss))
