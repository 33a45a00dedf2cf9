"""TimeSformer: parity with HF transformers' TimesformerModel (random weights saved in the test), scanned and
unrolled alike; image-ViT inflation (a static clip gives the image ViT's response); temporal-table resizing."""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.models import hf_weights
from vlm.models import timesformer
from vlm.models import vit_checkpoints

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FRAMES, SIZE, PATCH, WIDTH, HEADS, LAYERS = 3, 32, 8, 32, 2, 2


def _model(**kw):
  return timesformer.TimeSformer(num_layers=LAYERS, hidden_size=WIDTH, mlp_dim=64, num_heads=HEADS,
                                 patch_size=PATCH, frames=FRAMES, image_size=SIZE, **{"drop_path_rate": 0.0, **kw})


def _randomised(model):
  with torch.no_grad():  # HF starts CLS, tables and biases near 0: randomise so the parity means something
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope="module")
def hf_timesformer(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.TimesformerConfig(image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, hidden_size=WIDTH,
                                          num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                          intermediate_size=64)
  model = _randomised(transformers.TimesformerModel(config))
  path = tmp_path_factory.mktemp("hf_timesformer")
  model.save_pretrained(str(path))
  return model, os.path.join(path, "model.safetensors")


def _video(n=2, frames=FRAMES, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, frames, SIZE, SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize("scan", [False, True])
def test_hidden_states_match_hf_timesformer(hf_timesformer, scan):
  model, path = hf_timesformer
  video = _video()
  with torch.no_grad():
    want = model(pixel_values=torch.from_numpy(video.transpose(0, 1, 4, 2, 3))).last_hidden_state.numpy()
  params = timesformer.from_hf_timesformer(hf_weights.read_weights(path), HEADS)
  if scan:  # the scanned model stacks the layers on a leading axis
    layers = [params.pop(f"layer_{i:02d}") for i in range(LAYERS)]
    params["layer"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  ours = _model(scan=scan)
  fresh = flax.core.meta.unbox(ours.init(jax.random.key(0), jnp.asarray(video))["params"])
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, params)
  got, aux = ours.apply({"params": params}, jnp.asarray(video))
  # HF's tokens are patch-major (1 + n T + t); ours frame-major (1 + t N + n).
  n = (SIZE // PATCH) ** 2
  order = np.concatenate([[0], 1 + (np.arange(n)[:, None] + n * np.arange(FRAMES)[None]).reshape(-1)])
  np.testing.assert_allclose(np.asarray(got)[:, order], want, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(aux["pooled"], want[:, 0], atol=1e-4, rtol=1e-4)


def test_image_vit_inflation_gives_the_image_response_on_a_static_clip(tmp_path):
  torch.manual_seed(1)
  config = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=64, image_size=SIZE, patch_size=PATCH, layer_norm_eps=1e-6)
  vit_model = _randomised(transformers.ViTModel(config, add_pooling_layer=False))
  vit_model.save_pretrained(str(tmp_path))  # the file layout (in-memory names differ across HF versions)
  params = timesformer.from_vit(vit_checkpoints.read_vit(str(tmp_path / "model.safetensors")), FRAMES)
  image = _video(n=2, frames=1, seed=3)[:, 0]
  with torch.no_grad():
    want = vit_model(pixel_values=torch.from_numpy(image.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  clip = np.repeat(image[:, None], FRAMES, axis=1)
  got, aux = _model().apply({"params": params}, jnp.asarray(clip))
  np.testing.assert_allclose(aux["pooled"], want[:, 0], atol=1e-4, rtol=1e-4)
  n = (SIZE // PATCH) ** 2
  for t in range(FRAMES):  # every frame's patches are the image's
    np.testing.assert_allclose(np.asarray(got)[:, 1 + t * n:1 + (t + 1) * n], want[:, 1:], atol=1e-4, rtol=1e-4)


def test_gradients_reach_the_temporal_branch_and_drop_path_trains():
  model = _model(drop_path_rate=0.2)
  video = jnp.asarray(_video())
  params = flax.core.meta.unbox(model.init(jax.random.key(0), video)["params"])
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, video, train=True,
                                                 rngs={"dropout": jax.random.key(1)})[1]["pooled"] ** 2))(params)
  assert float(jnp.abs(grads["layer_01"]["temporal_dense"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["time_embedding"]).sum()) > 0
  # The temporal Dense starts at zero, so the temporal attention behind it has no gradient until it moves.
  assert float(jnp.abs(grads["layer_00"]["temporal_attention"]["query"]["kernel"]).sum()) == 0
  a = model.apply({"params": params}, video, train=True, rngs={"dropout": jax.random.key(1)})[0]
  b = model.apply({"params": params}, video, train=True, rngs={"dropout": jax.random.key(2)})[0]
  assert not np.allclose(a, b)


def test_time_table_resize_and_bad_clips():
  table = np.arange(2 * 3, dtype=np.float32).reshape(1, 2, 3)
  np.testing.assert_array_equal(timesformer.resize_time_table(table, 4)[0, 2:], 0.0)
  np.testing.assert_array_equal(timesformer.resize_time_table(table, 4, "nearest")[0], table[0, [0, 0, 1, 1]])
  lin = timesformer.resize_time_table(table, 3, "linear")[0]
  np.testing.assert_allclose(lin[1], table[0].mean(0), atol=1e-6)
  np.testing.assert_array_equal(timesformer.resize_time_table(table, 1), table[:, :1])
  with pytest.raises(ValueError, match="expected one of"):
    timesformer.resize_time_table(table, 4, "cubic")
  with pytest.raises(ValueError, match="TimeSformer built for 3 frames"):
    _model().init(jax.random.key(0), jnp.zeros((1, 4, SIZE, SIZE, 3)))
