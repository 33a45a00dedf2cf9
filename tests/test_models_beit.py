"""SViTT's BEiT video encoder: parity with HF transformers' BeitModel (random weights saved in the test) on images,
and the 2-D -> 3-D inflation: a static 4-frame clip through the inflated model matches the image model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.models import beit

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_beit(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.BeitConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
      use_relative_position_bias=True, use_absolute_position_embeddings=False, use_mean_pooling=True,
      layer_scale_init_value=0.1, hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation="eager")
  model = transformers.BeitModel(config).eval()
  with torch.no_grad():  # randomise what HF initialises to constants (biases, tables, layer scales)
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf_beit")
  model.save_pretrained(str(path))
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return model, load_file(str(path / "model.safetensors"))


def _ours(flat, frames, video):
  model = beit.VideoBeit(num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2, patch_size=8, frames=frames,
                         image_size=32)
  params = beit.from_hf_beit(flat, 2, image_grid=(4, 4), frames=frames)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(video[:1])))["params"]
  shapes = jax.tree.map(lambda p: getattr(p, "value", p), shapes, is_leaf=lambda p: hasattr(p, "value"))
  assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, params)
  return model.apply({"params": params}, jnp.asarray(video))


def test_hf_beit_parity_on_images(hf_beit):
  model, flat = hf_beit
  images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
  tokens, aux = _ours(flat, 1, images[:, None])
  np.testing.assert_allclose(tokens, out.last_hidden_state.numpy(), atol=3e-5, rtol=1e-4)
  np.testing.assert_allclose(aux["pooled"], out.pooler_output.numpy(), atol=3e-5, rtol=1e-4)


def test_inflated_model_treats_every_frame_of_a_static_clip_alike(hf_beit):
  """With the relative tables inflated (equation 11: the same bias for every temporal offset), each frame of a
  static clip sees the same keys with the same biases, so the four frames' tokens come out identical; and a
  clip of the wrong length is refused with a pointer to temporal expansion."""
  _, flat = hf_beit
  images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  tokens, aux = _ours(flat, 4, np.repeat(images[:, None], 4, axis=1))
  frames = np.asarray(tokens[:, 1:]).reshape(2, 4, 16, 32)
  for t in range(1, 4):
    np.testing.assert_allclose(frames[:, t], frames[:, 0], atol=1e-5)
  image_tokens, _ = _ours(flat, 1, images[:, None])
  # ...but not those of the image: the [CLS] key now competes with four copies of every patch.
  assert not np.allclose(frames[:, 0], np.asarray(image_tokens[:, 1:]), atol=1e-3)
  with pytest.raises(ValueError, match="expand the checkpoint"):
    _ours(flat, 4, np.repeat(images[:, None], 2, axis=1))


def test_token_pruning_keeps_the_tokens_hf_cls_attends_to_most(hf_beit):
  """Node sparsity after layer 1 with q = 0.5: the kept patches are the top 8 of 16 by the head-averaged [CLS]
  attention row of HF's layer 1 (output_attentions), in original order; later layers see their true positions."""
  model, flat = hf_beit
  images = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    attn = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)), output_attentions=True).attentions
  cls_row = attn[0].numpy().mean(axis=1)[:, 0, 1:]  # [B, 16]
  pruned = beit.VideoBeit(num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2, patch_size=8, frames=1,
                          image_size=32, prune_after=(1,), keep_rate=0.5)
  tokens, aux = pruned.apply({"params": beit.from_hf_beit(flat, 2, image_grid=(4, 4), frames=1)},
                             jnp.asarray(images[:, None]))
  assert tokens.shape == (2, 1 + 8, 32)
  for i in range(2):
    expected = np.sort(np.argsort(-cls_row[i])[:8]) + 1  # positions count the [CLS] as 0
    np.testing.assert_array_equal(np.asarray(aux["positions"][i, 1:]), expected)
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    beit.VideoBeit(num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2, patch_size=8, frames=1, image_size=32,
                   prune_after=(1,), keep_rate=1.5).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))
