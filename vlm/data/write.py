"""Writes video files listed in a CSV manifest as sharded TFRecords in the DMVR layout (`vlm.data.records`).

Usage:

  python -m vlm.data.write --manifest=videos.csv --output=/data/mydata/train@16 \\
      [--fps=10 --short_side=256 --workers=8 --jpeg_quality=90 --sample_rate=48000 --noaudio]

The manifest is a CSV file with a header row:

  video    path of the file (absolute, or relative to the manifest's folder, else to the working directory)
  start    optional clip start in seconds (empty: the beginning)
  end      optional clip end in seconds (empty: the end of the video)
  captions optional, several separated by `|`
  labels   optional integer class indices separated by `|`
  label_text optional class names separated by `|` (same order as `labels`)
  episode  optional id of the long video (episode) the clip belongs to (HierVL); with it:
  narration  the clip's narration;  nouns / verbs  its noun and verb class indices separated by `|`;
  summary  the episode's summary text (the same on each of its rows, or on its first row only)

Episodes: rows of one episode must be consecutive and in time order; each record gets `episode/id`,
`episode/index` (its position in the episode), `episode/length`, `episode/narration`, `episode/noun/index`,
`episode/verb/index` and `episode/summary` (the built-in dataset's keys, vlm/data/builtin.py), which
`config.input.group = dict(size=N, key='episode/id')` reads back as episodes. An episode id that comes back after
other rows is an error (it would be read as two episodes).

`--output=DIR/name@N` writes N shards `DIR/name-00000-of-0000N.tfrecord` ... (N = 1 without `@N`). Row i of the
manifest goes to shard floor(i * N / rows) (contiguous, near-equal chunks), so the shards keep the manifest's order
and a re-run writes the same files. Each worker process writes whole shards. Frames are resampled to `fps`
(nearest presentation timestamp, whatever the decode order: see `vlm.data.media`) and resized so the short side is
`short_side`, then JPEG-encoded one per `image/encoded` entry; the audio of the same window is written at
`sample_rate` mono (absent when the file has no audio stream). The record's start and end are the clip's window:
[start, start + F / fps) when resampling; with `--fps=0` (every source frame) from the first frame's time to the
time the last frame gives way to the next one.

Inputs that cannot be used (missing file, not a media file, no video stream, no frame in the window) are skipped,
never fatal: the summary counts them and `DIR/name.errors.json` lists them (an empty list when all went well).
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import queue as queue_lib
import sys
import time
import traceback
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

DEFAULT_FPS = 10.0


# ----------------------------------------------------------------------------------------------------------------
# Manifest.


def _split(value: Any) -> list[str]:
  """'a|b|' -> ['a', 'b']; lists pass through; None/NaN/'' -> []."""
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [str(v).strip() for v in value if str(v).strip()]
  if isinstance(value, float) and np.isnan(value):
    return []
  return [v.strip() for v in str(value).split("|") if v.strip()]


def _seconds(value: Any) -> float | None:
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  v = float(value)
  return None if np.isnan(v) else v


def parse_row(row: Mapping[str, Any], base_dir: str | None = None) -> dict[str, Any]:
  """Normalises one manifest row to {'video', 'start', 'end', 'captions', 'labels', 'label_text'} (and, with an
  `episode` column value, 'episode', 'narration', 'nouns', 'verbs', 'summary').

  Raises:
    ValueError: the row has no `video`, or a malformed number.
  """
  video = str(row.get("video") or "").strip()
  if not video:
    raise ValueError(f"manifest row without a `video` path: {dict(row)}")
  if not os.path.isabs(video) and base_dir:
    candidate = os.path.join(base_dir, video)
    if os.path.exists(candidate) or not os.path.exists(video):
      video = candidate
  labels = [int(v) for v in _split(row.get("labels"))]
  episode = str(row.get("episode") or "").strip()
  extra = {}
  if episode:
    extra = {"episode": episode, "narration": str(row.get("narration") or "").strip(),
             "nouns": [int(v) for v in _split(row.get("nouns"))],
             "verbs": [int(v) for v in _split(row.get("verbs"))],
             "summary": str(row.get("summary") or "").strip()}
  return {**extra,
      "video": video,
      "start": _seconds(row.get("start")),
      "end": _seconds(row.get("end")),
      "captions": _split(row.get("captions")),
      "labels": labels,
      "label_text": _split(row.get("label_text")),
  }


def read_manifest(path: str) -> list[dict[str, str]]:
  """Reads the CSV manifest (header row required, `video` column required) as a list of raw row dicts."""
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or "video" not in [c.strip() for c in reader.fieldnames]:
      raise ValueError(f"{path}: the manifest needs a header row with a `video` column; got {reader.fieldnames}.")
    return [{(k or "").strip(): v for k, v in r.items()} for r in reader]


def parse_output(output: str) -> tuple[str, str, int]:
  """'DIR/name@N' -> (DIR, name, N); without '@N', N = 1."""
  num = 1
  if "@" in os.path.basename(output):
    output, n = output.rsplit("@", 1)
    num = int(n)
    if num < 1:
      raise ValueError(f"--output: the shard count must be >= 1, got {n}.")
  directory, name = os.path.split(output)
  if not name:
    raise ValueError(f"--output must look like DIR/name@N, got {output!r}.")
  return directory or ".", name, num


def shard_paths(directory: str, name: str, num_shards: int) -> list[str]:
  """The shard file names: name-00000-of-00008.tfrecord, ..."""
  return [os.path.join(directory, f"{name}-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]


# ----------------------------------------------------------------------------------------------------------------
# Workers.

_PROGRESS: Any = None  # A multiprocessing queue in worker processes: one message per finished row.


def _init_worker(progress_queue: Any) -> None:
  global _PROGRESS
  _PROGRESS = progress_queue


def encode_row(row: Mapping[str, Any], *, fps: float | None, short_side: int | None, jpeg_quality: int,
               sample_rate: int, with_audio: bool) -> bytes:
  """Decodes one parsed manifest row and returns the serialized SequenceExample.

  Raises:
    Exception: anything the decoder raises for unusable input; ValueError when the window holds no frame.
  """
  from vlm.data import media, records  # pylint: disable=g-import-not-at-top

  if not os.path.exists(row["video"]):
    raise FileNotFoundError(f"no such file: {row['video']}")
  clip = media.decode_clip(row["video"], start=row["start"], end=row["end"], fps=fps, short_side=short_side,
                           sample_rate=sample_rate, with_audio=with_audio)
  if not len(clip.frames):
    raise ValueError(f"no frame decoded in [{row['start']}, {row['end']}) s")
  ex = records.make_sequence_example(
      jpeg_frames=media.encode_jpegs(clip.frames, jpeg_quality),
      fps=clip.fps,
      audio=clip.audio,
      sample_rate=sample_rate,
      captions=row["captions"],
      label_index=row["labels"],
      label_text=row["label_text"],
      filename=row["video"],
      start_us=int(round(clip.start * 1e6)),
      end_us=int(round(clip.end * 1e6)),
      extra_context=records.context_features(_episode_context(row)) if row.get("episode") else None,
  )
  return ex.SerializeToString()


def _episode_context(row: Mapping[str, Any]) -> dict[str, Any]:
  from vlm.data import builtin  # pylint: disable=g-import-not-at-top
  return {builtin.EPISODE_ID: row["episode"], builtin.EPISODE_INDEX: row["episode_index"],
          builtin.EPISODE_LENGTH: row["episode_length"], builtin.EPISODE_NARRATION: row["narration"],
          builtin.EPISODE_NOUNS: row["nouns"], builtin.EPISODE_VERBS: row["verbs"],
          builtin.EPISODE_SUMMARY: row["summary"]}


def number_episodes(rows: list[tuple[int, dict[str, Any]]]) -> None:
  """Sets each episode row's `episode_index` / `episode_length` and fills a summary given on its first row only.

  Raises:
    ValueError: an episode's rows are not consecutive (naming the episode and the rows).
  """
  runs: list[list[dict[str, Any]]] = []
  seen: dict[str, int] = {}
  for i, row in rows:
    ep = row.get("episode")
    if not ep:
      continue
    if runs and runs[-1][0]["episode"] == ep:
      runs[-1].append(row)
      continue
    if ep in seen:
      raise ValueError(f"manifest: the rows of episode {ep!r} are not consecutive (row {seen[ep]} and row {i}, "
                       "with other rows between); sort the manifest by episode, then by time.")
    seen[ep] = i
    runs.append([row])
  for run in runs:
    summary = next((r["summary"] for r in run if r["summary"]), "")
    for k, r in enumerate(run):
      r.update(episode_index=k, episode_length=len(run), summary=r["summary"] or summary)


def _write_shard(task: tuple[str, list[tuple[int, dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
  """Writes one shard file; returns {'path', 'written', 'bytes', 'errors'}. Never raises for bad inputs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  path, rows, options = task
  errors, written, nbytes = [], 0, 0
  tmp = path + ".incomplete"
  with tf.io.TFRecordWriter(tmp) as writer:
    for index, row in rows:
      try:
        record = encode_row(row, **options)
        writer.write(record)
        written += 1
        nbytes += len(record)
      except Exception as e:  # pylint: disable=broad-except
        errors.append({"row": index, "video": row.get("video"), "error": f"{type(e).__name__}: {e}".strip(),
                       "traceback": traceback.format_exc(limit=3)})
      if _PROGRESS is not None:
        _PROGRESS.put(1)
  os.replace(tmp, path)  # A shard appears only when complete.
  return {"path": path, "written": written, "bytes": nbytes, "errors": errors}


class _Updater:
  """Stands in for the progress queue when shards are written in this process."""

  def __init__(self, bar: "_Progress"):
    self.bar = bar

  def put(self, k: int) -> None:
    self.bar.update(k)


class _Progress:
  """A plain stderr progress line (tqdm when installed)."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.n, self.enabled, self.t0 = total, 0, enabled, time.time()
    self._bar = None
    if enabled:
      try:
        import tqdm  # pylint: disable=g-import-not-at-top
        self._bar = tqdm.tqdm(total=total, unit="video", file=sys.stderr)
      except ImportError:
        pass

  def update(self, k: int = 1) -> None:
    self.n += k
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(k)
    else:
      rate = self.n / max(time.time() - self.t0, 1e-9)
      eta = (self.total - self.n) / max(rate, 1e-9)
      print(f"\r{self.n}/{self.total} videos, {rate:.1f}/s, ETA {eta:.0f} s", end="", file=sys.stderr,
            flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    elif self.enabled:
      print(file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# Entry points.


def write_manifest(
    manifest_path_or_rows: str | Iterable[Mapping[str, Any]],
    output: str,
    *,
    fps: float | None = DEFAULT_FPS,
    short_side: int | None = 256,
    workers: int = 1,
    jpeg_quality: int = 90,
    sample_rate: int = 48_000,
    with_audio: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
  """Writes the manifest's videos as N TFRecord shards.

  Args:
    manifest_path_or_rows: a CSV path, or rows (mappings with the manifest's column names; `captions`, `labels`
      and `label_text` may be lists or `|`-separated strings).
    output: 'DIR/name@N'.
    fps: target frame rate (None or 0: keep the source rate).
    short_side: resize so the short side has this many pixels (None: keep the size).
    workers: processes; each writes whole shards (<= 1: in this process).
    jpeg_quality: JPEG quality of the stored frames.
    sample_rate: audio rate (mono).
    with_audio: False writes no audio.
    progress: print progress to stderr.

  Returns:
    A summary: {'files', 'num_rows', 'num_written', 'num_errors', 'errors' (list of {'row', 'video', 'error'}),
    'bytes', 'seconds', 'errors_file'}.
  """
  t0 = time.time()
  base_dir = None
  if isinstance(manifest_path_or_rows, (str, os.PathLike)):
    base_dir = os.path.dirname(os.path.abspath(manifest_path_or_rows))
    raw_rows = read_manifest(os.fspath(manifest_path_or_rows))
  else:
    raw_rows = list(manifest_path_or_rows)
  directory, name, num_shards = parse_output(output)
  if raw_rows:
    from vlm.data import media  # pylint: disable=g-import-not-at-top
    media.import_av()  # Without PyAV every row would fail: say so once instead of skipping them all.
  os.makedirs(directory, exist_ok=True)

  rows, errors = [], []
  for i, r in enumerate(raw_rows):
    try:
      rows.append((i, parse_row(r, base_dir)))
    except Exception as e:  # pylint: disable=broad-except
      errors.append({"row": i, "video": r.get("video"), "error": f"{type(e).__name__}: {e}"})
  number_episodes(rows)

  paths = shard_paths(directory, name, num_shards)
  chunks = [rows[len(rows) * s // num_shards:len(rows) * (s + 1) // num_shards] for s in range(num_shards)]
  options = dict(fps=fps, short_side=short_side, jpeg_quality=jpeg_quality, sample_rate=sample_rate,
                 with_audio=with_audio)
  tasks = [(p, c, options) for p, c in zip(paths, chunks)]
  bar = _Progress(len(rows), progress)
  results = []
  if workers <= 1 or num_shards == 1:
    global _PROGRESS
    saved, _PROGRESS = _PROGRESS, _Updater(bar)
    try:
      results = [_write_shard(task) for task in tasks]
    finally:
      _PROGRESS = saved
  else:
    # Not `fork`: forking a process whose TensorFlow runtime has started its thread pools can deadlock. A fork
    # server that has only imported TensorFlow (no op run, so no pools) forks workers safely, and pays the
    # import (seconds) once instead of once per worker as `spawn` would.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tensorflow", "vlm.data.records", "vlm.data.media", __name__])
    q = ctx.Queue()
    with ctx.Pool(min(workers, num_shards), initializer=_init_worker, initargs=(q,)) as pool:
      pending = pool.map_async(_write_shard, tasks, chunksize=1)
      while not pending.ready() or not q.empty():
        try:
          bar.update(q.get(timeout=0.2))
        except queue_lib.Empty:
          pass
      results = pending.get()
  bar.close()

  for r in results:
    errors.extend(r["errors"])
  errors.sort(key=lambda e: e["row"])
  errors_file = os.path.join(directory, f"{name}.errors.json")
  with open(errors_file, "w", encoding="utf-8") as f:
    json.dump([{k: v for k, v in e.items() if k != "traceback"} for e in errors], f, indent=1)
  summary = {
      "files": paths,
      "num_rows": len(raw_rows),
      "num_written": sum(r["written"] for r in results),
      "num_errors": len(errors),
      "errors": errors,
      "bytes": sum(r["bytes"] for r in results),
      "seconds": time.time() - t0,
      "errors_file": errors_file,
  }
  return summary


def format_summary(summary: Mapping[str, Any]) -> str:
  """A human-readable summary (what the CLI prints)."""
  lines = [f"Wrote {summary['num_written']} of {summary['num_rows']} videos into {len(summary['files'])} shards "
           f"({summary['bytes'] / 2**20:.1f} MiB) in {summary['seconds']:.1f} s."]
  if summary["errors"]:
    lines.append(f"Skipped {summary['num_errors']} unusable inputs (listed in {summary['errors_file']}):")
    for e in summary["errors"][:20]:
      lines.append(f"  row {e['row']}: {e['video']}: {e['error'].splitlines()[0] if e['error'] else ''}")
    if len(summary["errors"]) > 20:
      lines.append(f"  ... and {len(summary['errors']) - 20} more.")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m vlm.data.write", description=__doc__.split("\n\n")[0])
  parser.add_argument("--manifest", required=True, help="CSV with a `video` column (see the module docstring).")
  parser.add_argument("--output", required=True, help="DIR/name@N: N shards DIR/name-0000i-of-0000N.tfrecord.")
  parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="target frame rate; 0 keeps the source rate.")
  parser.add_argument("--short_side", type=int, default=256, help="short side in pixels; 0 keeps the size.")
  parser.add_argument("--workers", type=int, default=1, help="processes (each writes whole shards).")
  parser.add_argument("--jpeg_quality", type=int, default=90)
  parser.add_argument("--sample_rate", type=int, default=48_000, help="audio sample rate (mono).")
  parser.add_argument("--noaudio", action="store_true", help="write no audio.")
  parser.add_argument("--noprogress", action="store_true", help="no progress bar.")
  args = parser.parse_args(argv)
  summary = write_manifest(args.manifest, args.output, fps=args.fps or None, short_side=args.short_side or None,
                           workers=args.workers, jpeg_quality=args.jpeg_quality, sample_rate=args.sample_rate,
                           with_audio=not args.noaudio, progress=not args.noprogress)
  print(format_summary(summary))
  return summary


if __name__ == "__main__":
  main()
