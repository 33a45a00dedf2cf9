"""pp ops (vlm.data.pp, ops_video, ops_audio, ops_text) and record parsing (vlm.data.sources).

Every op runs eagerly AND inside tf.data (shapes are unknown there, and eager Python control flow would break);
the two must agree exactly (all randomness is stateless, seeded by `_seed`), and each result is checked
numerically.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vlm.data import bench  # pylint: disable=g-import-not-at-top
from vlm.data import pp  # pylint: disable=g-import-not-at-top
from vlm.data import records  # pylint: disable=g-import-not-at-top
from vlm.data import sources  # pylint: disable=g-import-not-at-top

SEED = tf.constant([7, 11], tf.int64)


def run_both(spec, data, defaults=None, atol=0.0):
  """Runs a pp spec eagerly and in tf.data (unknown leading dims); asserts equal outputs; returns numpy."""
  fn = pp.build(spec, defaults=defaults)
  data = {k: tf.convert_to_tensor(v) for k, v in data.items()}
  eager = fn(dict(data))
  # Relax every static dim in tf.data, as parsed records have them.
  sig = {k: tf.TensorSpec([None] * v.shape.rank, v.dtype) for k, v in data.items()}
  ds = tf.data.Dataset.from_generator(lambda: iter([data]), output_signature=sig).map(fn)
  graph = next(iter(ds))
  assert set(eager) == set(graph)
  out = {}
  for k in eager:
    e, g = np.asarray(eager[k]), np.asarray(graph[k])
    assert e.shape == g.shape, k
    if e.dtype.kind in "fc":
      np.testing.assert_allclose(e, g, atol=atol or 1e-6, err_msg=k)
    else:
      np.testing.assert_array_equal(e, g, err_msg=k)
    out[k] = e
  return out


@pytest.fixture(scope="module")
def clip():
  """12 frames 24x32 whose pixel (0, 0) red encodes the frame index (8 * i), plus their JPEGs."""
  frames = bench.synthetic_frames(12, 24, 32, seed=3)
  frames[:, :4, :4] = 0
  frames[:, :4, :4, 0] = (np.arange(12) * 8)[:, None, None]
  jpegs = bench.encode_jpegs(frames, quality=95)
  return frames, np.array(jpegs, dtype=object)


def _frame_ids(video_u8_or_float):
  v = np.asarray(video_u8_or_float, np.float32)
  scale = 255.0 if v.max() <= 1.0 else 1.0
  return np.round(v[..., 1, 1, 0] * scale / 8).astype(int)


# ---------------------------------------------------------------------------------------------- registry/builder


def test_parse_and_split_specs():
  assert pp.split_spec('a(1)|b(x="p|q")| c ') == ["a(1)", 'b(x="p|q")', "c"]
  assert pp.parse_op('keep("video", "audio")') == ("keep", ("video", "audio"), {})
  assert pp.parse_op("normalize(-1, max=1)") == ("normalize", (-1,), {"max": 1})
  assert pp.parse_op(("flip", {"prob": 1.0})) == ("flip", (), {"prob": 1.0})
  with pytest.raises(KeyError, match="Unknown pp op 'nope'"):
    pp.build("nope")
  with pytest.raises(ValueError, match="literals"):
    pp.build("flip(prob=x)")


def test_defaults_fill_only_missing_arguments():
  fn = pp.build("onehot|onehot(3, outkey='b')", defaults={"onehot": {"num_classes": 5}})
  out = fn({"label_index": tf.constant([2])})
  np.testing.assert_array_equal(out["labels"], [0, 0, 1, 0, 0])
  np.testing.assert_array_equal(out["b"], [0, 0, 1])


def test_seed_folding_gives_ops_independent_streams():
  fn = pp.build("sample_segments(4)|sample_segments(4, inkey='frames2')")
  x = tf.range(40)
  out = fn({"frames": x, "frames2": x, "_seed": SEED})
  assert not np.array_equal(out["frames"], out["frames2"])  # same op twice: different draws
  np.testing.assert_array_equal(out["_seed"], SEED)
  # An op after keep() (which drops `_seed`) still draws from the example's seed.
  fn = pp.build("keep('frames')|sample_segments(4)")
  runs = [fn({"frames": x, "_seed": SEED})["frames"] for _ in range(2)]
  np.testing.assert_array_equal(runs[0], runs[1])


# ---------------------------------------------------------------------------------------------- sampling


def test_sample_clip_stride_and_eval_middle(clip):
  _, jpegs = clip
  out = run_both("sample_clip(4, stride=2)", {"frames_jpeg": jpegs, "_seed": SEED})
  idx = out["frame_index"]
  assert idx.shape == (4,) and np.all(np.diff(idx) == 2) and 0 <= idx[0] <= 12 - 7
  assert [bytes(j) for j in out["frames_jpeg"]] == [bytes(jpegs[i]) for i in idx]
  out = run_both("sample_clip(4, stride=2, random=False)", {"frames_jpeg": jpegs})
  np.testing.assert_array_equal(out["frame_index"], [2, 4, 6, 8])  # start = (12 - 7) // 2


def test_sample_clip_random_start_covers_range():
  fn = pp.build("sample_clip(3)")
  starts = {int(fn({"frames": tf.range(6), "_seed": tf.constant([i, 0], tf.int64)})["frame_index"][0])
            for i in range(60)}
  assert starts == {0, 1, 2, 3}


def test_sample_clip_fps_resampling():
  # A 25 fps record sampled at 10 fps: frame i at t = i / 10 s -> source frame floor(2.5 i).
  data = {"frames": tf.range(100), "fps": tf.constant(25.0)}
  out = run_both("sample_clip(5, fps=10, random=False)", data)
  start = (100 - 11) // 2  # span = floor(4 * 2.5) + 1 = 11 source frames
  np.testing.assert_array_equal(out["frame_index"], start + np.array([0, 2, 5, 7, 10]))
  # No fps in the record: default_fps is used.
  out = run_both("sample_clip(3, fps=5, random=False, default_fps=10)", {"frames": tf.range(7)})
  np.testing.assert_array_equal(out["frame_index"], [1, 3, 5])  # span 5 of 7 frames, middle start 1


@pytest.mark.parametrize("pad,expected", [("loop", [0, 2, 4, 1, 3]), ("pad_last", [0, 2, 4, 4, 4])])
def test_sample_clip_short_record_padding(pad, expected):
  out = run_both(f"sample_clip(5, stride=2, pad='{pad}')", {"frames": tf.range(5), "_seed": SEED})
  np.testing.assert_array_equal(out["frame_index"], expected)


def test_sample_clip_pad_error_raises_eagerly_and_in_tfdata():
  fn = pp.build("sample_clip(5, stride=2, pad='error')")
  with pytest.raises(tf.errors.InvalidArgumentError, match="Clip too short"):
    fn({"frames": tf.range(5), "_seed": SEED})
  ds = tf.data.Dataset.from_tensors({"frames": tf.range(5), "_seed": SEED}).map(fn)
  with pytest.raises(tf.errors.InvalidArgumentError, match="Clip too short"):
    next(iter(ds))


def test_audio_follows_the_clip_time_span():
  # 40 frames at 10 fps (4 s) and audio at 100 Hz whose value is its own time in seconds.
  audio = np.arange(400, dtype=np.float32) / 100.0
  data = {"frames": tf.range(40), "fps": tf.constant(10.0), "audio": audio, "sample_rate": tf.constant(100),
          "_seed": SEED}
  out = run_both("sample_clip(8, stride=2, audio_samples=160)", data)
  t0 = out["frame_index"][0] / 10.0
  np.testing.assert_allclose(out["audio"], t0 + np.arange(160) / 100.0, atol=1e-5)
  # Past the end of the audio: zeros (no looping with pad_last).
  out = run_both("sample_clip(8, stride=2, random=False, audio_samples=500, pad='pad_last')", data)
  assert out["audio"].shape == (500,) and np.all(out["audio"][400 - 120:] == 0)
  # A record without audio: zeros of the right length.
  out = run_both("sample_clip(8, audio_samples=50)", {**data, "audio": np.zeros([0], np.float32)})
  np.testing.assert_array_equal(out["audio"], np.zeros(50))


def test_sample_multiclip_uniform_starts_and_audio():
  audio = np.arange(1000, dtype=np.float32)
  data = {"frames": tf.range(50), "fps": tf.constant(10.0), "audio": audio, "sample_rate": tf.constant(20)}
  out = run_both("sample_multiclip(3, 10, audio_samples=20)", data)
  idx = out["frame_index"]
  assert idx.shape == (3, 10)
  np.testing.assert_array_equal(idx[:, 0], [0, 20, 40])
  np.testing.assert_array_equal(out["audio"][:, 0], [0, 40, 80])  # start frame / 10 fps * 20 Hz
  assert out["frames"].shape == (3, 10)


def test_sample_segments_train_within_chunks_eval_middle():
  out = run_both("sample_segments(4)", {"frames": tf.range(20), "_seed": SEED})
  idx = out["frame_index"]
  assert all(5 * i <= idx[i] < 5 * (i + 1) for i in range(4))
  out = run_both("sample_segments(4, random=False)", {"frames": tf.range(20)})
  np.testing.assert_array_equal(out["frame_index"], [2, 7, 12, 17])
  out = run_both("sample_segments(4, random=False)", {"frames": tf.range(2)})  # shorter than T
  np.testing.assert_array_equal(out["frame_index"], [0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------- decode and crop


def test_decode_and_center_crop_numbers(clip):
  frames, jpegs = clip
  out = run_both("decode", {"frames_jpeg": jpegs[:3]})
  assert out["video"].dtype == np.uint8 and out["video"].shape == (3, 24, 32, 3)
  assert np.abs(out["video"].astype(int) - frames[:3]).mean() < 8  # JPEG q95 (with chroma subsampling)
  # Central 16x16 source pixels, no resize needed: equals the decoded frames' centre / 255.
  out = run_both("center_crop(16)", {"frames_jpeg": jpegs[:3]}, atol=1e-5)
  dec = tf.io.decode_jpeg(jpegs[0]).numpy()
  # (Chroma upsampling at the crop edge makes the last column differ slightly from the full decode.)
  np.testing.assert_allclose(out["video"][0], dec[4:20, 8:24] / 255.0, atol=0.05)
  assert np.abs(out["video"][0] - dec[4:20, 8:24] / 255.0).mean() < 2e-3
  # As if resized to short side 12 then 8 cropped: a 16x16 source window resized to 8x8.
  out = run_both("center_crop(8, resize_smallest=12)", {"frames": frames[:2]}, atol=1e-5)
  ref = tf.image.resize(frames[:2, 4:20, 8:24], [8, 8]).numpy() / 255.0
  np.testing.assert_allclose(out["video"], ref, atol=1e-5)


def test_random_resized_crop_same_window_jpeg_and_decoded(clip):
  frames, jpegs = clip
  data_j = {"frames_jpeg": jpegs, "_seed": SEED}
  data_f = {"frames": frames, "_seed": SEED}
  spec = "random_resized_crop(16, area=(0.3, 0.6))"
  vj = run_both(spec, data_j, atol=1e-5)["video"]
  vf = run_both(spec, data_f, atol=1e-5)["video"]
  assert vj.shape == vf.shape == (12, 16, 16, 3) and vj.dtype == np.float32
  assert 0 <= vj.min() and vj.max() <= 1
  # Decoding only the crop window gives (up to JPEG loss) the crop of the fully decoded frames.
  assert np.abs(vj - vf).mean() < 0.03
  # Different seeds give different crops; the same crop for every frame (the marker stays in frame order).
  other = pp.build(spec)({"frames": frames, "_seed": tf.constant([1, 2], tf.int64)})["video"]
  assert np.abs(other - vf).mean() > 0.01


def test_three_crop_views_and_multiclip(clip):
  frames, jpegs = clip
  out = run_both("three_crop(16)", {"frames_jpeg": jpegs[:4]}, atol=1e-5)["video"]
  assert out.shape == (3, 4, 16, 16, 3)
  dec = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs[:4]]) / 255.0
  # Landscape 24x32: a 16x16 window (short side 24 -> 16 px crop, no resize), at x = 0, 8, 16.
  for k, x in enumerate([0, 8, 16]):
    np.testing.assert_allclose(out[k], dec[:, 4:20, x:x + 16], atol=1e-5)
  spec = "sample_multiclip(2, 3)|three_crop(8, resize_smallest=12)"
  out = run_both(spec, {"frames": frames}, atol=1e-5)
  assert out["video"].shape == (6, 3, 8, 8, 3)  # V = 2 clips x 3 crops, clip-major


def test_resize_ops(clip):
  frames, _ = clip
  out = run_both("resize(8)", {"video": frames[:2]})["video"]
  assert out.shape == (2, 8, 8, 3) and out.max() <= 1.0
  out = run_both("resize_smallest(12)", {"video": frames[:2]})["video"]
  assert out.shape == (2, 12, 16, 3)
  out = run_both("random_crop(10)", {"frames": frames[:2], "_seed": SEED})["video"]
  assert out.shape == (2, 10, 10, 3)


# ---------------------------------------------------------------------------------------------- augmentation


def _video(seed=0, frames=3):
  return bench.synthetic_frames(frames, 16, 20, seed=seed).astype(np.float32) / 255.0


def test_flip_all_frames_together():
  v = _video()
  out = run_both("flip(prob=1.0)", {"video": v, "_seed": SEED})["video"]
  np.testing.assert_array_equal(out, v[:, :, ::-1])
  out = run_both("flip(prob=0.0)", {"video": v, "_seed": SEED})["video"]
  np.testing.assert_array_equal(out, v)
  flipped = [bool(np.array_equal(pp.build("flip")({"video": v, "_seed": tf.constant([i, 3], tf.int64)})["video"],
                                 v[:, :, ::-1])) for i in range(40)]
  assert 8 < sum(flipped) < 32


@pytest.mark.parametrize("impl", ["yiq", "hsv"])
def test_color_jitter(impl):
  v = _video()
  same = np.repeat(v[:1], 3, axis=0)
  out = run_both(f"color_jitter(prob=1.0, impl='{impl}')", {"video": same, "_seed": SEED}, atol=1e-5)["video"]
  assert 0 <= out.min() and out.max() <= 1 and np.abs(out - same).mean() > 1e-3
  np.testing.assert_allclose(out[1:], out[:1].repeat(2, 0), atol=1e-6)  # one draw for the whole clip
  out = run_both(f"color_jitter(prob=0.0, impl='{impl}')", {"video": v, "_seed": SEED})["video"]
  np.testing.assert_array_equal(out, v)
  # Only brightness: both implementations add the same delta and clip.
  out = run_both(f"color_jitter(saturation=0, contrast=0, hue=0, prob=1.0, impl='{impl}')",
                 {"video": v, "_seed": SEED}, atol=1e-5)["video"]
  delta = np.median(out - v)
  assert abs(delta) <= 32 / 255 + 1e-6
  # (HSV round trips change pixels pushed out of [0, 1] before the final clip: compare the others.)
  inside = np.all((v + delta >= 0) & (v + delta <= 1), axis=-1)
  np.testing.assert_allclose(out[inside], (v + delta)[inside], atol=1e-5)
  if impl == "yiq":
    np.testing.assert_allclose(out, np.clip(v + delta, 0, 1), atol=1e-5)


def test_color_jitter_yiq_matches_tf_image_for_brightness_contrast():
  from vlm.data import ops_video  # pylint: disable=g-import-not-at-top
  v = tf.constant(_video())
  m = ops_video._yiq_chroma_matrix(tf.constant(1.0), tf.constant(0.0))  # identity chroma
  np.testing.assert_allclose(m, np.eye(3), atol=1e-5)
  ref = tf.image.adjust_contrast(tf.image.adjust_brightness(v, 0.05), 1.3)
  mean = tf.reduce_mean(v, axis=[-3, -2], keepdims=True)
  ours = 1.3 * v + (1 - 1.3) * mean + 0.05
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  # Saturation 0 in YIQ gives the luma grey.
  grey = ops_video._yiq_chroma_matrix(tf.constant(0.0), tf.constant(0.1))
  px = np.array([0.2, 0.5, 0.9], np.float32)
  np.testing.assert_allclose(grey.numpy() @ px, [px @ [0.299, 0.587, 0.114]] * 3, atol=1e-4)


@pytest.mark.parametrize("op", ["identity", "autocontrast", "equalize", "rotate", "solarize", "color",
                                "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
                                "translate_x", "translate_y"])
def test_randaugment_each_op_consistent_across_frames(op):
  v = np.repeat(_video(1, 1), 3, axis=0)
  out = run_both(f"randaugment(1, 9, ops=['{op}'])", {"video": v, "_seed": SEED}, atol=1e-5)["video"]
  assert out.shape == v.shape and 0 <= out.min() and out.max() <= 1
  np.testing.assert_allclose(out[1:], out[:1].repeat(2, 0), atol=1e-6)
  if op == "identity":
    np.testing.assert_allclose(out, v)
  elif op != "autocontrast":  # synthetic frames may already span [0, 1]
    assert np.abs(out - v).mean() > 1e-3, op


def test_randaugment_default_and_numbers():
  v = _video(2)
  out = run_both("randaugment(2, 5)", {"video": v, "_seed": SEED}, atol=1e-5)["video"]
  assert out.shape == v.shape
  solar = pp.build("randaugment(1, 10, ops=['solarize'])")({"video": tf.constant([[[[0.2, 0.5, 0.95]]]])})
  np.testing.assert_allclose(solar["video"], [[[[0.8, 0.5, 0.05]]]], atol=1e-6)  # threshold 0 at magnitude 10
  with pytest.raises(ValueError, match="unknown ops"):
    pp.build("randaugment(ops=['bogus'])")


def test_normalize_and_standardize():
  v = np.array([[[[0.0, 0.5, 1.0]]]], np.float32)
  np.testing.assert_allclose(run_both("normalize(-1, 1)", {"video": v})["video"], [[[[-1, 0, 1]]]])
  u8 = np.array([[[[0, 255, 51]]]], np.uint8)
  np.testing.assert_allclose(run_both("normalize(0, 1)", {"video": u8})["video"], [[[[0, 1, 0.2]]]], atol=1e-6)
  out = run_both("standardize((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))", {"video": v})["video"]
  np.testing.assert_allclose(out, [[[[-2, 0, 0.5]]]])


def test_mixup_batch_op():
  batch = {"video": np.arange(4, dtype=np.float32)[:, None] * np.ones([4, 3], np.float32),
           "labels": np.eye(4, dtype=np.float32), "_seed": SEED}
  out = run_both("mixup(alpha=5.0)", batch)
  lam = out["mixup_lam"]
  assert lam.shape == (4,) and np.all(lam == lam[0]) and 0 < lam[0] < 1
  np.testing.assert_allclose(out["video"][:, 0], lam * np.arange(4) + (1 - lam) * np.roll(np.arange(4), 1),
                             rtol=1e-6)
  np.testing.assert_allclose(out["labels"].sum(-1), 1.0, rtol=1e-6)
  lams = [float(pp.sample_beta(tf.constant([i, 0], tf.int64), 5.0, 5.0)) for i in range(300)]
  assert abs(np.mean(lams) - 0.5) < 0.03 and abs(np.var(lams) - 25 / (100 * 11)) < 0.01  # Beta(5, 5)
  per = run_both("mixup(alpha=1.0, per_example=True)", batch)["mixup_lam"]
  assert len(set(per.tolist())) == 4


# ---------------------------------------------------------------------------------------------- audio


def test_audio_noise_and_gain():
  x = np.sin(np.linspace(0, 100, 20000)).astype(np.float32) * 0.5
  out = run_both("audio_noise(0.01)", {"audio": x, "_seed": SEED})["audio"]
  assert abs(np.std(out - x) - 0.005) < 3e-4  # 0.01 * max|x|
  assert np.array_equal(run_both("audio_noise(prob=0.0)", {"audio": x, "_seed": SEED})["audio"], x)
  out = run_both("audio_gain(-6, -6)", {"audio": x, "_seed": SEED})["audio"]
  np.testing.assert_allclose(out, x * 10 ** (-6 / 20), rtol=1e-5)
  out = run_both("pad_audio(5)", {"audio": np.ones([2, 3], np.float32)})["audio"]
  np.testing.assert_array_equal(out, [[1, 1, 1, 0, 0]] * 2)


def test_resample_audio():
  sr = 480
  t = np.arange(960) / sr
  x = np.sin(2 * np.pi * 20 * t).astype(np.float32) + 0.5 * np.sin(2 * np.pi * 200 * t).astype(np.float32)
  out = run_both("resample_audio(240)", {"audio": x, "sample_rate": np.int32(sr)}, atol=1e-4)
  assert out["audio"].shape == (480,) and out["sample_rate"] == 240
  # The 200 Hz tone is above the new Nyquist (120 Hz) and is removed; the 20 Hz one survives.
  np.testing.assert_allclose(out["audio"], np.sin(2 * np.pi * 20 * np.arange(480) / 240), atol=1e-3)
  out = run_both("resample_audio(960, num_samples=2000)", {"audio": x, "sample_rate": np.int32(sr)}, atol=1e-4)
  assert out["audio"].shape == (2000,) and np.all(out["audio"][1920:] == 0)
  np.testing.assert_allclose(out["audio"][:1920:2], x, atol=1e-3)  # upsampling keeps the original samples
  same = run_both("resample_audio(480)", {"audio": x, "sample_rate": np.int32(sr)})
  np.testing.assert_array_equal(same["audio"], x)


def test_log_mel_shape_and_peak():
  sr, n = 48000, 48000
  tone = np.sin(2 * np.pi * 1000 * np.arange(n) / sr).astype(np.float32)
  out = run_both("log_mel", {"audio": tone}, atol=1e-3)["audio"]
  # 42 ms window = 2016 samples, 21 ms hop = 1008: T = 1 + (48000 - 2016) // 1008 = 46.
  assert out.shape == (46, 80)
  mel = tf.signal.linear_to_mel_weight_matrix(80, 1025, sr, 80.0, 7600.0).numpy()
  expected_bin = int(np.argmax(mel[int(round(1000 / sr * 2048))]))
  assert abs(int(np.argmax(out.mean(0))) - expected_bin) <= 1
  out = run_both("log_mel(outkey='spec')", {"audio": np.stack([tone[:4000]] * 2)}, atol=1e-3)
  assert out["spec"].shape == (2, 2, 80)


# ---------------------------------------------------------------------------------------------- labels and text


def test_label_ops():
  out = run_both("label|onehot(4)|multihot(4, outkey='multi')", {"label_index": np.array([2, 0], np.int32)})
  assert out["label"] == 2
  np.testing.assert_array_equal(out["labels"], [0, 0, 1, 0])
  np.testing.assert_array_equal(out["multi"], [1, 0, 1, 0])
  out = run_both("label|onehot(4, smoothing=0.2)", {"label_index": np.zeros([0], np.int32)})
  assert out["label"] == -1
  np.testing.assert_allclose(out["labels"], [0.05] * 4)
  out = run_both("onehot(4, smoothing=0.2)", {"label_index": np.array([1], np.int32)})
  np.testing.assert_allclose(out["labels"], [0.05, 0.85, 0.05, 0.05], rtol=1e-6)


def test_captions_and_tokenize(tmp_path):
  vocab = tmp_path / "v.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\nman\nhorse\n")
  tok = dict(kind="words", vocab_file=str(vocab))
  caps = np.array([b"a man", b"a horse", b"man man", b"horse"], dtype=object)
  spec = "sample_captions(2)|tokenize(3, bos=True)"
  out = run_both(spec, {"captions": caps, "_seed": SEED}, defaults={"tokenize": {"tokenizer": tok}})
  assert out["text"].shape == (2, 3) and out["text"].dtype == np.int32
  assert out["text"][0, 0] == 2 and out["text_mask"].sum() >= 4
  out = run_both("sample_captions(3, random=False)|tokenize(4)", {"captions": caps[:1]},
                 defaults={"tokenize": {"tokenizer": tok}})
  np.testing.assert_array_equal(out["captions"], [b"a man", b"", b""])
  np.testing.assert_array_equal(out["text"], [[4, 5, 0, 0], [0] * 4, [0] * 4])
  np.testing.assert_array_equal(out["text_mask"], [[1, 1, 0, 0], [0] * 4, [0] * 4])
  with pytest.raises(ValueError, match="no tokenizer"):
    pp.build("tokenize(4)")


def test_sample_qa_keeps_question_answer_index_and_kind_together():
  data = {"qa/question": np.array([b"q0", b"q1", b"q2"], dtype=object),
          "qa/answer": np.array([b"a0", b"a1", b"a2"], dtype=object),
          "qa/answer/index": np.array([10, 11, 12]), "qa/kind/index": np.array([5, 6, 7])}
  first = run_both("sample_qa(random=False)", data)
  assert (first["question"], first["answer"], first["answer_index"], first["question_kind"]) == (b"q0", b"a0", 10, 5)
  picked = set()
  for s in range(12):
    out = run_both("sample_qa()", {**data, "_seed": tf.constant([s, 3], tf.int64)})
    i = int(out["question"].item()[1:])
    assert (out["answer"], out["answer_index"], out["question_kind"]) == (b"a%d" % i, 10 + i, 5 + i)
    picked.add(i)
  assert picked == {0, 1, 2}
  # Kinds shorter than the questions (or absent): -1 (no kind); absent keys give no output key.
  out = run_both("sample_qa(random=False)", {**data, "qa/kind/index": np.zeros([0], np.int64)})
  assert out["question_kind"] == -1
  out = run_both("sample_qa(random=False)", {k: data[k] for k in ("qa/question", "qa/answer")})
  assert set(out) == {"question", "answer", "qa/question", "qa/answer"}


def test_keep_drop_rename_copy():
  out = run_both("copy('a', 'b')|rename(c='a')|drop('x')|keep('b', 'c')",
                 {"a": np.ones(2), "x": np.zeros(1), "y": np.zeros(1)})
  assert set(out) == {"b", "c"}


# ---------------------------------------------------------------------------------------------- parsing


def _record(**kw):
  frames = bench.synthetic_frames(3, 16, 16)
  args = dict(jpeg_frames=bench.encode_jpegs(frames), fps=12.5, audio=np.linspace(-1, 1, 30), sample_rate=10,
              captions=["one", "two"], label_index=[3, 4], label_text=["c", "d"], filename="f.mp4",
              audio_chunk=7)
  args.update(kw)
  return records.make_sequence_example(**args).SerializeToString()


def test_parse_example_keys_and_values():
  extra = {"qa/question": records._bytes(["why?"]), "event/start_frame": records._ints([2, 5])}
  ser = _record(extra_context=extra)
  fn = lambda r: sources.parse_example(r, extra_context={"qa/question": "string", "event/start_frame": "int"})
  for out in (fn(tf.constant(ser)), next(iter(tf.data.Dataset.from_tensors(ser).map(fn)))):
    assert out["frames_jpeg"].shape == (3,) and out["frames_jpeg"].dtype == tf.string
    np.testing.assert_allclose(out["audio"], np.linspace(-1, 1, 30), atol=1e-6)  # 7-sample entries concatenated
    assert float(out["audio_mask"]) == 1.0
    assert out["captions"].numpy().tolist() == [b"one", b"two"]
    assert out["label_index"].numpy().tolist() == [3, 4] and out["label_index"].dtype == tf.int32
    assert out["label_text"].numpy().tolist() == [b"c", b"d"]
    assert float(out["fps"]) == 12.5 and int(out["sample_rate"]) == 10
    assert int(out["end_us"]) == 240000 and out["filename"].numpy() == b"f.mp4"
    assert out["qa/question"].numpy().tolist() == [b"why?"]
    assert out["event/start_frame"].numpy().tolist() == [2, 5]
  out = sources.parse_example(tf.constant(_record(audio=None)))
  assert out["audio"].shape == (0,) and float(out["audio_mask"]) == 0.0


def _bad_records():
  jpeg = bench.encode_jpegs(bench.synthetic_frames(2, 8, 8))
  multi = tf.train.SequenceExample()
  multi.feature_lists.feature_list[records.IMAGE].feature.add().bytes_list.value.extend(jpeg)
  ctx = tf.train.SequenceExample()
  ctx.context.feature[records.IMAGE].bytes_list.value.extend(jpeg)
  ctx.feature_lists.feature_list[records.IMAGE].feature.add().bytes_list.value.append(jpeg[0])
  other = tf.train.SequenceExample()
  other.context.feature["frames"].bytes_list.value.extend(jpeg)
  return {"multi": multi.SerializeToString(), "context": ctx.SerializeToString(),
          "other": other.SerializeToString()}


@pytest.mark.parametrize("kind,match", [
    ("multi", r"'image/encoded' entry 0 holds 2 values .*ONE JPEG"),
    ("context", r"frames are stored as a context feature 'image/encoded'"),
    ("other", r"context feature 'frames' holds 2 JPEGs"),
])
def test_validate_layout_names_key_and_layout(kind, match):
  with pytest.raises(sources.LayoutError, match=match):
    sources.validate_layout(_bad_records()[kind])
  sources.validate_layout(_record())  # a good record passes


@pytest.mark.parametrize("kind", ["multi", "context"])
def test_parse_example_rejects_bad_layout_in_graph(kind):
  ser = _bad_records()[kind]
  with pytest.raises(tf.errors.InvalidArgumentError, match="image/encoded"):
    sources.parse_example(tf.constant(ser))
  ds = tf.data.Dataset.from_tensors(ser).map(sources.parse_example)
  with pytest.raises(tf.errors.InvalidArgumentError, match="image/encoded"):
    next(iter(ds))
