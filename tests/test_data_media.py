"""Frame timing of vlm.data.media (and the labels vlm.data.write puts in a record) on files the tests write.

Every frame the tests encode carries its own index drawn as 8 black/white bands (bit b in band b), coarse enough to
survive the codec, so a test reads back which source frame each decoded frame is.

* A B-frame AVI (libx264 with B-frames): AVI stores no presentation times, so ffmpeg guesses them, and the guesses
  reach the decoded frames permuted (1, 3, 4, 2, 6, 5, ... for frames 0, 1, 2, 3, 4, 5) although the decoder
  emits the frames in presentation order. The set of guessed times is exact; their order is not.
* A variable-frame-rate clip (mp4 and mkv, with B-frames, frame gaps from 33 ms to 250 ms): the containers store
  exact presentation times, the nominal rate means little.
"""
from __future__ import annotations

import fractions

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV (pip install vlm[media]) is needed to decode media.")

from vlm.data import media  # pylint: disable=g-import-not-at-top

H, W, BITS = 64, 128, 8


def _pattern(i: int) -> np.ndarray:
  """An RGB frame showing the index i as 8 bands (band b white when bit b of i is set)."""
  img = np.zeros((H, W, 3), np.uint8)
  for b in range(BITS):
    if (i >> b) & 1:
      img[:, b * W // BITS:(b + 1) * W // BITS] = 255
  return img


def _index(frame: np.ndarray) -> int:
  """The index drawn by `_pattern`, read from the middle of each band."""
  band = W // BITS
  return sum(int(frame[H // 4:3 * H // 4, b * band + band // 4:(b + 1) * band - band // 4].mean() > 128) << b
             for b in range(BITS))


def _encode(path: str, fmt: str, pts: list[int], time_base: fractions.Fraction, rate: float,
            options: dict[str, str], max_b_frames: int, gop: int = 30) -> None:
  """Encodes frames 0..len(pts)-1 (frame i at pts[i] * time_base) with libx264 into `path`."""
  with av.open(path, "w", format=fmt) as out:
    vs = out.add_stream("libx264", rate=fractions.Fraction(rate).limit_denominator(1001), options=options)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.codec_context.max_b_frames = max_b_frames
    vs.codec_context.gop_size = gop
    vs.codec_context.time_base = time_base
    for i, p in enumerate(pts):
      vf = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
      vf.pts, vf.time_base = p, time_base
      out.mux(vs.encode(vf))
    out.mux(vs.encode())


def _direct(path: str) -> tuple[list[int], np.ndarray]:
  """(source indices in the decoder's output order, their pts in seconds on our clock), without our code."""
  with av.open(path) as c:
    origin = (c.start_time or 0) / 1e6
    s = c.streams.video[0]
    out = [(_index(f.to_ndarray(format="rgb24")), float(f.pts * s.time_base) - origin) for f in c.decode(s)]
  return [i for i, _ in out], np.asarray([t for _, t in out])


def _nearest(times: np.ndarray, t: float) -> int:
  """Index of the time nearest to t (ties: the earlier one)."""
  return int(np.argmin(np.abs(times - t) + 1e-7 * np.arange(len(times))))


def _labels(path: str, **kwargs) -> tuple[list[int], int, int, float]:
  """(picked source indices, start_us, end_us, fps) of the record vlm.data.write makes from `path`."""
  tf = pytest.importorskip("tensorflow")
  from vlm.data import records, write  # pylint: disable=g-import-not-at-top
  row = {"video": path, "start": kwargs.pop("start", None), "end": kwargs.pop("end", None), "captions": ["x"],
         "labels": [], "label_text": []}
  ex = tf.train.SequenceExample.FromString(write.encode_row(row, short_side=None, jpeg_quality=95,
                                                            sample_rate=16000, with_audio=False, **kwargs))
  ctx = ex.context.feature
  jpegs = [f.bytes_list.value[0] for f in ex.feature_lists.feature_list[records.IMAGE].feature]
  ids = [_index(f) for f in media.decode_jpegs(jpegs)]
  return (ids, ctx[records.START_TS].int64_list.value[0], ctx[records.END_TS].int64_list.value[0],
          ctx[records.FPS].float_list.value[0])


@pytest.mark.parametrize("options,max_b_frames", [
    ({"bf": "2", "b-pyramid": "none"}, 2),
    ({"bf": "3", "b-pyramid": "normal"}, 3),
], ids=["bf2", "bf3-pyramid"])
def test_bframe_avi_frames_follow_presentation_time(tmp_path, options, max_b_frames):
  n, rate = 150, 30
  path = str(tmp_path / "bframes.avi")
  _encode(path, "avi", list(range(n)), fractions.Fraction(1, rate), rate, options, max_b_frames)
  order, pts = _direct(path)
  # What makes the file hard: the decoder emits the frames in presentation order, but the timestamps the AVI
  # demuxer guessed are attached to them out of order; sorted, they are the frames' presentation times.
  assert order == list(range(n))
  assert np.any(np.diff(pts) < 0)
  true_t = np.sort(pts)
  np.testing.assert_allclose(np.diff(true_t), 1 / rate, atol=1e-9)
  period = 1 / rate

  # Resampled (10 fps, and a rate that does not divide the source's), with a seek and from the beginning.
  for start, end, fps in ((1.1, 4.5, 10.0), (None, 2.0, 12.0), (2.05, 3.0, 7.0)):
    frames, times, out_fps, source_fps = media.decode_video(path, start=start, end=end, fps=fps, short_side=None)
    assert source_fps == pytest.approx(rate) and out_fps == fps
    t0 = start or 0.0
    targets = t0 + np.arange(int(np.ceil((end - t0) * fps - 1e-9))) / fps
    want = [_nearest(true_t, t) for t in targets]
    assert [_index(f) for f in frames] == want, (start, end, fps)
    np.testing.assert_allclose(times, true_t[want], atol=1e-9)

  # Source rate: every frame whose display interval starts in [start, end) (to half a frame), none lost, in order.
  clip = media.decode_clip(path, start=1.1, end=4.5, fps=None, short_side=None, with_audio=False)
  want = [i for i in range(n) if 1.1 - period / 2 <= true_t[i] < 4.5 - 1e-9]
  assert len(want) == 102
  assert [_index(f) for f in clip.frames] == want
  np.testing.assert_allclose(clip.timestamps, true_t[want], atol=1e-9)
  assert clip.fps == pytest.approx(rate)
  assert clip.start == pytest.approx(true_t[want[0]]) and clip.end == pytest.approx(true_t[want[-1]] + period)
  whole = media.decode_clip(path, fps=None, short_side=None, with_audio=False)
  assert [_index(f) for f in whole.frames] == list(range(n))
  assert whole.start == pytest.approx(true_t[0]) and whole.end == pytest.approx(true_t[-1] + period)

  # The labels written into the record, in both modes.
  ids, start_us, end_us, fps = _labels(path, start=1.1, end=4.5, fps=None)
  assert ids == want and fps == pytest.approx(rate)
  assert (start_us, end_us) == (round(true_t[want[0]] * 1e6), round((true_t[want[-1]] + period) * 1e6))
  ids, start_us, end_us, fps = _labels(path, start=1.1, end=4.5, fps=10.0)
  assert ids == [_nearest(true_t, 1.1 + k / 10) for k in range(34)] and fps == 10.0
  assert (start_us, end_us) == (1_100_000, 4_500_000)


# Frame durations (ms) of the VFR clip: 33 ms to 250 ms, in an irregular order.
_VFR_GAPS_MS = [33, 67, 100, 250, 33, 33, 67, 250, 100, 33, 67, 33, 100, 250, 33, 67]


@pytest.mark.parametrize("fmt,ext", [("mp4", "mp4"), ("matroska", "mkv")])
def test_vfr_clip_picks_nearest_timestamps(tmp_path, fmt, ext):
  gaps = [_VFR_GAPS_MS[i % len(_VFR_GAPS_MS)] for i in range(59)]
  pts_ms = [0] + list(np.cumsum(gaps))
  path = str(tmp_path / f"vfr.{ext}")
  _encode(path, fmt, pts_ms, fractions.Fraction(1, 1000), 30, {"bf": "2"}, 2, gop=12)
  order, pts = _direct(path)
  assert order == list(range(len(pts_ms)))
  true_t = np.asarray(pts_ms) / 1000
  np.testing.assert_allclose(pts, true_t, atol=1e-4)  # The container keeps the exact times.

  for start, end, fps in ((0.5, 3.0, 10.0), (None, 4.0, 6.0), (3.3, 5.0, 15.0)):
    frames, times, _, _ = media.decode_video(path, start=start, end=end, fps=fps, short_side=None)
    t0 = start or 0.0
    targets = t0 + np.arange(int(np.ceil((end - t0) * fps - 1e-9))) / fps
    want = [_nearest(true_t, t) for t in targets]
    assert [_index(f) for f in frames] == want, (start, end, fps)
    np.testing.assert_allclose(times, true_t[want], atol=1e-4)

  # Source rate: the frames in the window, labelled from the first one's time to the time the last one gives
  # way to the next (not first + count / nominal rate, which means little for a VFR file).
  clip = media.decode_clip(path, start=0.5, end=3.0, fps=None, short_side=None, with_audio=False)
  half = 0.5 / clip.source_fps
  want = [i for i in range(len(true_t)) if 0.5 - half <= true_t[i] < 3.0]
  assert [_index(f) for f in clip.frames] == want
  np.testing.assert_allclose(clip.timestamps, true_t[want], atol=1e-4)
  assert clip.start == pytest.approx(true_t[want[0]], abs=1e-4)
  assert clip.end == pytest.approx(true_t[want[-1] + 1], abs=1e-4)
  ids, start_us, end_us, _ = _labels(path, start=0.5, end=3.0, fps=None)
  assert ids == want
  assert abs(start_us - true_t[want[0]] * 1e6) <= 100 and abs(end_us - true_t[want[-1] + 1] * 1e6) <= 100


def test_timestamps_sorted_and_filled_in(monkeypatch):
  """The reorder window on fake frames: permuted pts sorted in place, frames without pts or dts extrapolated."""

  class Frame:

    def __init__(self, name, pts, dts=None):
      self.name, self.pts, self.dts = name, pts, dts

  class Stream:
    time_base = fractions.Fraction(1, 10)

  def run(frames):
    monkeypatch.setattr(media, "_decode", lambda container, stream: iter(frames))
    return [(f.name, t) for f, t in media._timed_frames(None, Stream(), 0.1, 0.5)]

  # Decoder order is presentation order; only the timestamps are permuted (as in a B-frame AVI).
  got = run([Frame(i, p) for i, p in enumerate([6, 8, 9, 7, 11, 10, 13, 12])])
  assert [n for n, _ in got] == list(range(8))
  np.testing.assert_allclose([t for _, t in got], np.arange(8) / 10 + 0.1)
  # No pts: the dts; neither: the previous time plus a period; nothing timed yet: None.
  got = run([Frame("a", None), Frame("b", None, 10), Frame("c", None), Frame("d", 12)])
  assert got[0] == ("a", None)
  np.testing.assert_allclose([t for _, t in got[1:]], [0.5, 0.6, 0.7])
  # Far more frames than the window: still in order, none lost.
  perm = [p for j in range(0, 60, 3) for p in (j + 1, j + 2, j)]
  got = run([Frame(i, p) for i, p in enumerate(perm)])
  np.testing.assert_allclose([t for _, t in got], np.arange(60) / 10 - 0.5)
