"""Image positions inflated to video (SViTT equations 4-11): BEiT's relative index (checked against HF's), the
3-D relative bias, inflation and temporal expansion of both tables."""
import numpy as np
import pytest

from vlm.nn import video_positions as vp


def test_two_d_index_equals_hf_beit():
  beit = pytest.importorskip("transformers.models.beit.modeling_beit")
  for hw in ((3, 4), (14, 14)):
    ours = vp.relative_position_index((1,) + hw)
    theirs = beit.BeitRelativePositionBias.generate_relative_position_index(hw).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_three_d_bias_depends_only_on_the_offset():
  grid = (3, 2, 4)
  rng = np.random.default_rng(0)
  table = rng.normal(size=(vp.table_size(grid), 2))
  bias = vp.relative_bias(table, grid)  # [heads, 1 + N, 1 + N]
  coords = np.stack(np.unravel_index(np.arange(24), grid), -1)
  seen = {}
  for i in range(24):
    for j in range(24):
      off = tuple(coords[i] - coords[j])
      seen.setdefault(off, bias[:, 1 + i, 1 + j])
      np.testing.assert_array_equal(bias[:, 1 + i, 1 + j], seen[off])  # equation 10: B depends on t'-t, h'-h, w'-w
  assert len(seen) == 5 * 3 * 7  # every offset has its own entry
  np.testing.assert_array_equal(bias[:, 0, 1:], np.repeat(table[-3][:, None], 24, 1))
  np.testing.assert_array_equal(bias[:, 1:, 0], np.repeat(table[-2][:, None], 24, 1))
  np.testing.assert_array_equal(bias[:, 0, 0], table[-1])
  with pytest.raises(ValueError, match="rows"):
    vp.relative_bias(table[:-1], grid)


def test_inflated_relative_bias_is_the_image_bias_within_and_across_frames():
  hw = (3, 3)
  table_2d = np.random.default_rng(1).normal(size=(vp.table_size((1,) + hw), 2))
  image_bias = vp.relative_bias(table_2d, (1,) + hw)
  video_bias = vp.relative_bias(vp.inflate_relative(table_2d, hw, 4), (4,) + hw)
  n = 9
  for t in range(4):
    for s in range(4):  # any pair of frames sees the 2-D bias of the patch offset (equation 11's init)
      np.testing.assert_array_equal(video_bias[:, 1 + t * n:1 + (t + 1) * n, 1 + s * n:1 + (s + 1) * n],
                                    image_bias[:, 1:, 1:])
  np.testing.assert_array_equal(video_bias[:, 0, 0], image_bias[:, 0, 0])


def test_temporal_expansion_of_the_relative_table():
  grid = (2, 2, 2)
  table = np.random.default_rng(2).normal(size=(vp.table_size(grid), 1))
  out = vp.expand_relative(table, grid, 4)
  assert out.shape[0] == vp.table_size((4, 2, 2))
  body_in = table[:-3].reshape(3, 3, 3, 1)
  body_out = out[:-3].reshape(7, 3, 3, 1)
  for dt in range(-3, 4):  # offset dt of 4 frames reads round(dt / 2) of 2 frames, clipped to +-1
    src = int(np.clip(np.floor(dt * 2 / 4 + 0.5), -1, 1))
    np.testing.assert_array_equal(body_out[dt + 3], body_in[src + 1])
  np.testing.assert_array_equal(vp.expand_relative(table, grid, 2), table)  # same length: unchanged
  np.testing.assert_array_equal(out[-3:], table[-3:])


def test_absolute_inflation_and_expansion():
  p = np.random.default_rng(3).normal(size=(1 + 4, 3))  # [CLS] + a 2x2 image
  p4 = vp.inflate_absolute(p, 4)
  assert p4.shape == (1 + 16, 3)
  np.testing.assert_array_equal(p4[0], p[0])
  for t in range(4):
    np.testing.assert_array_equal(p4[1 + 4 * t:1 + 4 * (t + 1)], p[1:])  # equation 6
  frames = np.random.default_rng(4).normal(size=(1 + 2 * 4, 3))  # 2 frames of 4 tokens
  out = vp.expand_absolute(frames, 2, 4)
  expected_source = [0, 1, 1, 1]  # floor(t * 2/4 + 1/2) = 0, 1, 1, 2 -> clipped to 1
  for t, s in enumerate(expected_source):
    np.testing.assert_array_equal(out[1 + 4 * t:1 + 4 * (t + 1)], frames[1 + 4 * s:1 + 4 * (s + 1)])
  np.testing.assert_array_equal(vp.expand_absolute(frames, 2, 2), frames)
  with pytest.raises(ValueError, match="frames of equal size"):
    vp.expand_absolute(frames[:-1], 2, 4)
