"""TW-BERT's pieces: the per-frame-[CLS] TimeSformer block (numpy reference), the frame selector, the model's
stages, BERT initialisation of the cross-modal encoder, and the settings rejected before anything compiles."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm.models import timesformer
from vlm.models import twbert
from vlm.nn import frame_selection


def _ln(x, p, eps=1e-6):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _mha(p, x, heads):
  """x [S, D] self-attention with our [D, H, K] kernels."""
  q, k, v = (np.einsum("sd,dhk->shk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
  logits = np.einsum("shk,thk->hst", q, k) / np.sqrt(q.shape[-1])
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  out = np.einsum("hst,thk->shk", a, v)
  return np.einsum("shk,hkd->sd", out, p["out"]["kernel"]) + p["out"]["bias"]


def _gelu(x):
  from math import erf, sqrt  # pylint: disable=g-import-not-at-top
  return 0.5 * x * (1 + np.vectorize(lambda v: erf(v / sqrt(2)))(x))


def test_frame_cls_block_matches_a_numpy_reference():
  """TW-BERT's block: each frame's [CLS] takes part in the temporal and the spatial attention like a patch."""
  b, t, m, d, heads = 2, 3, 5, 8, 2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, t * m, d)).astype(np.float32)
  block = timesformer.DividedSpaceTimeBlock(num_heads=heads, mlp_dim=16, frames=t, frame_cls=True)
  params = nn.meta.unbox(block.init(jax.random.key(0), {"x": x}, {}, 0, False)["params"])
  params = jax.tree.map(lambda v: rng.normal(size=v.shape).astype(np.float32) * 0.5, params)
  out, _ = block.apply({"params": params}, {"x": x}, {}, 0, False)
  p = jax.tree.map(np.asarray, params)
  ref = x.reshape(b, t, m, d).astype(np.float64)
  for i in range(b):
    y = ref[i].copy()
    for j in range(m):  # temporal: position j of every frame, over time
      att = _mha(p["temporal_attention"], _ln(y[:, j], p["ln_temporal"]), heads)
      y[:, j] += att @ p["temporal_dense"]["kernel"] + p["temporal_dense"]["bias"]
    for f in range(t):  # spatial: within each frame, [CLS_f] included
      y[f] += _mha(p["attention"], _ln(y[f], p["ln_attention"]), heads)
    h = _gelu(_ln(y, p["ln_mlp"]) @ p["mlp"]["wi"]["kernel"] + p["mlp"]["wi"]["bias"])
    ref[i] = y + h @ p["mlp"]["wo"]["kernel"] + p["mlp"]["wo"]["bias"]
  np.testing.assert_allclose(np.asarray(out["x"]), ref.reshape(b, t * m, d), rtol=2e-4, atol=2e-4)


def _encoder(**kw):
  args = dict(num_layers=2, hidden_size=16, mlp_dim=32, num_heads=2, patch_size=8, frames=6, image_size=16,
              drop_path_rate=0.0, frame_cls=True, select_after=(1, 2), select_frames=(4, 2), selection_samples=64)
  return timesformer.TimeSformer(**{**args, **kw})


def test_selection_keeps_the_best_frames_in_order_and_trains_the_scorer():
  enc = _encoder()
  rng = np.random.default_rng(1)
  video = jnp.asarray(rng.uniform(-1, 1, size=(2, 6, 16, 16, 3)).astype(np.float32))
  text = jnp.asarray(rng.normal(size=(2, 16)).astype(np.float32))
  variables = jax.jit(enc.init)(jax.random.key(0), video, text)
  x, aux = jax.jit(enc.apply)(variables, video, text)
  assert x.shape == (2, 2 * 5, 16) and aux["frames"] == 2 and aux["pooled"].shape == (2, 16)
  kept = np.asarray(aux["selected_frames"])
  assert kept.shape == (2, 2) and (np.diff(kept, axis=1) > 0).all() and kept.max() < 6
  # The second stage's choice is the top-2 of its scores over the 4 frames the first stage kept.
  first, second = (np.asarray(s) for s in aux["frame_scores"])
  top4 = np.sort(np.argsort(-first, axis=1)[:, :4], axis=1)
  top2 = np.sort(np.argsort(-second, axis=1)[:, :2], axis=1)
  np.testing.assert_array_equal(kept, np.take_along_axis(top4, top2, axis=1))
  # Text-free: evenly spaced frames, no scorer.
  _, free = jax.jit(enc.apply)(variables, video)
  np.testing.assert_array_equal(np.asarray(free["selected_frames"]), [[0, 5], [0, 5]])  # 0 2 3 5, then 0 and 5
  # Training: perturbed Top-K from the 'dropout' rng; the scorers receive gradients through it.
  loss = lambda prm: enc.apply({"params": prm}, video, text, train=True, rngs={"dropout": jax.random.key(2)}
                               )[1]["pooled"].sum()
  grads = jax.jit(jax.grad(loss))(variables["params"])
  for stage in (0, 1):
    g = nn.meta.unbox(grads[f"frame_selector_{stage}"]["score"]["kernel"])
    assert float(jnp.abs(g).sum()) > 0, stage
  with pytest.raises(ValueError, match="'dropout' rng"):
    enc.apply(variables, video, text, train=True)


@pytest.mark.parametrize("overrides, message", [
    ({"model.select_frames": (7, 4)}, "keeping 7 frames after layer 2 of the 6"),
    ({"model.select_frames": (3, 4)}, "keeping 4 frames after layer 4 of the 3"),
    ({"model.select_after": (4, 2)}, "increasing 1-based layers"),
    ({"model.select_after": (2, 9)}, "increasing 1-based layers"),
    ({"model.select_after": (2,)}, "one frame count per selection layer"),
    ({"model.selection_samples": 0}, "num_samples=0"),
    ({"model.selection_sigma": 0.0}, "sigma=0.0"),
    ({"model.cross_attention": "w2w"}, "cross_attention='w2w'"),
    ({"model.pool_patches": 3}, "pool_patches=3"),
])
def test_bad_settings_are_named_before_building(overrides, message):
  config = ml_collections.ConfigDict({"model": {"name": "twbert", "variant": "tiny"},
                                      "input": {"num_frames": 6, "crop_size": 32}})
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
    twbert.Model.from_config(config)


def _tiny(**model):
  return twbert.Model.from_config(ml_collections.ConfigDict(
      {"model": {"name": "twbert", "variant": "tiny", "selection_samples": 16, **model},
       "input": {"num_frames": 6, "crop_size": 32}}))


@pytest.mark.parametrize("mode", ["t2w", "p2w"])
def test_stages_shapes(mode):
  model = _tiny(cross_attention=mode)
  b, length = 2, 7
  video = jnp.zeros((b, 6, 32, 32, 3))
  text = jnp.ones((b, length), jnp.int32)
  mask = jnp.ones((b, length), jnp.int32).at[1, 5:].set(0)
  variables = jax.jit(model.init)(jax.random.key(0), video, text, mask)
  out = jax.jit(model.apply)(variables, video, text, mask)
  assert out["vtm_logits"].shape == (b, 2) and out["mlm_logits"].shape == (b, length, 160)
  hidden, _ = model.apply(variables, text, mask, method=twbert.Model.encode_text)
  tokens, feat, aux = model.apply(variables, video, hidden[:, 0], method=twbert.Model.video_features)
  # 4 kept frames of a 4 x 4 patch grid pooled 2 x 2 -> 4 tokens each, after the video [CLS].
  assert tokens.shape == (b, 1 + 4 * 4, 64) and feat.shape == (b, model.embed_dim)
  assert aux["selected_frames"].shape == (b, 4)
  fused, fuse_aux = model.apply(variables, hidden, mask, tokens, with_aux=True, method=twbert.Model.fuse)
  assert fused.shape == (b, length + 1, 64)
  weights = fuse_aux["layers"][-1]["frame_weights"]
  assert weights.shape == (b, 2, length, 4)
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)


def test_bert_layers_initialise_the_text_and_cross_modal_encoders(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  hf = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=160, hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
      max_position_embeddings=512))
  hf.save_pretrained(tmp_path, safe_serialization=True)
  model = _tiny()
  video, text = jnp.zeros((2, 6, 32, 32, 3)), jnp.ones((2, 5), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), video, text, text)["params"])
  import flax  # pylint: disable=g-import-not-at-top
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  init = ml_collections.ConfigDict({"options": {"bert": os.path.join(tmp_path, "model.safetensors")}})
  loaded = twbert.load(flat, None, init, model)
  state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  # Layer 2 of BERT (the first cross-modal layer): q / k / v in W2P and T2W, the output dense in both outputs.
  q = state["bert.encoder.layer.2.attention.self.query.weight"].T.reshape(64, 2, 32)
  for name in ("query", "word_query"):
    np.testing.assert_array_equal(loaded[f"cross_encoder/layer_00/attention/{name}/kernel"], q)
  out = state["bert.encoder.layer.2.attention.output.dense.weight"].T.reshape(2, 32, 64)
  for name in ("out", "trajectory_out"):
    np.testing.assert_array_equal(loaded[f"cross_encoder/layer_00/attention/{name}/kernel"], out)
  np.testing.assert_array_equal(loaded["cross_norm/scale"], state["bert.encoder.layer.3.output.LayerNorm.weight"])
  np.testing.assert_array_equal(loaded["text_encoder/layer_01/mlp/wi/kernel"],
                                state["bert.encoder.layer.1.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(loaded["mlm_head/bias"], state["cls.predictions.bias"])
  # Everything of f_t, f_c and the MLM head comes from the file; f_v and the heads stay fresh.
  filled = {k.split("/")[0] for k in loaded}
  assert filled == {"text_encoder", "cross_encoder", "cross_norm", "mlm_head"}
  assert all(k in loaded for k in flat if k.startswith(("text_encoder/", "cross_encoder/")))


def test_evenly_spaced():
  np.testing.assert_array_equal(np.asarray(frame_selection.evenly_spaced(8, 4)), [0, 2, 5, 7])
  np.testing.assert_array_equal(np.asarray(frame_selection.evenly_spaced(5, 1)), [0])
