"""Classification task: losses against numpy, head routing by `dataset`, multi-label, errors."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm.tasks import classification


def _config(**task):
  return ml_collections.ConfigDict(dict(
      model=dict(name="tubevit", variant="tiny", pool="gap", base_kernel=(1, 4, 4),
                 tubes=[dict(kernel=(1, 4, 4), stride=(1, 4, 4))]),
      task=dict(name="classification", heads={"videos": 3, "images": 5}, head_init="xavier", **task),
      input=dict(num_frames=2, crop_size=8, batch_size=4)))


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))


def test_loss_routes_each_example_to_its_head_with_label_smoothing():
  task = classification.Task(_config(label_smoothing=0.2))
  batch = task.dummy_batch(4)
  batch["video"] = np.random.default_rng(0).normal(size=batch["video"].shape).astype(np.float32)
  assert [name for name, _ in task.heads] == ["images", "videos"]  # ConfigDict order (sorted keys)
  batch["label"] = np.array([4, 2, 0, 1], np.int32)
  batch["dataset"] = np.array([0, 1, 0, 1], np.int32)
  variables = task.init_variables(jax.random.key(0), batch)
  loss, (metrics, _) = task.loss_fn(variables["params"], {}, batch, jax.random.key(1), train=False)
  logits, _ = task.model.apply(variables, batch["video"])
  want = []
  for i, (label, ds) in enumerate(zip(batch["label"], batch["dataset"])):
    name, c = task.heads[ds]
    target = np.full(c, 0.2 / c)
    target[label] += 0.8
    want.append(-(target * _log_softmax(logits[name][i])).sum())
  np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
  assert set(metrics) >= {"loss", "top1", "fraction/videos", "fraction/images"}
  np.testing.assert_allclose(metrics["fraction/images"], 0.5)
  # Gradients reach only the heads that have examples.
  batch["dataset"] = np.ones(4, np.int32)
  batch["label"] = np.array([2, 1, 0, 1], np.int32)
  grads = jax.grad(lambda p: task.loss_fn(p, {}, batch, jax.random.key(1), train=False)[0])(variables["params"])
  value = lambda g: np.asarray(getattr(g, "value", g))
  assert np.abs(value(grads["head_videos"]["kernel"])).sum() > 0
  assert np.abs(value(grads["head_images"]["kernel"])).sum() == 0


def test_multilabel_sigmoid_loss_matches_numpy():
  config = _config(multilabel=True)
  config.task.heads = {"charades": 4}
  task = classification.Task(config)
  batch = task.dummy_batch(3)
  batch["labels"] = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], np.float32)
  variables = task.init_variables(jax.random.key(0), batch)
  batch["video"] = np.random.default_rng(1).normal(size=batch["video"].shape).astype(np.float32)
  loss, _ = task.loss_fn(variables["params"], {}, batch, jax.random.key(1), train=False)
  z = np.asarray(task.model.apply(variables, batch["video"])[0]["charades"], np.float64)
  p = 1 / (1 + np.exp(-z))
  want = -(batch["labels"] * np.log(p) + (1 - batch["labels"]) * np.log(1 - p)).mean()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_soft_targets_and_errors():
  task = classification.Task(_config())
  batch = task.dummy_batch(2)
  batch["labels"] = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)  # mixup targets for head 1
  batch["dataset"] = np.ones(2, np.int32)  # head 1 = "videos" (3 classes)
  variables = task.init_variables(jax.random.key(0), batch)
  loss, _ = task.loss_fn(variables["params"], {}, batch, jax.random.key(1), train=False)
  logits = task.model.apply(variables, batch["video"])[0]["videos"]
  np.testing.assert_allclose(loss, -(batch["labels"] * _log_softmax(logits)).sum(-1).mean(), rtol=1e-5)
  with pytest.raises(ValueError, match="head='nope'"):
    task.predict_logits(variables, batch, head="nope")
  bad = _config()
  bad.task.heads = {"videos": 0}
  with pytest.raises(ValueError, match=r"heads\['videos'\] = 0"):
    classification.Task(bad)
  bad = _config(label_smothing=0.1)
  with pytest.raises(ValueError, match="config.task.label_smothing: not an option of the classification task"):
    classification.Task(bad)
  bad = _config()
  bad.model.widht = 3
  with pytest.raises(ValueError, match="config.model.widht: not a field of vlm.models.tubevit.Model"):
    classification.Task(bad)


@pytest.mark.parametrize("dataset", ["charades", "ssv2"])
def test_tubevit_finetune_configs_build(dataset):
  """configs/tubevit/finetune.py: the table 1 settings, its pp strings parse, and a CPU-sized copy takes a loss."""
  import os  # pylint: disable=g-import-not-at-top
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  from vlm.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, f"configs/tubevit/finetune.py:dataset={dataset}"))
  expected = {"charades": (64, 1e-3, 0.2, 128, True, "charades"), "ssv2": (256, 2e-5, 0.3, 32, False, "table3")}
  assert (config.input.batch_size, config.optim.lr, config.model.dropout_rate, config.input.num_frames,
          config.task.multilabel, config.model.tubes) == expected[dataset]
  pp_lib.build(config.input.pp)
  pp_lib.build(config.evals[dataset].input.pp)
  assert ("mixup(alpha=0.3" in config.input.batch_pp) == (dataset == "ssv2")
  pp_lib.build(config.input.batch_pp or None)
  with config.unlocked():
    config.model.variant = "tiny"
    config.input.num_frames, config.input.crop_size = 32, 64  # the dataset's own tubes still fit
  task = classification.Task(config)
  batch = task.dummy_batch(2)
  classes = {"charades": 157, "ssv2": 174}[dataset]
  batch.pop("label", None)
  batch["labels"] = np.full((2, classes), 1.0 / classes, np.float32)  # soft targets (smoothing / mixup)
  variables = task.init_variables(jax.random.key(0), batch)
  loss, (metrics, _) = task.loss_fn(variables["params"], {}, batch, jax.random.key(1), train=True)
  # Zero-initialised heads: uniform predictions. Softmax CE against uniform targets is log C; the multi-label
  # sigmoid loss is log 2 per class.
  np.testing.assert_allclose(float(loss), np.log(2.0) if dataset == "charades" else np.log(classes), rtol=1e-4)
  assert np.isfinite(float(metrics["loss"]))
