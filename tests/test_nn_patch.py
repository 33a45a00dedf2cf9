"""PatchEmbed equals a VALID convolution with kernel = stride (values and gradients), for 1-, 2- and 3-D patches."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import patch


@pytest.mark.parametrize("shape,kernel", [
    ((2, 130, 1), (16,)),              # waveform: 130 samples, 16-sample patches (remainder dropped)
    ((2, 20, 15, 1), (4, 5)),          # spectrogram patches
    ((2, 9, 16, 18, 3), (4, 8, 6)),    # tubelets, time remainder dropped
])
def test_patch_embed_matches_conv(shape, kernel):
  x = jax.random.normal(jax.random.key(0), shape)
  ours = patch.PatchEmbed(7, kernel)
  conv = nn.Conv(7, kernel_size=kernel, strides=kernel, padding="VALID")
  params = nn.unbox(ours.init(jax.random.key(1), x))
  conv_params = conv.init(jax.random.key(1), x)
  # Same parameter names and shapes as nn.Conv, and the same Glorot scale (bound sqrt(6 / (fan_in + fan_out))).
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(np.shape, conv_params)
  fan = np.prod(kernel) * (shape[-1] + 7)
  assert np.abs(params["params"]["kernel"]).max() <= np.sqrt(6 / fan) + 1e-6
  assert np.abs(params["params"]["kernel"]).max() > 0.5 * np.sqrt(6 / fan)
  params = jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x), rtol=1e-4, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  g_conv = jax.grad(loss(conv), argnums=(0, 1))(params, x)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_ours, g_conv)


def test_patch_embed_rejects_too_small_input():
  with pytest.raises(ValueError, match="smaller than one patch"):
    patch.PatchEmbed(4, (4, 16, 16)).init(jax.random.key(0), jnp.zeros((1, 2, 16, 16, 3)))
