"""TFRecord framing with record-level recovery: a damaged record costs that record, never the rest of its shard.

TFRecord framing, per record: uint64 length (little-endian), uint32 masked CRC-32C of the length, the payload,
uint32 masked CRC-32C of the payload. `tf.data.TFRecordDataset` stops a shard at the first damaged record; the
reader here goes on:

  * a payload (or its checksum) that fails its CRC: the record is skipped (its length header is intact, so the
    next record starts right after it) and counted;
  * a damaged length header (its CRC fails): the reader resynchronises at the next byte position whose length
    and length CRC verify (and whose record fits in the file), counting one lost record and the bytes skipped;
  * a truncated tail (a partial header, or a record running past the end of the file): one lost record, the
    bytes skipped, and the file flagged truncated.

Losses are reported with the next good record (`corrupt_records`, `skipped_bytes`: what was lost between the
previous good record and this one), or, after the last good record of a file, by one count-only element. So
the counts travel through the shuffle with the records and are summed when the batches are consumed, which
keeps them exact on resume (vlm/data/pipeline.py). The damage tolerated is framing damage; a record whose
framing is intact but whose content does not parse is the pipeline's `skipped['corrupt']`.

Payload CRCs are verified in C++ by TensorFlow's record reader (`RandomRecordReader`, reading at an offset);
without it (another TensorFlow build), by `google_crc32c` / `crc32c` when installed, else in Python (slow).
"""
from __future__ import annotations

import dataclasses
import logging
import struct
from typing import Iterator

import numpy as np
import tensorflow as tf

HEADER = 12  # uint64 length + uint32 masked crc
FOOTER = 4   # uint32 masked crc of the payload
_MASK_DELTA = 0xA282EAD8
_SCAN_CHUNK = 1 << 20  # bytes examined per step of a resynchronisation scan

# Per-element counts the reader attaches (pipeline-private keys) -> names in `DataIterator.skipped`.
COUNTS = {"_corrupt_records": "corrupt_records", "_skipped_bytes": "skipped_bytes"}
COUNT_ONLY = "_count_only"
_no_autograph = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli).


def _crc_table() -> np.ndarray:
  table = np.zeros(256, np.uint32)
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    table[i] = crc
  return table


_TABLE = _crc_table()
_TABLE_LIST = [int(x) for x in _TABLE]


def crc32c(data: bytes) -> int:
  """CRC-32C of `data`, table-driven in Python (for headers and small buffers)."""
  crc = 0xFFFFFFFF
  table = _TABLE_LIST
  for b in data:
    crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _mask(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC-32C."""
  return _mask(crc32c(data))


def _fast_crc32c():
  for name in ("google_crc32c", "crc32c"):
    try:
      mod = __import__(name)
    except ImportError:
      continue
    fn = getattr(mod, "value", None) or getattr(mod, "crc32c", None)
    if fn is not None:
      return lambda b: int(fn(bytes(b)))
  return None


def header_ok_positions(buf: bytes | np.ndarray) -> np.ndarray:
  """Offsets i (ascending) where buf[i:i+8] is a length whose masked CRC is buf[i+8:i+12] (vectorised)."""
  a = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) else buf
  n = a.size - HEADER + 1
  if n <= 0:
    return np.zeros([0], np.int64)
  crc = np.full(n, 0xFFFFFFFF, np.uint32)
  for j in range(8):
    crc = _TABLE[(crc ^ a[j:j + n]) & 0xFF] ^ (crc >> np.uint32(8))
  crc ^= np.uint32(0xFFFFFFFF)
  masked = (((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)).astype(np.uint32)
  stored = (a[8:8 + n].astype(np.uint32) | (a[9:9 + n].astype(np.uint32) << 8) |
            (a[10:10 + n].astype(np.uint32) << 16) | (a[11:11 + n].astype(np.uint32) << 24))
  return np.flatnonzero(masked == stored).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# The walker.


@dataclasses.dataclass
class Record:
  """One good record, or (payload None) the losses after a file's last good record.

  corrupt_records / skipped_bytes: records and bytes lost between the previous good record and this one.
  truncated: set on the file's last element when the file ends inside a record.
  """
  payload: bytes | None
  offset: int
  corrupt_records: int = 0
  skipped_bytes: int = 0
  truncated: bool = False
  length: int = 0


def _open(path: str):
  return tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")  # pylint: disable=consider-using-with


def _size(path: str) -> int:
  return int(tf.io.gfile.stat(path).length)


def _random_reader(path: str):
  try:
    from tensorflow.python.lib.io import _pywrap_record_io  # pylint: disable=g-import-not-at-top
    return _pywrap_record_io.RandomRecordReader(path)
  except Exception:  # pylint: disable=broad-except  (a TF build without it, or an unreadable file)
    return None


_warned_slow = []


def _resync(f, start: int, size: int) -> int:
  """The first offset >= start whose header verifies and whose record fits in the file; `size` if none."""
  pos = start
  while pos + HEADER <= size:
    f.seek(pos)
    buf = f.read(min(_SCAN_CHUNK + HEADER - 1, size - pos))
    for i in header_ok_positions(buf):
      q = pos + int(i)
      (length,) = struct.unpack("<Q", bytes(buf[i:i + 8]))
      if q + HEADER + length + FOOTER <= size:
        return q
    if len(buf) < HEADER:
      break
    pos += len(buf) - HEADER + 1
  return size


def walk(path: str, *, verify: bool = True, start: int = 0, keep: bool = True) -> Iterator[Record]:
  """The good records of one TFRecord file, in order, with what was lost before each (module docstring).

  Args:
    path: the file (local, or any filesystem TensorFlow reads).
    verify: check payload CRCs and return payloads; False walks the length headers only (seeking over the
      payloads: record counts and framing damage without reading the data), yielding records with payload b''.
  """
  size = _size(path)
  reader = _random_reader(path) if verify else None
  crc_fn = None
  if verify and reader is None:
    crc_fn = _fast_crc32c()
    if crc_fn is None:
      crc_fn = crc32c
      if not _warned_slow:
        _warned_slow.append(1)
        logging.warning("TFRecord payload CRCs are checked in Python (slow): install google-crc32c.")
  lost, skipped, truncated = 0, 0, False
  with _open(path) as f:
    off = int(start)
    while off < size:
      if reader is not None:
        try:
          payload, nxt = reader.read(off)
        except (tf.errors.OpError, IndexError, ValueError, RuntimeError):
          pass  # diagnosed below
        else:
          yield Record(bytes(payload) if keep else b"", off, lost, skipped, length=len(payload))
          lost, skipped, off = 0, 0, int(nxt)
          continue
      if size - off < HEADER:  # a partial header at the end
        lost, skipped, truncated = lost + 1, skipped + size - off, True
        break
      f.seek(off)
      header = f.read(HEADER)
      (length,) = struct.unpack("<Q", header[:8])
      if masked_crc(header[:8]) != struct.unpack("<I", header[8:12])[0]:  # damaged header: resynchronise
        nxt = _resync(f, off + 1, size)
        lost, skipped, off = lost + 1, skipped + nxt - off, nxt
        continue
      end = off + HEADER + length + FOOTER
      if end > size:  # the record runs past the end of the file
        lost, skipped, truncated = lost + 1, skipped + size - off, True
        break
      if not verify:
        yield Record(b"", off, lost, skipped, length=length)
        lost, skipped, off = 0, 0, end
        continue
      if reader is None:
        body = f.read(length + FOOTER)
        if _mask(crc_fn(body[:length])) == struct.unpack("<I", body[length:])[0]:
          yield Record(bytes(body[:length]) if keep else b"", off, lost, skipped, length=length)
          lost, skipped, off = 0, 0, end
          continue
      lost, skipped, off = lost + 1, skipped + end - off, end  # the payload fails its CRC
  if lost or skipped or truncated:
    yield Record(None, size, lost, skipped, truncated)


def read_records(path: str, limit: int | None = None) -> list[bytes]:
  """The first `limit` (default all) good payloads of `path`, eagerly."""
  out = []
  for r in walk(path):
    if limit is not None and len(out) >= limit:
      break
    if r.payload is not None:
      out.append(r.payload)
  return out


# ----------------------------------------------------------------------------------------------------------------
# tf.data.


def _tail_plan(path, offset) -> tuple[np.ndarray, ...]:
  """The good records from `offset` on (offsets, lengths) and the losses before each, plus a count-only row."""
  path = path.numpy().decode() if hasattr(path, "numpy") else str(path)
  offset = int(offset)
  rows = [(r.offset if r.payload is not None else -1, r.length, r.corrupt_records, r.skipped_bytes,
           int(r.payload is None)) for r in walk(path, start=offset, keep=False)]
  cols = np.array(rows, np.int64).reshape(-1, 5)
  return tuple(cols[:, i] for i in range(5))


def _read_at(path, offset, length) -> bytes:
  path = path.numpy().decode() if hasattr(path, "numpy") else str(path)
  with _open(path) as f:
    f.seek(int(offset) + HEADER)
    return f.read(int(length))


def dataset(path: tf.Tensor | str) -> tf.data.Dataset:
  """One file's records as elements {'payload', '_corrupt_records', '_skipped_bytes', '_count_only'}.

  `_count_only` marks an element (payload '') that carries the losses after the file's last good record.
  Usable inside `interleave` (path a scalar string tensor). Intact files cost what `TFRecordDataset` costs:
  it reads the file, and only where it stops early (at the first damaged record) does the recovering reader
  above take over, from that record's offset (its plan of the tail in Python, each good payload then read by
  offset).
  """
  path = tf.convert_to_tensor(path, tf.string)
  zero = tf.constant(0, tf.int64)
  fast = tf.data.TFRecordDataset(path).ignore_errors()  # stops at the shard's first damaged record
  marked = fast.map(_no_autograph(lambda r: (r, tf.constant(False)))).concatenate(
      tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(True))))

  @_no_autograph
  def offsets(off, x):
    r, end = x
    size = tf.cast(tf.strings.length(r, unit="BYTE"), tf.int64) + (HEADER + FOOTER)
    return off + tf.where(end, zero, size), (r, end, off)

  @_no_autograph
  def expand(r, end, off):
    def tail():
      out = [tf.reshape(o, [-1]) for o in tf.py_function(_tail_plan, [path, off], [tf.int64] * 5)]
      return (tf.fill(tf.shape(out[0]), ""), *out)  # the payloads are read by offset (`load`)

    def one():
      minus, zeros = tf.constant([-1], tf.int64), tf.constant([0], tf.int64)
      return tf.reshape(r, [1]), minus, zeros, zeros, zeros, zeros  # (a reshape does not copy the payload)

    return tf.cond(end, tail, one)

  @_no_autograph
  def load(payload, off, length, lost, skipped, only):
    def read():
      return tf.reshape(tf.py_function(_read_at, [path, off, length], tf.string), [])

    in_tail = (off >= 0) & tf.equal(only, 0)
    payload = tf.cond(in_tail, read, lambda: payload)
    return {"payload": payload, "_corrupt_records": lost, "_skipped_bytes": skipped,
            COUNT_ONLY: tf.not_equal(only, 0)}

  return marked.scan(zero, offsets).map(expand).unbatch().map(load)
