"""Video pp ops: clip sampling (before decoding), JPEG decode-and-crop, spatial and colour augmentation.

Keys. A parsed record holds `frames_jpeg` (string [N], one JPEG per frame) or, on the JPEG-free path (TFDS),
`frames` (uint8 [N, H, W, 3]); `fps` (float32 [], 0 when unknown), `audio` (float32 [S]) and `sample_rate`.

1. Sampling ops pick frame indices *before* decoding, so only the chosen frames are ever decoded. They gather
   `frames_jpeg` / `frames` in place (string [F] or [C, F]) and store the indices in `frame_index` (int32, same
   shape). With `audio_samples > 0` they also cut the audio window that covers the clip's time span (start time
   x `sample_rate`), so audio stays in sync: `audio` becomes float32 [S] or [C, S].
     sample_clip       one clip of F frames at a stride or a target fps (random start in training, middle at eval)
     sample_multiclip  C clips with uniformly spaced starts (eval, VATT B.5/B.9: 4 clips)
     sample_segments   TSN-style sparse sampling: T equal chunks, one random frame each (train) or the middle
   Clips shorter than needed follow `pad`: 'loop' (indices wrap), 'pad_last' (repeat the last frame) or 'error'.
2. Crop ops decode JPEGs (only the crop window, `tf.image.decode_and_crop_jpeg` with the box computed from
   `tf.image.extract_jpeg_shape`) or slice decoded frames, then resize. One window is used for every frame of a
   clip. Output `video`: float32 [..., F, size, size, 3] in [0, 1].
     random_resized_crop (Inception crop; VATT B.1: area [0.08, 1], aspect [0.5, 2]), center_crop, three_crop
     (adds a view axis: [C, F] -> [C * 3, F, ...]), random_crop, decode, resize, resize_smallest
3. Augmentation on `video` (float [0, 1], any leading axes; the same draw for all frames and views of a clip):
   flip, color_jitter (VATT B.1 / DMVR default: brightness 32/255, saturation 0.4, contrast 0.4, hue 0.2,
   p = 0.8, clip to [0, 1]; a fused YIQ form by default, the exact tf.image HSV ops with impl='hsv'), randaugment (same ops and magnitudes for every frame), normalize, standardize.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from vlm.data import pp
from vlm.data.pp import register

PAD_POLICIES = ("loop", "pad_last", "error")


def _frame_keys(data, inkey: str | None) -> list[str]:
  if inkey:
    return [inkey]
  keys = [k for k in ("frames_jpeg", "frames") if k in data]
  if not keys:
    raise KeyError(f"No frames in the example: expected 'frames_jpeg' or 'frames', got keys {sorted(data)}.")
  return keys


def _num_frames(data, keys) -> tf.Tensor:
  return tf.shape(data[keys[0]], out_type=tf.int32)[0]


def _source_fps(data, fallback: float) -> tf.Tensor:
  fps = tf.cast(data.get("fps", 0.0), tf.float32)
  return tf.where(fps > 0, fps, tf.constant(fallback, tf.float32))


def _offsets(num_frames: int, stride: int, fps: float | None, src_fps: tf.Tensor) -> tf.Tensor:
  """Frame offsets (int32 [F]) of one clip relative to its start frame."""
  i = tf.range(num_frames, dtype=tf.float32)
  if fps:
    # Resample in time: target frame i sits at t = i / fps, i.e. source frame floor(t * src_fps).
    # The epsilon keeps exact multiples (e.g. 25 fps -> 12.5 fps) from flooring one frame too low.
    return tf.cast(tf.floor(i * src_fps / fps + 1e-4), tf.int32)
  return tf.range(num_frames, dtype=tf.int32) * stride


def _clip_geometry(data, inkey, num_frames: int, stride: int, fps: float | None, default_fps: float):
  """(frame keys, N frames, source fps, [F] frame offsets of one clip, its span in frames, the last start)."""
  keys = _frame_keys(data, inkey)
  n = _num_frames(data, keys)
  src_fps = _source_fps(data, default_fps)
  off = _offsets(num_frames, stride, fps, src_fps)
  span = off[-1] + 1
  return keys, n, src_fps, off, span, tf.maximum(n - span, 0)


def _apply_pad(idx: tf.Tensor, n: tf.Tensor, span: tf.Tensor, pad: str) -> tf.Tensor:
  if pad == "loop":
    return tf.math.floormod(idx, tf.maximum(n, 1))
  if pad == "pad_last":
    return tf.minimum(idx, n - 1)
  if pad == "error":
    check = tf.debugging.assert_greater_equal(
        n, span, message="Clip too short for the requested frames (pad='error'): record frames < needed span")
    # In a tf.data graph the assertion must run before the gather that would fail on the short clip, or the
    # gather's out-of-range error can win the race and hide the message.
    with tf.control_dependencies([check] if check is not None else []):
      return tf.identity(idx)
  raise ValueError(f"pad must be one of {PAD_POLICIES}, got {pad!r}.")


def _gather_frames(data, keys, idx):
  for k in keys:
    data[k] = tf.gather(data[k], idx)
  data["frame_index"] = idx
  return data


def _sync_audio(data, start_s: tf.Tensor, audio_samples: int, pad: str, audio_key: str):
  """Cuts `audio_samples` samples from `start_s` (seconds, [] or [C]) at the record's sample rate."""
  if not audio_samples or audio_key not in data:
    return data
  audio = tf.reshape(tf.cast(data[audio_key], tf.float32), [-1])
  length = tf.shape(audio, out_type=tf.int64)[0]
  sr = tf.cast(data.get("sample_rate", 48000), tf.float32)
  a0 = tf.cast(tf.round(tf.cast(start_s, tf.float32) * sr), tf.int64)
  pos = tf.expand_dims(a0, -1) + tf.range(audio_samples, dtype=tf.int64)  # [..., S]
  if pad == "loop":
    pos = tf.math.floormod(pos, tf.maximum(length, 1))
  valid = (pos < length) & (pos >= 0)
  # Missing audio (length 0) or a window past the end reads zeros; audio_mask stays as parsed.
  safe = tf.clip_by_value(pos, 0, tf.maximum(length - 1, 0))
  padded = tf.concat([audio, tf.zeros([1], tf.float32)], 0)  # so gather works when length == 0
  out = tf.where(valid, tf.gather(padded, safe), 0.0)
  data[audio_key] = tf.ensure_shape(out, start_s.shape.concatenate([audio_samples]))
  return data


@register()
def sample_clip(num_frames: int, stride: int = 1, fps: float | None = None, random: bool = True,
                pad: str = "loop", audio_samples: int = 0, default_fps: float = 25.0,
                inkey: str | None = None, audio_key: str = "audio") -> pp.Op:
  """One clip of `num_frames` frames: string [N] -> [F] (and `audio` [S] in sync when audio_samples > 0).

  Args:
    num_frames: F.
    stride: source-frame stride (ignored when `fps` is given).
    fps: target frame rate: frames are resampled in time from the record's `fps` (VATT: 32 frames at 10 fps).
    random: random start (training) or the middle of the record (eval).
    pad: policy for records shorter than the clip: 'loop' | 'pad_last' | 'error'. 'error' raises
      InvalidArgumentError; inside the pipeline (input.skip_errors=True) the record is then counted and skipped,
      and the eager check before training raises it for the first records.
    audio_samples: if > 0, cut this many audio samples starting at the clip's start time (VATT: 153600 =
      3.2 s at 48 kHz); 0 leaves `audio` untouched.
    default_fps: the record's frame rate when it stores none (`video/fps` missing or 0).
    inkey: frames key (default: `frames_jpeg` and/or `frames`, whichever exist).
    audio_key: the waveform key.
  """
  if pad not in PAD_POLICIES:
    raise ValueError(f"sample_clip: pad must be one of {PAD_POLICIES}, got {pad!r}.")

  def op(data):
    data = dict(data)
    keys, n, src_fps, off, span, max_start = _clip_geometry(data, inkey, num_frames, stride, fps, default_fps)
    if random:
      start = tf.random.stateless_uniform([], pp.get_seed(data), 0, max_start + 1, dtype=tf.int32)
    else:
      start = max_start // 2
    idx = _apply_pad(start + off, n, span, pad)
    data = _gather_frames(data, keys, idx)
    return _sync_audio(data, tf.cast(start, tf.float32) / src_fps, audio_samples, pad, audio_key)

  return op


@register()
def sample_multiclip(num_clips: int, num_frames: int, stride: int = 1, fps: float | None = None,
                     pad: str = "loop", audio_samples: int = 0, default_fps: float = 25.0,
                     inkey: str | None = None, audio_key: str = "audio") -> pp.Op:
  """`num_clips` clips with uniformly spaced starts covering the record: [N] -> [C, F] (audio [C, S]).

  Deterministic (eval). With C = 1 the clip is the middle one, as `sample_clip(random=False)`. Arguments as in
  `sample_clip`.
  """
  if pad not in PAD_POLICIES:
    raise ValueError(f"sample_multiclip: pad must be one of {PAD_POLICIES}, got {pad!r}.")

  def op(data):
    data = dict(data)
    keys, n, src_fps, off, span, max_start = _clip_geometry(data, inkey, num_frames, stride, fps, default_fps)
    if num_clips == 1:
      starts = tf.reshape(max_start // 2, [1])
    else:
      frac = tf.range(num_clips, dtype=tf.float32) / float(num_clips - 1)
      starts = tf.cast(tf.round(frac * tf.cast(max_start, tf.float32)), tf.int32)
    idx = _apply_pad(starts[:, None] + off[None, :], n, span, pad)  # [C, F]
    data = _gather_frames(data, keys, idx)
    return _sync_audio(data, tf.cast(starts, tf.float32) / src_fps, audio_samples, pad, audio_key)

  return op


@register()
def sample_segments(num_segments: int, random: bool = True, inkey: str | None = None) -> pp.Op:
  """Sparse segment sampling (TSN; SViTT / TW-BERT): split the record into T equal chunks, take one frame each.

  Training takes a random frame per chunk, eval the middle one. [N] -> [T]. Records with N < T repeat frames.
  Audio is left untouched (a sparse clip spans the whole record).
  """

  def op(data):
    data = dict(data)
    keys = _frame_keys(data, inkey)
    n = tf.cast(_num_frames(data, keys), tf.float32)
    i = tf.range(num_segments, dtype=tf.float32)
    lo = tf.floor(i * n / num_segments)
    hi = tf.maximum(tf.floor((i + 1) * n / num_segments), lo + 1)
    if random:
      u = tf.random.stateless_uniform([num_segments], pp.get_seed(data))
      idx = lo + tf.floor(u * (hi - lo))
    else:
      idx = lo + tf.floor((hi - lo - 1) / 2)
    idx = tf.cast(tf.minimum(idx, tf.maximum(n - 1, 0)), tf.int32)
    return _gather_frames(data, keys, idx)

  return op


# ----------------------------------------------------------------------------------------------------------------
# Decoding and cropping.


def _is_jpeg(x: tf.Tensor) -> bool:
  return x.dtype == tf.string


def _image_hw(frames: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(height, width) int32 of the clip: from the first JPEG's header, or the decoded shape."""
  frames = tf.convert_to_tensor(frames)
  if _is_jpeg(frames):
    shape = tf.image.extract_jpeg_shape(tf.reshape(frames, [-1])[0])
    return shape[0], shape[1]
  shape = tf.shape(frames)
  return shape[-3], shape[-2]


def _decode_all(frames: tf.Tensor, window: tf.Tensor | None = None, dct_method: str = "") -> tf.Tensor:
  """Frames [...] (JPEG) or [..., H, W, 3] -> uint8 [..., h, w, 3] cropped to `window` = (y, x, h, w)."""
  frames = tf.convert_to_tensor(frames)
  if not _is_jpeg(frames):
    if window is None:
      return frames
    y, x, h, w = tf.unstack(window)
    return frames[..., y:y + h, x:x + w, :]
  lead = tf.shape(frames)
  flat = tf.reshape(frames, [-1])
  if window is None:
    fn = lambda j: tf.io.decode_jpeg(j, channels=3, dct_method=dct_method)
  else:
    fn = lambda j: tf.image.decode_and_crop_jpeg(j, window, channels=3, dct_method=dct_method)
  out = tf.map_fn(fn, flat, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  out = tf.reshape(out, tf.concat([lead, tf.shape(out)[1:]], 0))
  return tf.ensure_shape(out, frames.shape.concatenate([None, None, 3]))


def _to_float(x: tf.Tensor) -> tf.Tensor:
  """uint8 -> float32 / 255; float passes through."""
  x = tf.convert_to_tensor(x)
  if x.dtype == tf.uint8:
    return tf.cast(x, tf.float32) * (1.0 / 255.0)
  return tf.cast(x, tf.float32)


def _resize(x: tf.Tensor, size: Sequence[int] | tf.Tensor, method: str = "bilinear",
            antialias: bool = False) -> tf.Tensor:
  """[..., h, w, 3] -> float32 [..., H, W, 3]; uint8 input is scaled to [0, 1]."""
  x = tf.convert_to_tensor(x)
  scale = 1.0 / 255.0 if x.dtype == tf.uint8 else 1.0
  shape = tf.shape(x)
  flat = tf.reshape(x, tf.concat([[-1], shape[-3:]], 0))
  out = tf.image.resize(flat, size, method=method, antialias=antialias) * scale
  out = tf.reshape(out, tf.concat([shape[:-3], tf.shape(out)[1:]], 0))
  static = list(size) if isinstance(size, (list, tuple)) else [None, None]
  return tf.ensure_shape(out, x.shape[:-3].concatenate(static + [3]))


def _pair(size) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def _crop_decode_resize(frames, window, size, method, dct_method):
  return _resize(_decode_all(frames, window, dct_method), _pair(size), method)


@register()
def decode(inkey: str = "frames_jpeg", outkey: str = "video", dct_method: str = "") -> pp.Op:
  """Full JPEG decode: string [...] -> uint8 [..., H, W, 3] (no crop, no resize)."""

  def op(data):
    return {**data, outkey: _decode_all(data[inkey], None, dct_method)}

  return op


def _default_inkey(data, inkey):
  return inkey or _frame_keys(data, None)[0]


@register()
def random_resized_crop(size: int | Sequence[int], area: Sequence[float] = (0.08, 1.0),
                        aspect: Sequence[float] = (0.5, 2.0), min_object_covered: float = 0.0,
                        max_attempts: int = 10, method: str = "bilinear", dct_method: str = "",
                        inkey: str | None = None, outkey: str = "video") -> pp.Op:
  """Inception-style crop, the same region for every frame, decoded from the JPEGs' crop window only.

  VATT B.1: relative area in [0.08, 1], aspect ratio in [0.5, 2], then resized to 224. Falls back to the whole
  frame when no box is found in `max_attempts`. Output float32 [..., F, size, size, 3] in [0, 1].
  """

  def op(data):
    frames = data[_default_inkey(data, inkey)]
    h, w = _image_hw(frames)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([h, w, 3]), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=pp.get_seed(data),
        min_object_covered=min_object_covered, aspect_ratio_range=tuple(aspect), area_range=tuple(area),
        max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    return {**data, outkey: _crop_decode_resize(frames, window, size, method, dct_method)}

  return op


def _center_window(h, w, size_hw, resize_smallest):
  """Source-pixel window (y, x, ch, cw) that becomes a central `size_hw` crop after resizing the short side."""
  hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  short = tf.minimum(hf, wf)
  scale = tf.constant(1.0) if resize_smallest is None else float(resize_smallest) / short
  # Never crop more than the frame: upscale when the frame is smaller than the crop.
  scale = tf.maximum(scale, max(size_hw) / short)
  ch = tf.minimum(tf.cast(tf.round(size_hw[0] / scale), tf.int32), h)
  cw = tf.minimum(tf.cast(tf.round(size_hw[1] / scale), tf.int32), w)
  return ch, cw


@register()
def center_crop(size: int | Sequence[int], resize_smallest: int | None = None, method: str = "bilinear",
                dct_method: str = "", inkey: str | None = None, outkey: str = "video") -> pp.Op:
  """Central crop (eval): as if the short side were resized to `resize_smallest` and then `size` cropped.

  Only the window is decoded. `resize_smallest=None` crops `size` source pixels (VATT B.9: 224 central crops of
  256-short-side frames). Output float32 [..., F, size, size, 3] in [0, 1].
  """
  size_hw = _pair(size)

  def op(data):
    frames = data[_default_inkey(data, inkey)]
    h, w = _image_hw(frames)
    ch, cw = _center_window(h, w, size_hw, resize_smallest)
    window = tf.stack([(h - ch) // 2, (w - cw) // 2, ch, cw])
    return {**data, outkey: _crop_decode_resize(frames, window, size, method, dct_method)}

  return op


@register()
def three_crop(size: int | Sequence[int], resize_smallest: int | None = None, method: str = "bilinear",
               dct_method: str = "", inkey: str | None = None, outkey: str = "video") -> pp.Op:
  """Three crops along the long side (start, centre, end), stacked as views (VATT B.5: 4 clips x 3 crops).

  [F] -> [3, F, size, size, 3]; [C, F] -> [C * 3, F, size, size, 3] (clip-major: views c*3 + k).
  """
  size_hw = _pair(size)

  def op(data):
    frames = tf.convert_to_tensor(data[_default_inkey(data, inkey)])
    h, w = _image_hw(frames)
    ch, cw = _center_window(h, w, size_hw, resize_smallest)
    full = _decode_all(frames, None, dct_method)  # The three windows overlap: decode each frame once.
    portrait = h > w
    views = []
    for k in range(3):
      # Along the long side the start is 0, centre, end; the short side is centred.
      y = tf.where(portrait, [0, (h - ch) // 2, h - ch][k], (h - ch) // 2)
      x = tf.where(portrait, (w - cw) // 2, [0, (w - cw) // 2, w - cw][k])
      views.append(_resize(_decode_all(full, tf.stack([y, x, ch, cw])), size_hw, method))
    video = tf.stack(views, axis=-5)  # [..., 3, F, H, W, 3]
    if frames.shape.rank >= 2:
      shape = tf.shape(video)
      video = tf.reshape(video, tf.concat([[-1], shape[-4:]], 0))
      video = tf.ensure_shape(video, [None if frames.shape[0] is None else frames.shape[0] * 3,
                                      frames.shape[1], *size_hw, 3])
    return {**data, outkey: video}

  return op


@register()
def random_crop(size: int | Sequence[int], inkey: str | None = None, outkey: str = "video",
                dct_method: str = "") -> pp.Op:
  """A random `size` crop (same position for every frame), no resize; frames smaller than `size` are upscaled."""
  size_hw = _pair(size)

  def op(data):
    frames = data[_default_inkey(data, inkey)]
    h, w = _image_hw(frames)
    ch, cw = tf.minimum(size_hw[0], h), tf.minimum(size_hw[1], w)
    sy, sx = tf.unstack(pp.get_seed(data, 2))
    y = tf.random.stateless_uniform([], sy, 0, h - ch + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform([], sx, 0, w - cw + 1, dtype=tf.int32)
    return {**data, outkey: _resize(_decode_all(frames, tf.stack([y, x, ch, cw]), dct_method), size_hw)}

  return op


@register()
def resize(size: int | Sequence[int], method: str = "bilinear", antialias: bool = False, key: str = "video"
           ) -> pp.Op:
  """[..., h, w, 3] -> float32 [..., H, W, 3] (uint8 input scaled to [0, 1])."""
  return lambda data: {**data, key: _resize(data[key], _pair(size), method, antialias)}


@register()
def resize_smallest(size: int, method: str = "bilinear", antialias: bool = False, key: str = "video") -> pp.Op:
  """Resizes so the short side is `size`, keeping the aspect ratio (float32 output)."""

  def op(data):
    x = data[key]
    h, w = tf.cast(tf.shape(x)[-3], tf.float32), tf.cast(tf.shape(x)[-2], tf.float32)
    scale = size / tf.minimum(h, w)
    hw = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    return {**data, key: _resize(x, hw, method, antialias)}

  return op


# ----------------------------------------------------------------------------------------------------------------
# Augmentation and normalisation.


@register()
def flip(prob: float = 0.5, key: str = "video") -> pp.Op:
  """Horizontal flip of every frame (and view) together, with probability `prob`."""

  def op(data):
    x = tf.convert_to_tensor(data[key])
    do = pp.bernoulli(pp.get_seed(data), prob)
    return {**data, key: tf.cond(do, lambda: tf.reverse(x, axis=[-2]), lambda: x)}

  return op


def _gray(x: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma, keepdims: [..., 3] -> [..., 1]."""
  return tf.reduce_sum(x * tf.constant([0.2989, 0.587, 0.114]), axis=-1, keepdims=True)


# RGB <-> YIQ (NTSC). Y is the luma that greyscale conversions use; hue and saturation act on the (I, Q) plane.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _yiq_chroma_matrix(sat: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
  """3x3 RGB matrix scaling chroma by `sat` and rotating hue by `hue` turns (1.0 = 360 degrees)."""
  # Negative angle: a positive HSV hue shift (red -> yellow -> green) is a clockwise turn in the (I, Q) plane.
  theta = -hue * (2.0 * math.pi)
  cos, sin = tf.cos(theta) * sat, tf.sin(theta) * sat
  zero, one = tf.zeros_like(cos), tf.ones_like(cos)
  rot = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, cos, -sin]), tf.stack([zero, sin, cos])])
  return tf.constant(_YIQ_TO_RGB, tf.float32) @ rot @ tf.constant(_RGB_TO_YIQ, tf.float32)


@register()
def color_jitter(brightness: float = 32.0 / 255.0, saturation: float = 0.4, contrast: float = 0.4,
                 hue: float = 0.2, prob: float = 0.8, impl: str = "yiq", key: str = "video") -> pp.Op:
  """VATT B.1 colour augmentation: one draw per clip, applied with probability `prob`, clipped to [0, 1].

  brightness: additive delta in [-b, b]; saturation and contrast: factors in [1 - s, 1 + s]; hue: delta in
  [-h, h] (fraction of the colour wheel). Order brightness, saturation, contrast, hue (DMVR's default colour
  augmentation); contrast blends with each frame's per-channel mean (as `tf.image.adjust_contrast`).

  impl='hsv' runs exactly those `tf.image.adjust_*` ops (VATT's code path; saturation and hue go through HSV and
  cost ~80 ms per 32x224x224 clip on one core). impl='yiq' (default) does saturation as chroma scaling and hue
  as a rotation in YIQ space (as NVIDIA DALI's hue/saturation ops do): all four steps are then affine, so they
  fold into one 3x3 matrix plus a per-frame offset, ~8x cheaper. The two agree in brightness and contrast and
  closely in saturation and hue (HSV's hexcone and YIQ's plane differ slightly). Input float in [0, 1].
  """
  if impl not in ("yiq", "hsv"):
    raise ValueError(f"color_jitter: impl must be 'yiq' or 'hsv', got {impl!r}.")

  def jitter_hsv(x, b, s, c, h):
    x = tf.image.adjust_brightness(x, b)
    x = tf.image.adjust_saturation(x, s)
    x = tf.image.adjust_contrast(x, c)
    x = tf.image.adjust_hue(x, h)
    return tf.clip_by_value(x, 0.0, 1.0)

  def jitter_yiq(x, b, s, c, h):
    # x1 = x + b; x2 = C x1 (chroma); x3 = c x2 + (1 - c) mean(x2); x4 = H x3 (hue), with C and H linear:
    # x4 = c M x + M ((1 - c) mean(x) + b), M = H C.
    m = _yiq_chroma_matrix(s, h)
    mean = tf.reduce_mean(x, axis=[-3, -2], keepdims=True)  # [..., 1, 1, 3] per frame
    offset = tf.tensordot((1.0 - c) * mean + b, m, [[-1], [1]])
    shape = tf.shape(x)
    y = tf.reshape(tf.reshape(x, [-1, 3]) @ tf.transpose(c * m), shape) + offset
    return tf.ensure_shape(tf.clip_by_value(y, 0.0, 1.0), x.shape)

  jitter = jitter_yiq if impl == "yiq" else jitter_hsv

  def op(data):
    x = _to_float(data[key])
    seeds = pp.get_seed(data, 5)
    b = pp.uniform(seeds[0], minval=-brightness, maxval=brightness)
    s = pp.uniform(seeds[1], minval=1.0 - saturation, maxval=1.0 + saturation)
    c = pp.uniform(seeds[2], minval=1.0 - contrast, maxval=1.0 + contrast)
    h = pp.uniform(seeds[3], minval=-hue, maxval=hue)
    do = pp.bernoulli(seeds[4], prob)
    return {**data, key: tf.cond(do, lambda: jitter(x, b, s, c, h), lambda: x)}

  return op


@register()
def normalize(min: float = -1.0, max: float = 1.0, key: str = "video") -> pp.Op:  # pylint: disable=redefined-builtin
  """[0, 1] (or uint8) -> [min, max] (VATT: [-1, 1])."""
  return lambda data: {**data, key: _to_float(data[key]) * (max - min) + min}


@register()
def standardize(mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                key: str = "video") -> pp.Op:
  """(x - mean) / std per channel, x in [0, 1] (uint8 scaled first)."""
  m, s = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
  return lambda data: {**data, key: (_to_float(data[key]) - m) / s}


# RandAugment, applied to the whole clip so every frame gets the same ops and magnitudes.

_FILL = 0.5  # Grey fill for pixels moved in by geometric ops.


def _blend(a, b, factor):
  return tf.clip_by_value(a + factor * (b - a), 0.0, 1.0)


def _affine(x, transform):
  """x float [N, H, W, 3]; transform: 8 params mapping output to input coordinates."""
  shape = tf.shape(x)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]), output_shape=shape[1:3],
      fill_value=_FILL, interpolation="BILINEAR", fill_mode="CONSTANT")


def _equalize(x):
  """Histogram equalisation per channel over the whole clip."""
  q = tf.cast(tf.clip_by_value(x * 255.0, 0, 255), tf.int32)
  out = []
  for c in range(3):
    v = q[..., c]
    hist = tf.math.bincount(tf.reshape(v, [-1]), minlength=256, maxlength=256, dtype=tf.float32)
    cdf = tf.cumsum(hist)
    cdf_min = tf.reduce_min(tf.where(hist > 0, cdf, tf.reduce_max(cdf)))
    denom = tf.maximum(cdf[-1] - cdf_min, 1.0)
    lut = tf.clip_by_value((cdf - cdf_min) / denom, 0.0, 1.0)
    out.append(tf.where(cdf[-1] - cdf_min > 0, tf.gather(lut, v), x[..., c]))
  return tf.stack(out, -1)


def _sharpen(x, factor):
  k = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  k = tf.tile(k[:, :, None, None], [1, 1, 3, 1])
  blurred = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME")
  # Keep the border unblurred (as PIL's SMOOTH filter does) by blending only the interior.
  inner = tf.pad(tf.ones_like(x[:, 1:-1, 1:-1, :1]), [[0, 0], [1, 1], [1, 1], [0, 0]])
  blurred = inner * blurred + (1 - inner) * x
  return _blend(blurred, x, factor)


def _rand_augment_ops(magnitude: float, max_translate: float):
  m = magnitude / 10.0

  def signed(sign, v):
    return tf.where(sign, v, -v)

  def rotate(x, s):
    theta = signed(s, m * 30.0) * math.pi / 180.0
    hw = tf.cast(tf.shape(x)[1:3], tf.float32)
    cy, cx = (hw[0] - 1) / 2, (hw[1] - 1) / 2
    cos, sin = tf.cos(theta), tf.sin(theta)
    return _affine(x, [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, 0, 0])

  def shear_x(x, s):
    return _affine(x, [1, signed(s, m * 0.3), 0, 0, 1, 0, 0, 0])

  def shear_y(x, s):
    return _affine(x, [1, 0, 0, signed(s, m * 0.3), 1, 0, 0, 0])

  def translate_x(x, s):
    dx = signed(s, m * max_translate) * tf.cast(tf.shape(x)[2], tf.float32)
    return _affine(x, [1, 0, -dx, 0, 1, 0, 0, 0])

  def translate_y(x, s):
    dy = signed(s, m * max_translate) * tf.cast(tf.shape(x)[1], tf.float32)
    return _affine(x, [1, 0, 0, 0, 1, -dy, 0, 0])

  def autocontrast(x, s):
    lo = tf.reduce_min(x, axis=[0, 1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1, 2], keepdims=True)
    return tf.where(hi > lo, (x - lo) / tf.maximum(hi - lo, 1e-6), x)

  def solarize(x, s):
    return tf.where(x < 1.0 - m, x, 1.0 - x)

  def posterize(x, s):
    shift = float(2 ** int(round(m * 4)))  # keep 8 - 4m bits
    return tf.floor(tf.clip_by_value(x, 0, 1) * 255.0 / shift) * shift / 255.0

  def factor(s):
    return 1.0 + signed(s, m * 0.9)

  def color(x, s):
    return _blend(_gray(x), x, factor(s))

  def contrast(x, s):
    return _blend(tf.reduce_mean(_gray(x)), x, factor(s))

  def brightness(x, s):
    return _blend(tf.zeros_like(x), x, factor(s))

  def sharpness(x, s):
    return _sharpen(x, factor(s))

  return {
      "identity": lambda x, s: x, "autocontrast": autocontrast, "equalize": lambda x, s: _equalize(x),
      "rotate": rotate, "solarize": solarize, "color": color, "posterize": posterize, "contrast": contrast,
      "brightness": brightness, "sharpness": sharpness, "shear_x": shear_x, "shear_y": shear_y,
      "translate_x": translate_x, "translate_y": translate_y,
  }


RAND_AUGMENT_OPS = tuple(_rand_augment_ops(1.0, 0.3))


@register()
def randaugment(num_layers: int = 2, magnitude: float = 9.0, ops: Sequence[str] | None = None,
                max_translate: float = 0.3, key: str = "video") -> pp.Op:
  """RandAugment (Cubuk et al.) for clips: `num_layers` ops drawn uniformly, magnitude in [0, 10].

  The op, its magnitude and its sign are drawn once per clip and applied to every frame (and view), so the
  augmentation is temporally consistent. Input float [..., H, W, 3] in [0, 1]; output the same, clipped.
  Ops: identity, autocontrast, equalize, rotate (30 deg at 10), solarize, color, posterize, contrast,
  brightness, sharpness (factors 1 +- 0.9 at 10), shear_x/y (0.3), translate_x/y (`max_translate` of the side).
  """
  table = _rand_augment_ops(magnitude, max_translate)
  names = list(ops or table)
  unknown = set(names) - set(table)
  if unknown:
    raise ValueError(f"randaugment: unknown ops {sorted(unknown)}; known: {sorted(table)}.")
  fns = [table[n] for n in names]

  def op(data):
    x = _to_float(data[key])
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.concat([[-1], shape[-3:]], 0))
    seeds = pp.get_seed(data, 2 * num_layers)
    for layer in range(num_layers):
      which = tf.random.stateless_uniform([], seeds[2 * layer], 0, len(fns), dtype=tf.int32)
      sign = pp.bernoulli(seeds[2 * layer + 1], 0.5)
      branches = [(lambda f: lambda: tf.clip_by_value(f(flat, sign), 0.0, 1.0))(f) for f in fns]
      flat = tf.ensure_shape(tf.switch_case(which, branches), flat.shape)
    return {**data, key: tf.ensure_shape(tf.reshape(flat, shape), x.shape)}

  return op
