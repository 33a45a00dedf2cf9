"""Image-ViT checkpoints into TubeViT: parity with HF transformers' ViT (random weights saved in the test), the
big_vision npz layout (per-layer and scanned models), kernel inflation to video tubes, and the errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm import config_lib
from vlm.train import init as init_lib
from vlm.models import hf_weights
from vlm.models import tubevit
from vlm.models import vit_checkpoints

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCH = 8
IMAGE_TUBE = (dict(kernel=(1, PATCH, PATCH), stride=(1, PATCH, PATCH), offset=(0, 0, 0)),)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
  """A random HF ViTModel the size of our tiny TubeViT (2 layers, width 64, 2 heads, MLP 128), saved to disk."""
  torch.manual_seed(0)
  config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                  image_size=32, patch_size=PATCH, layer_norm_eps=1e-6, hidden_act="gelu")
  model = transformers.ViTModel(config, add_pooling_layer=False).eval()
  with torch.no_grad():  # HF initialises CLS, positions and biases to ~0: randomise so the parity means something
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf_vit")
  model.save_pretrained(str(path))
  return model, os.path.join(path, "model.safetensors")


def _images(n=3):
  return np.random.default_rng(0).uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)


def _hf_hidden(model, images):
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  return out.last_hidden_state.numpy()


def _ours(vit, images, *, tubes=IMAGE_TUBE, base_kernel=(1, PATCH, PATCH), frames=1, scan=False):
  model = tubevit.Model(**tubevit.SIZES["tiny"], tubes=tubes, base_kernel=base_kernel, posemb="learned", pool="cls",
                        scan=scan)
  video = np.repeat(images[:, None], frames, axis=1)
  params = model.init(jax.random.key(1), jnp.asarray(video[:1]))["params"]
  params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
  loaded = vit_checkpoints.init_backbone(vit, params)
  _, aux = model.apply({"params": loaded}, jnp.asarray(video))
  return np.asarray(aux["tokens"])


def test_hf_vit_parity_on_images(hf_vit):
  model, path = hf_vit
  images = _images()
  expected = _hf_hidden(model, images)  # [B, 1 + 16, 64] after the final LayerNorm
  got = _ours(vit_checkpoints.read_vit(path), images)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_big_vision_npz_round_trip_and_scanned_model(hf_vit, tmp_path):
  model, path = hf_vit
  images = _images()
  expected = _hf_hidden(model, images)
  npz = str(tmp_path / "vit.npz")
  vit_checkpoints.to_big_vision_npz(vit_checkpoints.read_vit(path), npz)
  flat = hf_weights.read_weights(npz)
  assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in flat
  assert flat["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"].shape == (64, 2, 32)
  vit = vit_checkpoints.read_vit(npz)
  np.testing.assert_allclose(_ours(vit, images), expected, atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(_ours(vit, images, scan=True), expected, atol=2e-5, rtol=1e-4)
  # big_vision's own naming: `params/` prefix, LayerNorm_0/1, MlpBlock_0, position table at the top level.
  renamed = {"params/" + k.replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0")
             .replace("Transformer/posembed_input/", ""): v for k, v in flat.items()}
  np.testing.assert_allclose(_ours(vit_checkpoints.read_vit(renamed), images), expected, atol=2e-5, rtol=1e-4)


def test_inflated_tube_kernel_gives_the_image_response_on_a_static_clip(hf_vit):
  """A 4x8x8 tube inflated from the 8x8 patch kernel (repeat over time, / 4) sees a 4-frame static clip as the
  image: same tokens, same positions, same outputs as HF on the image."""
  model, path = hf_vit
  images = _images(2)
  tubes = (dict(kernel=(4, PATCH, PATCH), stride=(4, PATCH, PATCH), offset=(0, 0, 0)),)
  got = _ours(vit_checkpoints.read_vit(path), images, tubes=tubes, base_kernel=(4, PATCH, PATCH), frames=4)
  np.testing.assert_allclose(got, _hf_hidden(model, images), atol=2e-5, rtol=1e-4)


def test_inflate_patch_kernel_keeps_the_response_to_constant_input():
  kernel = np.random.default_rng(0).normal(size=(16, 16, 3, 5)).astype(np.float32)
  out = vit_checkpoints.inflate_patch_kernel(kernel, (8, 8, 8))
  assert out.shape == (8, 8, 8, 3, 5)
  # A constant clip responds as a constant image: sum over the window is preserved.
  np.testing.assert_allclose(out.sum(axis=(0, 1, 2)), kernel.sum(axis=(0, 1)), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(vit_checkpoints.inflate_patch_kernel(kernel, (1, 16, 16))[0], kernel)


def test_mismatches_name_the_parameter(hf_vit):
  _, path = hf_vit
  vit = vit_checkpoints.read_vit(path)
  small = tubevit.Model(**tubevit.SIZES["tiny"], tubes=IMAGE_TUBE, base_kernel=(1, PATCH, PATCH), posemb="learned")
  params = small.init(jax.random.key(0), jnp.zeros((1, 1, 40, 40, 3)))["params"]  # 25 tokens, not 16
  params = jax.tree.map(lambda p: getattr(p, "value", p), params, is_leaf=lambda p: hasattr(p, "value"))
  with pytest.raises(ValueError, match="position table.*pos_embedding"):
    vit_checkpoints.init_backbone(vit, params)
  vit.layers = vit.layers[:1]
  params16 = small.init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))["params"]
  params16 = jax.tree.map(lambda p: getattr(p, "value", p), params16, is_leaf=lambda p: hasattr(p, "value"))
  with pytest.raises(ValueError, match="1 layers; the model has 2"):
    vit_checkpoints.init_backbone(vit, params16)
  with pytest.raises(ValueError, match="Not an image-ViT checkpoint"):
    vit_checkpoints.read_vit({"foo": np.zeros(3)})
  with pytest.raises(ValueError, match=".npz.*.safetensors"):
    hf_weights.read_weights(__file__)


def test_classification_task_reads_a_vit_file(hf_vit):
  """`config.init.path=FILE`: vlm/models/tubevit.py `load` fills the backbone and keeps fresh heads."""
  from vlm.tasks import classification  # pylint: disable=g-import-not-at-top
  _, path = hf_vit
  config = config_lib.load_config(os.path.join(ROOT, "configs/tubevit/kinetics.py:tiny"))
  config.model.tubes = [dict(t) for t in IMAGE_TUBE]
  config.model.base_kernel = (1, PATCH, PATCH)
  task = classification.Task(config)
  batch = task.dummy_batch(2)
  init = task.init_variables(jax.random.key(0), batch)["params"]
  config.init.path = path
  params = init_lib.load_params(config, task.model, init, None)
  vit = vit_checkpoints.read_vit(path)
  np.testing.assert_allclose(params["backbone"]["tubes"]["kernel"][0], vit.patch_kernel)
  np.testing.assert_allclose(params["backbone"]["encoder"]["encoderblock_01"]["mlp"]["wo"]["kernel"],
                             vit.layers[1]["mlp/wo/kernel"])
  unboxed = jax.tree.map(lambda p: getattr(p, "value", p), init, is_leaf=lambda p: hasattr(p, "value"))
  for head in ("head_videos", "head_images"):
    np.testing.assert_array_equal(params[head]["kernel"], unboxed[head]["kernel"])
