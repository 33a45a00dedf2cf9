"""VATT on the classification path: its video tower as a backbone, initialised from a pre-training params tree."""
import os

import flax
import jax
import numpy as np
import pytest

from vlm import config_lib
from vlm.tasks import classification
from vlm.tasks import contrastive
from vlm.train import init as init_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vatt_backbone_loads_the_pretrained_video_tower():
  pre_config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/pretrain.py:tiny"))
  pre = contrastive.Task(pre_config)
  pre_batch = pre.dummy_batch(2)
  pre_params = jax.tree.map(np.asarray, flax.core.meta.unbox(
      pre.init_variables(jax.random.key(3), pre_batch)["params"]))

  config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/pretrain.py:tiny"))
  with config.unlocked():
    config.task = dict(name="classification", heads={"videos": 12})
    config.model.droptoken_rate = 0.0
    config.init.assignment_map = ((r"backbone/(.*)", r"\1"), (r"head_.*", None))
  task = classification.Task(config)
  video = np.random.default_rng(0).uniform(-1, 1, (2,) + task.clip_shape + (3,)).astype(np.float32)
  init = task.init_variables(jax.random.key(0), {"video": video})["params"]
  params = init_lib.load_params(config, task.model, init, pre_params)
  got = task.features({"params": params}, {"video": video})
  want, _ = pre.model.apply({"params": pre_params}, video, method=lambda m, v: m.video(v, train=False))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(params["head_videos"]["kernel"], 0.0)  # fresh zero head
  # A classifier checkpoint loads under its own names (no map); a wrong shape is an error naming the parameter.
  with config.unlocked():
    config.init.assignment_map = ()
  again = init_lib.load_params(config, task.model, init, params)
  np.testing.assert_array_equal(again["backbone"]["video"]["tokenizer"]["conv"]["kernel"],
                                params["backbone"]["video"]["tokenizer"]["conv"]["kernel"])
  with config.unlocked():
    config.init.assignment_map = ((r"backbone/(.*)", r"\1"), (r"head_.*", None))
  bad = jax.tree.map(lambda x: x, pre_params)
  bad["video"]["tokenizer"]["conv"]["kernel"] = np.zeros((1, 1, 1, 3, 64), np.float32)
  with pytest.raises(ValueError, match=r"backbone/video/tokenizer/conv/kernel: the init checkpoint \(1, 1, 1, 3, 64\)"):
    init_lib.load_params(config, task.model, init, bad)


def test_finetune_config_resamples_position_tables_at_a_larger_crop():
  pre_config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/pretrain.py:tiny"))
  pre = contrastive.Task(pre_config)
  pre_params = jax.tree.map(np.asarray, flax.core.meta.unbox(
      pre.init_variables(jax.random.key(3), pre.dummy_batch(2))["params"]))
  config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/finetune.py:tiny"))
  with config.unlocked():
    config.input.crop_size = 48  # 6 x 6 patches of 8 pixels instead of the pre-training 4 x 4
    config.model.video_pos_buckets = (4, 6, 6)
  task = classification.Task(config)
  batch = task.dummy_batch(2)
  params = init_lib.load_params(config, task.model, task.init_variables(jax.random.key(0), batch)["params"],
                                pre_params)
  tables = params["backbone"]["video"]["posemb"]
  assert {k: v.shape for k, v in tables.items() if k.endswith("_embedding")} == {
      k: (n, 64) for k, n in zip(("temporal_embedding", "vertical_embedding", "horizontal_embedding"), (4, 6, 6))}
  loss, (metrics, _) = task.loss_fn(params, {}, batch, jax.random.key(1), train=True)
  np.testing.assert_allclose(loss, np.log(12) * 0.9 + 0.1 * np.log(12), rtol=1e-5)  # zero head: uniform
