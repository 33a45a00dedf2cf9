"""Sparse tubes: token counts (table 3), the shared resized kernel against a numpy reference, images, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.nn import posemb
from vlm.nn import tubes


def _linear_matrix(n_in, n_out):
  """[n_out, n_in] 1-D linear interpolation with half-pixel centres (edge clamped), written independently."""
  m = np.zeros((n_out, n_in))
  for j in range(n_out):
    x = min(max((j + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
    lo = int(np.floor(x))
    hi = min(lo + 1, n_in - 1)
    m[j, lo] += 1 - (x - lo)
    m[j, hi] += x - lo
  return m


def _reference_tokens(video, kernel, bias, tube):
  """Explicit strided patches times the trilinearly resized kernel (numpy float64)."""
  k = np.asarray(kernel, np.float64)
  for axis, size in enumerate(tube.kernel):
    k = np.moveaxis(np.tensordot(_linear_matrix(k.shape[axis], size), np.moveaxis(k, axis, 0), axes=1), 0, axis)
  grid = tube.grid(video.shape[1:4])
  out = []
  for it in range(grid[0]):
    for iy in range(grid[1]):
      for ix in range(grid[2]):
        t0, y0, x0 = (i * s + o for i, s, o in zip((it, iy, ix), tube.stride, tube.offset))
        patch = video[:, t0:t0 + tube.kernel[0], y0:y0 + tube.kernel[1], x0:x0 + tube.kernel[2]]
        out.append(np.einsum("bthwc,thwcd->bd", patch, k) + bias)
  return np.stack(out, axis=1)


def test_table3_token_counts_are_539():
  counts = tubes.tube_token_counts(tubes.parse_tubes("table3"), (32, 224, 224))
  assert list(counts.values()) == [98, 147, 98, 196, 539]


def test_tokenizer_matches_numpy_reference_and_centres():
  spec = [dict(kernel=(2, 2, 2), stride=(2, 4, 4)), dict(kernel=(4, 1, 1), stride=(3, 4, 2), offset=(1, 1, 2)),
          dict(kernel=(1, 3, 3), stride=(4, 3, 5), offset=(0, 2, 0))]
  tok = tubes.SparseTubeTokenizer(tubes.parse_tubes(spec), hidden_size=5, base_kernel=(2, 2, 2))
  video = np.random.default_rng(0).normal(size=(2, 8, 9, 11, 3)).astype(np.float32)
  variables = tok.init(jax.random.key(0), video)
  params = jax.tree.map(lambda p: getattr(p, "value", p), variables["params"],
                        is_leaf=lambda p: hasattr(p, "value"))
  bias = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
  params = dict(params, bias=bias)
  got, aux = tok.apply({"params": params}, video)
  want = [_reference_tokens(video.astype(np.float64), params["kernel"], bias[i], t)
          for i, t in enumerate(tok.tubes)]
  np.testing.assert_allclose(got, np.concatenate(want, axis=1), rtol=1e-4, atol=1e-4)
  assert aux["tube_sizes"] == [w.shape[1] for w in want]
  # Centre of the second tube's first token: offset + (kernel - 1) / 2.
  np.testing.assert_allclose(aux["centres"][aux["tube_sizes"][0]], [1 + 1.5, 1, 2])


def test_images_use_the_tubes_that_fit_and_gradients_reach_the_shared_kernel():
  tok = tubes.SparseTubeTokenizer(tubes.parse_tubes([dict(kernel=(2, 2, 2), stride=(2, 2, 2)),
                                                     dict(kernel=(1, 4, 4), stride=(1, 4, 4))]), 4)
  clip = jnp.ones((1, 4, 8, 8, 3))
  variables = tok.init(jax.random.key(0), clip)
  image_tokens, aux = tok.apply(variables, jnp.ones((1, 1, 8, 8, 3)))
  assert image_tokens.shape == (1, 4, 4) and aux["tube_sizes"] == [0, 4] and aux["used"] == [1]
  for video in (clip, jnp.ones((1, 1, 8, 8, 3))):
    grads = jax.grad(lambda p: tok.apply(p, video)[0].sum())(variables)["params"]
    assert np.abs(np.asarray(grads["kernel"].value if hasattr(grads["kernel"], "value") else grads["kernel"])).sum() > 0
  assert set(variables["params"]) == {"kernel", "bias"}  # interpolated tubes add no kernels


def test_presets_notation_and_errors():
  assert [t.kernel for t in tubes.parse_tubes("a+iv,d+v")] == [(1, 16, 16), (4, 12, 12)]
  assert tubes.parse_tubes("charades")[1].kernel == (16, 16, 16)
  with pytest.raises(ValueError, match="table 5 notation"):
    tubes.parse_tubes("z+iv")
  # ';' separates tubes inside a FILE:ARG; explicit kernel/stride[/offset] triples.
  frames, shifted = tubes.parse_tubes("1x8x8/4x8x8;8x4x4/4x8x8/0x2x2")
  assert (frames.kernel, frames.stride, frames.offset) == ((1, 8, 8), (4, 8, 8), (0, 0, 0))
  assert (shifted.kernel, shifted.offset) == ((8, 4, 4), (0, 2, 2))
  assert frames.grid((16, 32, 32)) == (4, 4, 4)
  with pytest.raises(ValueError, match="'1x8' is not a 'TxHxW' triple"):
    tubes.parse_tubes("1x8/4x8x8")
  with pytest.raises(ValueError, match="kernel/stride"):
    tubes.parse_tubes("1x8x8/4x8x8/0x0x0/1x1x1")
  with pytest.raises(ValueError, match=r"tube 16x4x4 .* does not fit the input \(T, H, W\) = \(8, 224, 224\)"):
    tubes.fitting_tubes(tubes.TABLE3, (8, 224, 224))
  with pytest.raises(ValueError, match="does not fit"):  # offset past the end
    tubes.fitting_tubes([tubes.Tube((1, 2, 2), (1, 2, 2), (0, 7, 0))], (4, 8, 8))
  with pytest.raises(ValueError, match="no tube fits"):
    tubes.fitting_tubes([tubes.Tube((2, 2, 2), (1, 2, 2))], (1, 8, 8))
  with pytest.raises(ValueError, match="stride"):
    tubes.Tube((1, 2, 2), (0, 2, 2))


def _sincos_reference(pos, dim):
  n_t = 2 * ((dim // 3) // 2)
  n_s = 2 * (((dim - n_t) // 2) // 2)
  out = np.zeros((len(pos), dim))
  col = 0
  for axis, n in enumerate((n_t, n_s, n_s)):
    for i in range(n // 2):
      w = 1.0 / 10000 ** (2 * i / n)
      out[:, col + i] = np.sin(pos[:, axis] * w)
      out[:, col + n // 2 + i] = np.cos(pos[:, axis] * w)
    col += n
  return out


@pytest.mark.parametrize("dim", [768, 1024, 1280, 66])
def test_sincos_3d_any_width_and_non_square_grids(dim):
  t, y, x = np.meshgrid(np.arange(3) * 8.0 + 3.5, np.arange(4) * 32.0 + 7.5, np.arange(6) * 32.0 + 3.5,
                        indexing="ij")  # H != W
  pos = np.stack([t.ravel(), y.ravel(), x.ravel()], -1)
  got = posemb.sincos_3d(pos, dim)
  np.testing.assert_allclose(got, _sincos_reference(pos, dim), atol=1e-5)
  assert len({tuple(np.round(r, 5)) for r in got}) == len(pos)  # every position distinct
  # Swapping y and x changes the embedding (the port's meshgrid bug made them interchangeable for H != W).
  assert not np.allclose(posemb.sincos_3d(pos[:, [0, 2, 1]], dim), got)
