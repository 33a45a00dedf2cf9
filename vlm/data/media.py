"""Decoding real media files with PyAV, and JPEG encoding, for the record writer and the TFDS builder.

PyAV (`pip install vlm[media]`) is an optional dependency: it is imported inside the functions that need it, so the
rest of `vlm.data` imports without it.

Time convention: every timestamp here is in seconds on the container's clock, shifted so that the container's
`start_time` is 0. Video and audio share that clock, which is what keeps a clip's frames and its audio in sync
even when the two streams start at different presentation times (common in mpg and avi files).

Frame times: a frame's time is its presentation timestamp (pts). Decoders emit frames in presentation order, but
the timestamps attached to them are not always in that order: AVI stores no pts, so with B-frames (e.g. H.264 in
AVI) ffmpeg's guesses reach the decoded frames permuted (1, 3, 4, 2, 6, 5, ... for frames 0, 1, 2, ...). The set of
guessed values is right, their order is not (ffmpeg's `best_effort_timestamp`, which PyAV does not expose, would
use decode timestamps, late by the reorder delay). So the decoder's frame order is kept and its timestamps are
sorted through a reorder window of `_REORDER_DEPTH` frames (the most frames H.264 can reorder): the k-th frame out
of the decoder gets the k-th smallest pts. With timestamps already in order (mp4, mkv, webm) this changes nothing;
around a backward jump in a stream's timestamps (a broken or concatenated file) times are misplaced by up to that
many frames.
A frame without pts takes its decode timestamp; without either, the previous frame's time plus one source period,
or `index / source_fps` from the stream's start (a seek is then undone: the stream is decoded from its start).

Frame-rate resampling picks, for each target time `start + k / fps`, the frame whose timestamp is nearest (DMVR's
generate_from_file.py uses ffmpeg's `fps` filter, which also picks the nearest frame); the clip is
[start, start + F / fps). At the source rate (fps None or 0) the clip keeps every frame whose time lies in
[start - half a source period, end) and spans [first frame's time, the time the last frame gives way to the next
one) (its time plus one source period at the end of the stream): for a constant-rate file that is
first + F / source_fps, for a variable-rate one it is the frames' real extent. The source rate is read from
`stream.guessed_rate`: `stream.average_rate` is garbage for some real files (it was -48428 for one mp4).

Audio sync: samples are counted from the audio stream's first frame, so a window's audio is sample-exact for
PCM, AAC-in-mp4 and Opus-in-WebM (checked by the tests against a muxed wav). Windows starting after 60 s are
reached by seeking, which is as precise as the container's timestamps (1 ms in Matroska/WebM). MPEG-1 layer II
audio (mpg files) carries a fixed 481-sample decoder delay that MPEG program streams cannot signal, so such files
are about 10 ms late by construction; nothing here corrects it.
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import io
import math
from typing import Any, Iterator, Sequence

import numpy as np

DEFAULT_SAMPLE_RATE = 48_000
DEFAULT_SHORT_SIDE = 256
DEFAULT_JPEG_QUALITY = 90
_MAX_BAD_PACKETS = 50
# Audio is decoded from the stream's start unless the window starts later than this: counting samples from the
# start is exact, while the first frame after a seek is only as precise as the container's timestamps (1 ms in
# Matroska/WebM, 48 samples at 48 kHz). Decoding a minute of audio takes well under a second.
_AUDIO_SEEK_AFTER_S = 60.0
# Frames held back to put their timestamps in presentation order (see the module docstring): H.264's largest
# reorder depth. Costs that many decoded (not converted) frames of memory and of decoding past a clip's end.
_REORDER_DEPTH = 16


def import_av() -> Any:
  """Imports PyAV, or raises an ImportError that says how to install it."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "Decoding video or audio files needs PyAV, an optional dependency of vlm. Install it with "
        "`pip install vlm[media]` (or `pip install av`).") from e
  return av


@dataclasses.dataclass
class DecodedClip:
  """A decoded clip.

  Attributes:
    frames: uint8 [F, H, W, 3] RGB frames, at `fps` (or at the source rate when no target fps was given).
    timestamps: float64 [F] source timestamps (seconds) of the frames that were picked.
    fps: frame rate of `frames` (at the source rate: the stream's nominal rate, `source_fps`).
    start: clip start (seconds). Resampled: the requested start, frame k stands for time `start + k / fps`. At the
      source rate: the first frame's time.
    end: clip end (seconds). Resampled: `start + F / fps`. At the source rate: the time the last frame gives way to
      the next one (its time plus one source period at the end of the stream); `start + F / fps` for a
      constant-rate file.
    audio: float32 [S] mono waveform in [-1, 1] covering [start, end) at `sample_rate`, S = round((end - start) *
      sample_rate); None when the file has no audio stream or audio was not requested.
    sample_rate: audio sample rate.
    source_fps: the video stream's frame rate (`guessed_rate`).
  """
  frames: np.ndarray
  timestamps: np.ndarray
  fps: float
  start: float
  end: float
  audio: np.ndarray | None
  sample_rate: int
  source_fps: float


def _clock_origin(container: Any) -> float:
  """The container's start time in seconds (0 when unknown): the zero of our timestamps."""
  st = container.start_time  # In AV_TIME_BASE (microsecond) units, or None.
  return 0.0 if st is None else st / 1e6


def _timed_frames(container: Any, stream: Any, period: float,
                  origin: float) -> Iterator[tuple[Any, float | None]]:
  """(frame, time on our clock) in the decoder's order, which is presentation order; see the module docstring.

  The timestamps are put in order through a window of `_REORDER_DEPTH` frames: each frame leaving the window takes
  the smallest timestamp in it. A frame with neither pts nor dts follows the previous frame by `period`; its time
  is None when no frame before it had a time.
  """
  time_base = stream.time_base
  pending: collections.deque = collections.deque()  # (frame, whether it brought a timestamp), oldest first.
  heap: list[float] = []  # The timestamps that the pending frames brought.
  last = None

  def release() -> tuple[Any, float | None]:
    nonlocal last
    frame, timed = pending.popleft()
    if timed:
      t = heapq.heappop(heap)
    else:
      t = None if last is None else last + period
    if t is not None:
      last = t
    return frame, t

  for frame in _decode(container, stream):
    ts = frame.pts if frame.pts is not None else getattr(frame, "dts", None)
    timed = ts is not None and time_base is not None
    if timed:
      heapq.heappush(heap, float(ts * time_base) - origin)
    pending.append((frame, timed))
    if len(pending) > _REORDER_DEPTH:
      yield release()
  while pending:
    yield release()


def _decode(container: Any, stream: Any) -> Iterator[Any]:
  """Decoded frames of `stream`, skipping packets the decoder rejects.

  Corrupt packets happen mid-stream in real files and right after a seek in MPEG program streams; like the ffmpeg
  command line, skip them rather than lose the whole clip (a file that is garbage throughout still fails: at open,
  or with too many bad packets).
  """
  av = import_av()
  bad = 0
  for packet in container.demux(stream):
    try:
      frames = packet.decode()
    except av.error.InvalidDataError:
      bad += 1
      if bad > _MAX_BAD_PACKETS:
        raise
      continue
    yield from frames


def output_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
  """(H, W) after resizing so the short side is `short_side`, keeping the aspect ratio (None keeps the size)."""
  if not short_side:
    return height, width
  if height <= width:
    return short_side, max(1, int(round(width * short_side / height)))
  return max(1, int(round(height * short_side / width))), short_side


def _to_rgb(frame: Any, size: tuple[int, int]) -> np.ndarray:
  """Converts (and scales, with swscale's area filter, which does not alias when shrinking) to uint8 [H, W, 3]."""
  h, w = size
  if (frame.height, frame.width) == (h, w):
    return frame.to_ndarray(format="rgb24")
  return frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


def _seek(container: Any, stream: Any, seconds: float, origin: float) -> None:
  """Seeks `stream` to the keyframe at or before `seconds` (our clock)."""
  if seconds <= 0 or stream.time_base is None:
    return
  target = int(math.floor((seconds + origin) / stream.time_base))
  container.seek(max(0, target), stream=stream, backward=True, any_frame=False)


def decode_video(
    path: str,
    *,
    start: float | None = None,
    end: float | None = None,
    fps: float | None = 10.0,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    max_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float, float]:
  """Decodes the video stream of `path` between `start` and `end` seconds.

  Frames are chosen by presentation time, whatever the decode order (see the module docstring).

  Args:
    path: a video file PyAV can open (mp4, avi, mpg, webm, mkv, ...).
    start: clip start in seconds (None: the beginning).
    end: clip end in seconds (None: the end of the stream).
    fps: target frame rate; frame k is the source frame nearest to `start + k / fps` (frames repeat when the
      source is slower). None or 0 keeps every source frame whose time lies in [start - half a source period,
      end).
    short_side: resize so the shorter side has this many pixels, keeping the aspect ratio; None keeps the size.
    max_frames: stop after this many output frames.

  Returns:
    (frames uint8 [F, H, W, 3], timestamps float64 [F] (source times of the picked frames), output fps,
    source fps). F is 0 when nothing was decoded in the window.

  Raises:
    ImportError: PyAV is missing.
    av.error.FFmpegError (or ValueError): the file cannot be opened or has no video stream.
  """
  frames, times, out_fps, source_fps, _ = _decode_video(path, start, end, fps, short_side, max_frames)
  return frames, times, out_fps, source_fps


def _decode_video(path, start, end, fps, short_side, max_frames):
  """`decode_video`, also returning the time the last picked frame gives way to the next one (None: no frame)."""
  av = import_av()
  start = max(0.0, float(start or 0.0))
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError(f"{path}: no video stream.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # Frame-threaded decoding; the order of frames is unchanged.
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    source_fps = float(rate) if rate and float(rate) > 0 else 25.0
    origin = _clock_origin(container)
    out_fps = float(fps) if fps else source_fps
    decoded = _decode_frames(container, stream, start, end, fps, short_side, max_frames, source_fps, origin,
                             seek=start > 0)
    if decoded is None:
      # The seek overshot (raw mpeg streams and broken indexes seek badly), or landed on frames without any
      # timestamp: decode again from the beginning.
      container.seek(0)
      decoded = _decode_frames(container, stream, start, end, fps, short_side, max_frames, source_fps, origin,
                               seek=False)
  frames, times, last_end = decoded
  if not frames:
    return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0,), np.float64), out_fps, source_fps, None
  return np.stack(frames), np.asarray(times, np.float64), out_fps, source_fps, last_end


def _decode_frames(container, stream, start, end, fps, short_side, max_frames, source_fps, origin, seek):
  """The decoding loop of `decode_video`.

  Returns:
    (list of uint8 [H, W, 3] arrays, list of their source times, the time the last of them gives way to the next
    frame (the next frame's time, or the last one's plus a source period at the end of the stream; None without
    frames)), or None when `seek` is set and the first frame after seeking lies beyond `start` or has no time (the
    caller then decodes from the beginning).
  """
  if seek:
    _seek(container, stream, start, origin)
  period = 1.0 / source_fps
  end_t = math.inf if end is None else float(end)
  out, times = [], []
  size = None
  prev, prev_t = None, None
  last_end = None
  k = 0  # Index of the next target time `start + k / fps` (resampling mode).

  def more() -> bool:
    """Whether another output frame is wanted (resampling mode)."""
    return ((max_frames is None or len(out) < max_frames) and start + k / fps < end_t - 1e-9)

  for i, (frame, t) in enumerate(_timed_frames(container, stream, period, origin)):
    if t is None:
      if seek:
        return None  # No timestamp to tell where the seek landed.
      t = i * period  # No timestamp yet, decoding from the stream's start: count frames.
    if size is None:
      size = output_size(frame.height, frame.width, short_side)
    if seek and prev is None and t > start + 1.5 * period:
      return None
    if not fps:
      # Native rate: keep the frames whose time lies in [start - period / 2, end).
      if t + 0.5 * period < start:
        prev, prev_t = frame, t
        continue
      if t >= end_t - 1e-9 or (max_frames is not None and len(out) >= max_frames):
        if out:
          last_end = t  # The last kept frame is shown until this one.
        break
      out.append(_to_rgb(frame, size))
      times.append(t)
      prev, prev_t = frame, t
      continue
    # Resampling: every target time at or before this frame takes the nearer of the previous frame and this one
    # (before the stream's first frame, the first frame).
    while more() and start + k / fps <= t:
      tk = start + k / fps
      if prev is not None and abs(prev_t - tk) <= abs(t - tk) + 1e-6:  # Ties take the earlier frame.
        out.append(_to_rgb(prev, size))
        times.append(prev_t)
      else:
        out.append(_to_rgb(frame, size))
        times.append(t)
      k += 1
    if not more():
      break
    prev, prev_t = frame, t
  else:
    # End of stream: the targets before the end of the last frame's display interval take the last frame.
    if fps and prev is not None:
      end_t = min(end_t, prev_t + period)
      while more():
        out.append(_to_rgb(prev, size))
        times.append(prev_t)
        k += 1
    if not fps and out:
      last_end = times[-1] + period
  if fps and out:
    last_end = start + len(out) / fps
  return out, times, last_end


def decode_audio(
    path: str,
    *,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    num_samples: int | None = None,
) -> np.ndarray | None:
  """Decodes the first audio stream of `path`, mixed down to mono and resampled, between `start` and `end`.

  Args:
    path: a media file.
    start: window start in seconds (None: 0).
    end: window end in seconds (None: the end of the stream).
    sample_rate: output rate (libswresample via PyAV's AudioResampler).
    num_samples: exact output length; the window is zero-padded or cut to it (default: round((end - start) *
      sample_rate), or everything to the end of the stream when `end` is None).

  Returns:
    float32 [S] mono waveform in [-1, 1], sample i at time start + i / sample_rate; None when the file has no
    audio stream.
  """
  av = import_av()
  start = max(0.0, float(start or 0.0))
  if num_samples is None and end is not None:
    num_samples = max(0, int(round((float(end) - start) * sample_rate)))
  with av.open(path) as container:
    if not container.streams.audio:
      return None
    stream = container.streams.audio[0]
    origin = _clock_origin(container)
    if start > _AUDIO_SEEK_AFTER_S:
      # Seek a little early: the first frame after a seek may start after the position we asked for.
      _seek(container, stream, start - 1.0, origin)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    t0 = None  # Time of chunks[0][0] on our clock.
    have = 0
    stop = None if num_samples is None else start + num_samples / sample_rate

    def add(outs, fallback_t0: float):
      nonlocal t0, have
      for o in outs:
        if t0 is None:
          # The resampler stamps its output with the input's clock (its own delay accounted for).
          t0 = float(o.time) - origin if o.time is not None else fallback_t0
        arr = o.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        chunks.append(arr)
        have += arr.size

    for frame in _decode(container, stream):
      add(resampler.resample(frame), (float(frame.time) - origin) if frame.time is not None else 0.0)
      if stop is not None and t0 is not None and t0 + have / sample_rate >= stop + 0.1:
        break
    add(resampler.resample(None), 0.0)  # Flush the resampler's delay line.
  wave = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
  t0 = 0.0 if t0 is None else t0
  offset = int(round((start - t0) * sample_rate))  # Index of `start` in `wave` (negative: before the stream).
  if num_samples is None:
    num_samples = max(0, wave.size - max(offset, 0))
  out = np.zeros((num_samples,), np.float32)
  lo, hi = max(offset, 0), min(offset + num_samples, wave.size)
  if hi > lo:
    out[lo - offset:hi - offset] = wave[lo:hi]
  # Downmixing (e.g. 5.1 to mono) can exceed full scale; the record format requires [-1, 1].
  return np.clip(out, -1.0, 1.0)


def decode_clip(
    path: str,
    *,
    start: float | None = None,
    end: float | None = None,
    fps: float | None = 10.0,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    with_audio: bool = True,
    max_frames: int | None = None,
) -> DecodedClip:
  """Decodes frames (see `decode_video`) and the audio that covers exactly the same time window.

  The window is [start, start + F / fps): with resampling, frame k stands for `start + k / fps`, so the audio
  has round(F / fps * sample_rate) samples (153,600 for 32 frames at 10 fps and 48 kHz). At the source rate the
  window is the frames' own extent, [first frame's time, the time the last one gives way to the next), and the
  audio has round((end - start) * sample_rate) samples (the same count for a constant-rate file).

  Returns:
    A `DecodedClip`; `frames` has F = 0 when the window holds no frame.
  """
  frames, times, out_fps, source_fps, last_end = _decode_video(path, start, end, fps, short_side, max_frames)
  t_start = max(0.0, float(start or 0.0))
  t_end = t_start + len(frames) / out_fps
  if not fps and len(times):
    # Native rate: the clip spans its frames' display intervals (first + F / fps for a constant-rate file).
    t_start, t_end = float(times[0]), float(last_end)
  audio = None
  if with_audio and len(frames):
    audio = decode_audio(path, start=t_start, sample_rate=sample_rate,
                         num_samples=int(round((len(frames) / out_fps if fps else t_end - t_start) * sample_rate)))
  return DecodedClip(frames=frames, timestamps=times, fps=out_fps, start=t_start, end=t_end, audio=audio,
                     sample_rate=sample_rate, source_fps=source_fps)


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
  """Encodes one uint8 [H, W, 3] RGB (or [H, W] / [H, W, 1] grey, or [H, W, 4] RGBX) frame as JPEG.

  Uses Pillow when installed (about 3x faster per call than an eager TF op), else `tf.io.encode_jpeg`. Both
  subsample chroma 4:2:0 by default; their bytes may differ, but each is deterministic.
  """
  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    raise ValueError(f"encode_jpeg expects uint8 frames, got {frame.dtype}.")
  if frame.ndim == 3 and frame.shape[-1] == 1:
    frame = frame[..., 0]
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    x = frame[..., :3] if frame.ndim == 3 else frame[..., None]
    return tf.io.encode_jpeg(x, quality=int(quality)).numpy()
  if frame.ndim == 3 and frame.shape[-1] == 4:
    # RGBX: Pillow stores RGB as 4 bytes per pixel anyway, so this skips a strided copy of the 3 channels.
    h, w = frame.shape[:2]
    image = Image.frombuffer("RGB", (w, h), np.ascontiguousarray(frame), "raw", "RGBX", 0, 1)
  else:
    image = Image.fromarray(frame)
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()


def encode_jpegs(frames: np.ndarray | Sequence[np.ndarray], quality: int = DEFAULT_JPEG_QUALITY) -> list[bytes]:
  """Encodes uint8 [F, H, W, 3] (or RGBX [F, H, W, 4]) frames, one JPEG per frame (the layout DMVR expects)."""
  return [encode_jpeg(f, quality) for f in frames]


def decode_jpegs(encoded: Sequence[bytes]) -> np.ndarray:
  """Decodes JPEGs to uint8 [F, H, W, 3] (for tests and inspection; the pipeline decodes inside tf.data)."""
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
  except ImportError:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in encoded])
