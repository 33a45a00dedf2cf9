"""Data sources (by `config.input.data.name`), record parsing and layout checks.

Sources
  'builtin'  `vlm.data.builtin.ensure_builtin(**data.options)`: the generated dataset; `data.split` picks one of
             its shard lists ('train', 'test', 'train_images', 'test_images'); its vocab file and class names come
             with it (`Source.meta`).
  'records'  DMVR TFRecord shards: `data.files` is a glob, a comma-separated list of globs, a list, or a dict
             {split: glob}; `data.split` picks from the dict.
  'tfds'     a TFDS video dataset via `vlm.data.tfds_builder.load_tfds_video(data.dataset, split=...,
             data_dir=data.data_dir, **data.options)`: decoded frames (`frames` uint8 [N, H, W, 3], the JPEG-free
             path); examples are split per host with `tfds.even_splits`. TFDS examples carry no frame rate:
             set `input.default_fps` to the dataset's. Resuming skips decoded examples (slower than records).
  'a.b.c'    a dotted module path: `importlib.import_module('a.b.c').make_source(data_config)` returns a `Source`.

Record shards are split per host: host i of n takes files i::n (an error names both counts when there are fewer
files than hosts).

Parsing (`parse_example`): one serialized `tf.train.SequenceExample` in the layout of `vlm.data.records` ->
  frames_jpeg  string [N]     one JPEG per `image/encoded` feature-list entry
  audio        float32 [S]    `WAVEFORM/feature/floats` entries concatenated (zeros-length when missing)
  audio_mask   float32 []     1 when the record has audio, else 0
  captions     string [K0]    `caption/string`
  label_index  int32 [M]      `clip/label/index`;  label_text string [M]
  fps          float32 []     `video/fps` (0 when missing);  sample_rate int32 [] (48000 when missing)
  start_us, end_us int64 [];  filename string []
  <extra context keys>        requested by `config.input.extra_context` = {key: 'string'|'int'|'float'},
                              parsed as 1-D tensors under the same key (e.g. 'qa/question', 'event/start_frame')
Records with the wrong layout fail inside the pipeline (counted and skipped); `check_records` finds the same
errors eagerly on the first records before training starts and raises `LayoutError` naming the key.
"""
from __future__ import annotations

import dataclasses
import glob as glob_lib
import importlib
from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from vlm.data import framing
from vlm.data import records as rec

_DTYPES = {"string": tf.string, "bytes": tf.string, "str": tf.string, "int": tf.int64, "int64": tf.int64,
           "float": tf.float32, "float32": tf.float32}
_JPEG_MAGIC = b"\xff\xd8"


class LayoutError(ValueError):
  """A record does not follow the DMVR layout of `vlm.data.records`."""


@dataclasses.dataclass
class Source:
  """What the pipeline reads.

  Attributes:
    name: source name (for messages).
    files: record shards of the split (all hosts), sorted; empty for 'tfds'.
    meta: dataset facts the pipeline may use: 'vocab_file', 'class_names', ...
    load_examples: for non-record sources, `(process_index, process_count) -> tf.data.Dataset` of decoded
      example dicts (raw keys as `parse_example` gives, with `frames` instead of `frames_jpeg`), in a fixed order.
  """
  name: str
  files: list[str]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  load_examples: Callable[[int, int], tf.data.Dataset] | None = None


def _expand(pattern: str | Sequence[str]) -> list[str]:
  pats = [p.strip() for p in pattern.split(",")] if isinstance(pattern, str) else list(pattern)
  files = []
  for p in pats:
    if any(c in p for c in "*?["):
      found = sorted(tf.io.gfile.glob(p)) if "://" in p else sorted(glob_lib.glob(p))
      if not found:
        raise FileNotFoundError(f"No record files match {p!r}.")
      files += found
    else:
      if not tf.io.gfile.exists(p):
        raise FileNotFoundError(f"Record file {p!r} does not exist.")
      files.append(p)
  return files


def get_source(data: Mapping[str, Any]) -> Source:
  """Resolves `config.input.data` (or an eval override of it) to a `Source`."""
  data = dict(data)
  name = data.get("name", "builtin")
  split = data.get("split", "train")
  if name == "builtin":
    from vlm.data import builtin  # pylint: disable=g-import-not-at-top  (another engineer's module)
    ds = builtin.ensure_builtin(**dict(data.get("options") or {}))
    if split not in ds.files:
      raise ValueError(f"builtin dataset has no split {split!r}; splits: {sorted(ds.files)}.")
    meta = {k: getattr(ds, k) for k in ("vocab_file", "class_names", "attribute_names", "answer_names",
                                        "num_frames", "fps", "size", "sample_rate", "root") if hasattr(ds, k)}
    meta["answer_groups"] = dict(builtin.ANSWER_GROUPS)
    meta["question_kinds"] = list(builtin.QUESTION_KINDS)
    return Source("builtin", sorted(ds.files[split]), meta)
  if name == "records":
    files = data.get("files")
    if files is None:
      raise ValueError("input.data.files is required for name='records' (a glob, list or {split: glob}).")
    if isinstance(files, Mapping):
      if split not in files:
        raise ValueError(f"input.data.files has no split {split!r}; splits: {sorted(files)}.")
      files = files[split]
    meta = {k: data[k] for k in ("vocab_file", "class_names") if data.get(k) is not None}
    return Source("records", _expand(files), meta)
  if name == "tfds":
    return _tfds_source(data, split)
  if "." in name:
    return importlib.import_module(name).make_source(data)
  raise ValueError(f"Unknown input.data.name {name!r}: use 'builtin', 'records', 'tfds' or a module path.")


def _tfds_source(data: Mapping[str, Any], split: str) -> Source:
  from vlm.data import tfds_builder  # pylint: disable=g-import-not-at-top  (another engineer's module)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = data.get("dataset")
  if not dataset:
    raise ValueError("input.data.dataset (a TFDS name) is required for name='tfds'.")

  def load(process_index: int, process_count: int) -> tf.data.Dataset:
    host_split = tfds.even_splits(split, process_count)[process_index] if process_count > 1 else split
    ds = tfds_builder.load_tfds_video(dataset, split=host_split, data_dir=data.get("data_dir"),
                                      **dict(data.get("options") or {}))
    return ds.map(from_tfds_example)

  return Source("tfds", [], {"dataset": dataset}, load)


def from_tfds_example(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Maps common TFDS video features to the raw keys of `parse_example` (JPEG-free: `frames` uint8)."""
  ex = dict(ex)
  out = {}
  frames = ex.pop("frames", ex.pop("video", None))
  if frames is None:
    raise KeyError(f"TFDS example has no 'video' or 'frames' feature (keys: {sorted(ex)}).")
  out["frames"] = tf.convert_to_tensor(frames)
  audio = ex.pop("audio", None)
  if audio is None:
    out["audio"], out["audio_mask"] = tf.zeros([0], tf.float32), tf.constant(0.0)
  else:
    audio = tf.convert_to_tensor(audio)
    if audio.dtype.is_integer:  # e.g. int16 PCM -> [-1, 1]
      audio = tf.cast(audio, tf.float32) / float(2 ** (audio.dtype.size * 8 - 1))
    audio = tf.cast(audio, tf.float32)
    if audio.shape.rank and audio.shape.rank > 1:  # [S, channels] -> mono
      audio = tf.reduce_mean(audio, axis=-1)
    out["audio"] = tf.reshape(audio, [-1])
    out["audio_mask"] = tf.cast(tf.size(out["audio"]) > 0, tf.float32)
  # `label_index` (all labels) wins over `label` (one label, -1 when the example has none).
  label = ex.pop("label", None)
  label_index = ex.pop("label_index", None)
  if label_index is None and label is not None:
    label_index = tf.reshape(tf.cast(label, tf.int32), [-1])
    label_index = tf.boolean_mask(label_index, label_index >= 0)
  out["label_index"] = (tf.zeros([0], tf.int32) if label_index is None
                        else tf.reshape(tf.cast(label_index, tf.int32), [-1]))
  caps = ex.pop("captions", ex.pop("caption", None))
  out["captions"] = tf.zeros([0], tf.string) if caps is None else tf.reshape(caps, [-1])
  out["fps"] = tf.cast(ex.pop("fps", 0.0), tf.float32)
  out["sample_rate"] = tf.cast(ex.pop("sample_rate", rec.DEFAULT_SAMPLE_RATE), tf.int32)
  for k, v in ex.items():  # Pass everything else through unchanged (ids, extra annotations).
    out.setdefault(k, v)
  return out


def host_files(files: Sequence[str], process_index: int, process_count: int, *, allow_empty: bool = False
               ) -> list[str]:
  """Host i of n takes files i::n (training needs a file per host; eval hosts without one only pad)."""
  if len(files) < process_count and not allow_empty:
    raise ValueError(f"{len(files)} record files cannot be split over {process_count} hosts: every host needs at "
                     f"least one file (write more shards, or run on fewer hosts).")
  return list(files[process_index::process_count])


# ----------------------------------------------------------------------------------------------------------------
# Parsing.


def _context_spec(extra_context: Mapping[str, str]) -> dict[str, Any]:
  spec = {
      rec.FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
      rec.START_TS: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      rec.END_TS: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      rec.CAPTION: tf.io.VarLenFeature(tf.string),
      rec.LABEL_INDEX: tf.io.VarLenFeature(tf.int64),
      rec.LABEL_TEXT: tf.io.VarLenFeature(tf.string),
      rec.FPS: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
      rec.SAMPLE_RATE: tf.io.FixedLenFeature([], tf.int64, default_value=rec.DEFAULT_SAMPLE_RATE),
      # Parsed only to detect the common mistake of storing frames in the context.
      rec.IMAGE: tf.io.VarLenFeature(tf.string),
  }
  for key, dtype in extra_context.items():
    if dtype not in _DTYPES:
      raise ValueError(f"input.extra_context[{key!r}]: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    spec[key] = tf.io.VarLenFeature(_DTYPES[dtype])
  return spec


def parse_example(serialized: tf.Tensor, *, extra_context: Mapping[str, str] | None = None
                  ) -> dict[str, tf.Tensor]:
  """One serialized SequenceExample -> raw example dict (see the module docstring for keys and shapes).

  Raises (InvalidArgumentError, inside tf.data: the record is counted and skipped) when frames sit in the
  context or an `image/encoded` entry holds other than exactly one JPEG.
  """
  extra_context = dict(extra_context or {})
  ctx, seq = tf.io.parse_single_sequence_example(
      serialized, context_features=_context_spec(extra_context),
      sequence_features={rec.IMAGE: tf.io.VarLenFeature(tf.string), rec.AUDIO: tf.io.VarLenFeature(tf.float32)})
  frames = seq[rec.IMAGE]
  n = frames.dense_shape[0]
  per_entry = tf.math.bincount(tf.cast(frames.indices[:, 0], tf.int32), minlength=tf.cast(n, tf.int32))
  checks = [
      tf.debugging.assert_equal(tf.size(ctx[rec.IMAGE].values), 0, message=(
          f"'{rec.IMAGE}' is a context feature; frames must be a feature list with one JPEG per entry.")),
      tf.debugging.assert_equal(tf.reduce_all(per_entry == 1), True, message=(
          f"An '{rec.IMAGE}' feature-list entry does not hold exactly one JPEG (expected one JPEG per entry).")),
      tf.debugging.assert_greater(n, tf.constant(0, tf.int64), message=f"Record has no '{rec.IMAGE}' frames."),
  ]
  with tf.control_dependencies(checks):
    frames_jpeg = tf.identity(frames.values)
  audio = seq[rec.AUDIO].values
  out = {
      "frames_jpeg": frames_jpeg,
      "audio": audio,
      "audio_mask": tf.cast(tf.size(audio) > 0, tf.float32),
      "captions": ctx[rec.CAPTION].values,
      "label_index": tf.cast(ctx[rec.LABEL_INDEX].values, tf.int32),
      "label_text": ctx[rec.LABEL_TEXT].values,
      "fps": ctx[rec.FPS],
      "sample_rate": tf.cast(ctx[rec.SAMPLE_RATE], tf.int32),
      "start_us": ctx[rec.START_TS],
      "end_us": ctx[rec.END_TS],
      "filename": ctx[rec.FILENAME],
  }
  for key in extra_context:
    out[key] = ctx[key].values
  return out


# The kind (tf.train.Feature oneof) each context key the parser reads must have.
_KINDS = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}
_KIND_NAMES = {"bytes_list": "bytes (bytes_list)", "int64_list": "int64 (int64_list)",
               "float_list": "float (float_list)"}


def _context_kinds(extra_context: Mapping[str, str] | None) -> dict[str, str]:
  kinds = {k: _KINDS[spec.dtype] for k, spec in _context_spec({}).items() if k != rec.IMAGE}
  for key, dtype in (extra_context or {}).items():
    if dtype in _DTYPES:
      kinds[key] = _KINDS[_DTYPES[dtype]]
  return kinds


def validate_layout(serialized: bytes, where: str = "record", *,
                    extra_context: Mapping[str, str] | None = None) -> None:
  """Eager layout check of one serialized record; raises `LayoutError` naming the key and the expected layout.

  Also checks the type of every context key the parser reads (`video/fps` float, the timestamps int64, ...,
  and `extra_context`'s), naming the key, the expected and the found type, and `where` (the file).
  """
  expected = (f"expected layout: feature_lists['{rec.IMAGE}'] with one entry per frame, each entry a bytes_list "
              f"holding exactly ONE JPEG (see vlm/data/records.py)")
  ex = tf.train.SequenceExample()
  try:
    ex.ParseFromString(serialized)
  except Exception as e:  # pylint: disable=broad-except  (protobuf raises DecodeError subclasses)
    raise LayoutError(f"{where}: not a serialized tf.train.SequenceExample ({e}).") from None
  ctx = ex.context.feature
  for key, kind in _context_kinds(extra_context).items():
    found = ctx[key].WhichOneof("kind") if key in ctx else None
    if found is not None and found != kind:
      raise LayoutError(f"{where}: context feature '{key}' has type {_KIND_NAMES[found]}, expected "
                        f"{_KIND_NAMES[kind]} (see vlm/data/records.py).")
  if rec.IMAGE in ctx:
    n = len(ctx[rec.IMAGE].bytes_list.value)
    raise LayoutError(f"{where}: frames are stored as a context feature '{rec.IMAGE}' ({n} values); {expected}.")
  for key, feat in ctx.items():
    vals = feat.bytes_list.value
    if len(vals) > 1 and all(v[:2] == _JPEG_MAGIC for v in vals[:2]):
      raise LayoutError(f"{where}: context feature '{key}' holds {len(vals)} JPEGs; frames belong in the feature "
                        f"list, {expected}.")
  lists = ex.feature_lists.feature_list
  if rec.IMAGE not in lists or not lists[rec.IMAGE].feature:
    raise LayoutError(f"{where}: no '{rec.IMAGE}' feature list (feature lists: {sorted(lists)}, context: "
                      f"{sorted(ctx)}); {expected}.")
  for i, f in enumerate(lists[rec.IMAGE].feature):
    n = len(f.bytes_list.value)
    if n != 1:
      raise LayoutError(f"{where}: '{rec.IMAGE}' entry {i} holds {n} values (all frames in one entry?); "
                        f"{expected}.")
    if f.bytes_list.value[0][:2] != _JPEG_MAGIC:
      raise LayoutError(f"{where}: '{rec.IMAGE}' entry {i} is not a JPEG (starts with "
                        f"{f.bytes_list.value[0][:4]!r}); {expected}.")
  if rec.AUDIO in lists:
    for i, f in enumerate(lists[rec.AUDIO].feature):
      if f.bytes_list.value or f.int64_list.value:
        raise LayoutError(f"{where}: '{rec.AUDIO}' entry {i} is not a float_list.")


def check_records(files: Sequence[str], num_records: int = 2, *,
                  extra_context: Mapping[str, str] | None = None) -> list[bytes]:
  """Eagerly validates the first `num_records` good records of the first file; returns them (for a pp dry run).

  Records with framing damage are passed over (the pipeline skips and counts them too).
  """
  if not files:
    raise ValueError("No record files to read.")
  out = framing.read_records(files[0], num_records)
  for i, r in enumerate(out):
    validate_layout(r, where=f"{files[0]} record {i}", extra_context=extra_context)
  if not out:
    raise ValueError(f"{files[0]} holds no (readable) records.")
  return out


# ----------------------------------------------------------------------------------------------------------------
# Shard framing scan: counts records and finds framing damage without reading the payloads.


@dataclasses.dataclass
class ShardInfo:
  path: str
  num_records: int      # records whose length header verifies (payload CRCs are not checked here)
  truncated: bool       # the file ends inside a record (a partial header, or a record past the end)
  corrupt_records: int = 0  # records lost to damaged length headers or the truncated tail
  skipped_bytes: int = 0    # bytes those occupy


_SCAN_CACHE: dict[tuple[str, int], ShardInfo] = {}


def scan_shard(path: str) -> ShardInfo:
  """Walks a TFRecord file's length headers (12 bytes per record, payloads skipped by seeking).

  A damaged length header does not end the walk: it resumes at the next position whose header verifies
  (vlm/data/framing.py), so the records behind it are counted. Results are cached per (path, size).
  """
  size = tf.io.gfile.stat(path).length
  key = (path, size)
  if key in _SCAN_CACHE:
    return _SCAN_CACHE[key]
  n, lost, skipped, truncated = 0, 0, 0, False
  for r in framing.walk(path, verify=False):
    n += r.payload is not None
    lost, skipped, truncated = lost + r.corrupt_records, skipped + r.skipped_bytes, truncated or r.truncated
  info = ShardInfo(path, n, truncated, lost, skipped)
  _SCAN_CACHE[key] = info
  return info


_masked_crc = framing.masked_crc  # kept for callers of the old name
