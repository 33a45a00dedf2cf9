"""HierVL model: the shared aggregator (average and self-attention: masking, positions, limits), the dual encoder's
shapes and construction from a config, and its classification backbone."""
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm.models import hiervl


def _emb(b=3, n=5, e=16, seed=0):
  return np.random.default_rng(seed).normal(size=(b, n, e)).astype(np.float32)


def test_average_aggregator_is_the_mean_of_the_real_clips():
  x = _emb()
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.float32)
  got = hiervl.Aggregator(kind="average").apply({}, jnp.asarray(x), jnp.asarray(mask))
  want = np.stack([x[i, :int(mask[i].sum())].mean(0) for i in range(3)])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_self_attention_aggregator_masks_padding_and_reads_order():
  agg = hiervl.Aggregator(num_layers=2, num_heads=4, num_positions=6, drop_path_rate=0.1)
  x = _emb()
  params = flax.core.meta.unbox(agg.init(jax.random.key(0), jnp.asarray(x))["params"])
  assert params["pos_embedding"].shape == (1, 6, 16)
  assert "bias" not in params["encoder"]["layer_00"]["attention"]["query"]  # no q/k/v bias, as released
  assert "bias" in params["encoder"]["layer_00"]["attention"]["out"]
  mask = np.ones((3, 5), np.float32)
  mask[1, 3:] = 0
  out = agg.apply({"params": params}, jnp.asarray(x), jnp.asarray(mask))
  changed = x.copy()
  changed[1, 3:] = 100.0  # padding's values never reach the output
  np.testing.assert_allclose(agg.apply({"params": params}, jnp.asarray(changed), jnp.asarray(mask)), out,
                             rtol=1e-5, atol=1e-5)
  reversed_ = agg.apply({"params": params}, jnp.asarray(x[:, ::-1]), None)
  assert not np.allclose(reversed_, agg.apply({"params": params}, jnp.asarray(x), None), atol=1e-4)  # positions
  a = agg.apply({"params": params}, jnp.asarray(x), train=True, rngs={"dropout": jax.random.key(1)})
  b = agg.apply({"params": params}, jnp.asarray(x), train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)  # stochastic depth in training
  with pytest.raises(ValueError, match="aggregator_positions"):
    agg.apply({"params": params}, jnp.asarray(_emb(n=7)))


def _config(**model):
  return ml_collections.ConfigDict(dict(model=dict(name="hiervl", variant="tiny", **model),
                                        input=dict(num_frames=2, crop_size=16)))


def test_tiny_model_embeds_video_text_and_episodes():
  model = hiervl.Model.from_config(_config())
  video = np.random.default_rng(0).uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
  text = np.array([[2, 10, 11, 3, 0], [2, 12, 3, 0, 0]], np.int32)
  variables = model.init(jax.random.key(0), video, text, (text > 0).astype(np.int32))
  params = flax.core.meta.unbox(variables["params"])
  assert set(params) == {"video_encoder", "text_encoder", "video_proj", "text_proj", "aggregator"}
  assert "token_type_embeddings" not in params["text_encoder"]  # DistilBERT
  out = model.apply({"params": params}, video, text, (text > 0).astype(np.int32))
  assert {k: v.shape for k, v in out.items()} == {"video": (2, 64), "text": (2, 64), "episode": (2, 64)}
  # One aggregator for both modalities: aggregating text embeddings uses the same parameters.
  t = model.apply({"params": params}, text, (text > 0).astype(np.int32), method=hiervl.Model.embed_text)
  agg = model.apply({"params": params}, jnp.stack([t, t], 1), method=hiervl.Model.aggregate)
  assert agg.shape == (2, 64)
  backbone = hiervl.build_backbone(_config())
  bparams = flax.core.meta.unbox(backbone.init(jax.random.key(0), video)["params"])
  assert jax.tree.map(np.shape, bparams["video_encoder"]) == jax.tree.map(np.shape, params["video_encoder"])
  feats, _ = backbone.apply({"params": {"video_encoder": params["video_encoder"]}}, video)
  assert feats.shape == (2, 64)


def test_bad_configs_name_the_key():
  with pytest.raises(ValueError, match="config.model.aggregator='max'"):
    hiervl.Model.from_config(_config(aggregator="max"))
  with pytest.raises(ValueError, match="config.model.agg_layers: not a field"):
    hiervl.Model.from_config(_config(agg_layers=2))
  with pytest.raises(ValueError, match="config.model.frames is derived"):
    hiervl.Model.from_config(_config(frames=8))
  with pytest.raises(ValueError, match="drop rate"):
    hiervl.Model.from_config(_config(aggregator_drop_path_rate=1.0))


def test_load_starts_from_hf_timesformer_and_distilbert(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from vlm.train import init as init_lib  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  tsf = transformers.TimesformerModel(transformers.TimesformerConfig(
      image_size=16, patch_size=8, num_frames=1, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=128))
  tsf.save_pretrained(str(tmp_path / "tsf"))
  dbert = transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=160, dim=64, n_layers=2, n_heads=2,
                                                                     hidden_dim=128))
  dbert.save_pretrained(str(tmp_path / "dbert"))
  config = _config()
  config.init = dict(options=dict(video_timesformer=str(tmp_path / "tsf" / "model.safetensors"),
                                  text_distilbert=str(tmp_path / "dbert" / "model.safetensors")))
  model = hiervl.Model.from_config(config)
  video = np.zeros((1, 2, 16, 16, 3), np.float32)
  text = np.array([[2, 10, 3, 0]], np.int32)
  fresh = flax.core.meta.unbox(model.init(jax.random.key(0), video, text, (text > 0).astype(np.int32))["params"])
  params = init_lib.load_params(config, model, fresh, None)
  got_q = params["video_encoder"]["layer_01"]["temporal_attention"]["query"]["kernel"]
  want_q = tsf.state_dict()["encoder.layer.1.temporal_attention.attention.qkv.weight"].numpy()[:64].T
  np.testing.assert_allclose(np.asarray(got_q).reshape(64, 64), want_q, rtol=1e-6)
  time = np.asarray(params["video_encoder"]["time_embedding"])  # 1 frame -> 2 frames, zeros appended
  np.testing.assert_allclose(time[0, 0], tsf.state_dict()["embeddings.time_embeddings"].numpy()[0, 0], rtol=1e-6)
  np.testing.assert_array_equal(time[0, 1], 0.0)
  np.testing.assert_allclose(params["text_encoder"]["word_embeddings"],
                             dbert.state_dict()["embeddings.word_embeddings.weight"].numpy(), rtol=1e-6)
  np.testing.assert_array_equal(params["aggregator"]["cls"], fresh["aggregator"]["cls"])  # fresh: not in the files
  config.init.options.video_vit = "x.npz"
  with pytest.raises(ValueError, match="choose one start"):
    init_lib.load_params(config, model, fresh, None)


def test_checkpoints_that_do_not_fit_name_the_parameter(tmp_path):
  """An aggregator table of another length, or an HF TimeSformer of another patch size: an error naming the key,
  never a silent broadcast."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from vlm.train import init as init_lib  # pylint: disable=g-import-not-at-top
  video = np.zeros((1, 2, 16, 16, 3), np.float32)
  text = np.array([[2, 10, 3, 0]], np.int32)

  def fresh(config):
    model = hiervl.Model.from_config(config)
    return model, flax.core.meta.unbox(model.init(jax.random.key(0), video, text,
                                                  (text > 0).astype(np.int32))["params"])

  config = _config(aggregator_positions=4)
  model, params = fresh(config)
  _, restored = fresh(_config(aggregator_positions=8))
  with pytest.raises(ValueError, match="aggregator/pos_embedding"):
    init_lib.load_params(config, model, params, restored)
  torch.manual_seed(0)
  tsf = transformers.TimesformerModel(transformers.TimesformerConfig(
      image_size=16, patch_size=4, num_frames=2, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=128))
  tsf.save_pretrained(str(tmp_path / "tsf4"))
  config.init = dict(options=dict(video_timesformer=str(tmp_path / "tsf4" / "model.safetensors")))
  with pytest.raises(ValueError, match="video_encoder/patch_embedding"):
    init_lib.load_params(config, model, params, None)
