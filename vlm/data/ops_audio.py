"""Audio pp ops on the mono waveform `audio` (float32 [..., S] in [-1, 1]) and `audio_mask` (float32 []).

The waveform window in sync with the frames is cut by the video sampling ops (`sample_clip(...,
audio_samples=S)`); the ops here augment and transform it:

  audio_noise   VATT's Gaussian noise: x + N(0, 1) * scale * max|x| (scale 0.01), one draw per clip
  audio_gain    random gain in dB
  log_mel       log-mel spectrogram via tf.signal: [..., S] -> [..., T, M] (VATT table 4: 80 bins,
                42 ms window, 21 ms hop; DMVR's 80-7600 Hz band)
  pad_audio     pad or clip the waveform to a fixed length (records with no audio become zeros)
  resample_audio  band-limited (FFT) resampling to another rate, e.g. 48 -> 24 kHz (VATT B.6 audio fine-tuning)
"""
from __future__ import annotations

import tensorflow as tf

from vlm.data import pp
from vlm.data.pp import register


@register()
def audio_noise(scale: float = 0.01, prob: float = 1.0, key: str = "audio") -> pp.Op:
  """Adds Gaussian noise with std `scale * max|x|` (per clip / view), with probability `prob`."""

  def op(data):
    x = tf.cast(data[key], tf.float32)
    s1, s2 = tf.unstack(pp.get_seed(data, 2))
    peak = tf.reduce_max(tf.abs(x), axis=-1, keepdims=True)
    noisy = x + tf.random.stateless_normal(tf.shape(x), s1) * scale * peak
    return {**data, key: tf.where(pp.bernoulli(s2, prob), noisy, x)}

  return op


@register()
def audio_gain(min_db: float = -6.0, max_db: float = 6.0, key: str = "audio") -> pp.Op:
  """Multiplies by a random gain drawn uniformly in dB, then clips to [-1, 1]."""

  def op(data):
    db = pp.uniform(pp.get_seed(data), minval=min_db, maxval=max_db)
    return {**data, key: tf.clip_by_value(tf.cast(data[key], tf.float32) * 10.0 ** (db / 20.0), -1.0, 1.0)}

  return op


@register()
def pad_audio(num_samples: int, key: str = "audio") -> pp.Op:
  """Zero-pads or clips the last axis to `num_samples` (static shape)."""

  def op(data):
    x = tf.cast(data[key], tf.float32)[..., :num_samples]
    pad = num_samples - tf.shape(x)[-1]
    x = tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[0, pad]])
    return {**data, key: tf.ensure_shape(x, x.shape[:-1].concatenate([num_samples]))}

  return op


@register()
def log_mel(num_bins: int = 80, window_ms: float = 42.0, hop_ms: float = 21.0, sample_rate: int = 48000,
            lower_hz: float = 80.0, upper_hz: float = 7600.0, fft_length: int | None = None,
            log_offset: float = 1e-6, key: str = "audio", outkey: str | None = None) -> pp.Op:
  """Waveform float [..., S] -> log-mel spectrogram float32 [..., T, num_bins].

  VATT (table 4) uses 80 mel bins, a 42 ms window and a 21 ms hop; at 48 kHz that is a 2016-sample Hann window,
  a 1008-sample hop and a 2048-point FFT. T = 1 + (S - window) // hop (frames that fit, no padding).
  `sample_rate` must be the waveform's rate (the records' `WAVEFORM/sample_rate`), which fixes the mel filters.
  """
  window = int(round(sample_rate * window_ms / 1000.0))
  hop = int(round(sample_rate * hop_ms / 1000.0))
  fft = fft_length or 2 ** int((window - 1).bit_length())
  mel = tf.signal.linear_to_mel_weight_matrix(num_bins, fft // 2 + 1, sample_rate, lower_hz, upper_hz)

  def op(data):
    x = tf.cast(data[key], tf.float32)
    stft = tf.signal.stft(x, frame_length=window, frame_step=hop, fft_length=fft, pad_end=False)
    power = tf.math.square(tf.abs(stft))  # [..., T, fft/2 + 1]
    spec = tf.math.log(tf.tensordot(power, mel, 1) + log_offset)
    spec = tf.ensure_shape(spec, x.shape[:-1].concatenate([None, num_bins]))
    return {**data, outkey or key: spec}

  return op


@register()
def resample_audio(rate: int, num_samples: int | None = None, key: str = "audio",
                   rate_key: str = "sample_rate") -> pp.Op:
  """Resamples the waveform [..., S] from `data[rate_key]` Hz to `rate` Hz; sets `data[rate_key] = rate`.

  FFT resampling (as scipy.signal.resample): the spectrum is truncated (down) or zero-padded (up), which is an
  ideal low-pass, so downsampling does not alias. The signal is treated as periodic, so the first and last few
  samples may ring slightly. Output length round(S * rate / source_rate), or `num_samples` (static shape; the
  result is clipped or zero-padded to it). Cut the clip's window first (sample_clip's audio_samples at the source
  rate): resampling a short window is cheaper than resampling the whole record.
  """

  def op(data):
    x = tf.cast(data[key], tf.float32)
    src = tf.cast(data.get(rate_key, rate), tf.float32)
    n = tf.shape(x)[-1]
    n_out = tf.cast(tf.round(tf.cast(n, tf.float32) * rate / src), tf.int32)

    def resample():
      spec = tf.signal.rfft(x)
      bins_out = n_out // 2 + 1
      keep = tf.minimum(tf.shape(spec)[-1], bins_out)
      spec = spec[..., :keep]
      spec = tf.concat([spec, tf.zeros(tf.concat([tf.shape(spec)[:-1], [bins_out - keep]], 0), spec.dtype)], -1)
      y = tf.signal.irfft(spec, fft_length=tf.reshape(n_out, [1]))
      return y * (tf.cast(n_out, tf.float32) / tf.cast(tf.maximum(n, 1), tf.float32))

    y = tf.cond((n_out != n) & (n > 0), resample, lambda: x)
    if num_samples is not None:
      y = y[..., :num_samples]
      y = tf.pad(y, [[0, 0]] * (x.shape.rank - 1) + [[0, num_samples - tf.shape(y)[-1]]])
      y = tf.ensure_shape(y, x.shape[:-1].concatenate([num_samples]))
    return {**data, key: y, rate_key: tf.constant(rate, tf.int32)}

  return op
