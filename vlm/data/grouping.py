"""The grouping stage: K consecutive records of a shard become ONE example (an episode's clips).

HierVL's summary-level loss reads several consecutive clips of one long video at once (an aggregator over N clip
embeddings is matched with the episode's summary), so the unit the shuffle moves must be that group of clips,
not a clip: shuffling clips first would scatter an episode over the whole epoch. With `config.input.group` set,
each shard's records are grouped as they are read, before files are interleaved and before the shuffle; the
shuffle, the resumable position, preprocessing and batching then work on groups exactly as they work on records
without it.

  config.input.group = dict(
      size=4,                 # K >= 1: records per example
      key='episode/id',       # None (default): any K consecutive records of a shard; or a context feature of
                              #   the records: a group only holds records whose value of it is the same (a run)
      remainder='drop',       # a run's last records that do not fill a group of K: 'drop' (default) or 'pad'
  )

Runs. With a `key`, a shard is cut into runs of consecutive records sharing the key's value (an episode when
the key is an episode id and the shard keeps each episode's clips together and in order, as the built-in
dataset does; `vlm.data.write` keeps the manifest's order in contiguous shards, so an episode it splits at a
shard boundary becomes two runs); each run is cut into groups of K in order. Without a key, the shard is one
run. A run whose length is not a multiple of K leaves `n mod K` records at its end:
  'drop': they are not used; `skipped['group_dropped']` counts them.
  'pad':  they make a group padded to K by repeating the run's last record; `group_mask` marks the padding and
          `skipped['group_padded']` counts the padding slots.
A record without the key (the feature missing or empty, or a record that does not parse) ends the run before
it, is not used, and is counted in `skipped['group_unkeyed']`. Counts are attached to the next group the
pipeline hands out, so they belong to the batches consumed (as the corrupt-record count does).

Examples. The pp spec runs on each of the K records (record k's random ops draw from the example seed folded
with k: clips of a group get independent augmentations), and every feature gains a leading [K] axis:
  video [K, F, H, W, 3], text [K, ...], ...   (per-host batches: [B, K, ...])
  group_mask  float32 [K]   1 for a real record, 0 for padding (zeros only with 'pad')
Episode-level context (an episode summary stored on every clip) comes out [K, ...] too: its row 0 is the
group's. A group is one example for `shuffle_buffer`, `batch_size`, the resume position and the corrupt count
(a group with a record that fails to preprocess is skipped whole and counted once in `skipped['corrupt']`).

The key's type (bytes, int64 or float) is read from the first record of the split's first shard; a key absent
there is an error naming `config.input.group.key` and the context features the record has.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import tensorflow as tf

from vlm.data import framing

REMAINDERS = ("drop", "pad")
# Per-example counts the grouping stage attaches (pipeline-private keys) -> names in `DataIterator.skipped`.
COUNTS = {"_group_dropped": "group_dropped", "_group_unkeyed": "group_unkeyed", "_group_padded": "group_padded"}
_KNOBS = ("size", "key", "remainder")
_no_autograph = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class Group:
  """A validated `config.input.group`.

  Attributes:
    size: K, records per example.
    key: context feature whose value every record of a group shares; None: no constraint.
    remainder: 'drop' or 'pad' (module docstring).
  """
  size: int
  key: str | None = None
  remainder: str = "drop"


def parse(group: Any) -> Group | None:
  """`config.input.group` (None, or a dict / ConfigDict of the knobs) -> `Group` or None; errors name the knob."""
  if group is None:
    return None
  group = group.to_dict() if hasattr(group, "to_dict") else group
  if not isinstance(group, Mapping):
    raise ValueError(f"config.input.group = {group!r}: expected None or dict(size=K, key=..., remainder=...).")
  unknown = sorted(set(group) - set(_KNOBS))
  if unknown:
    raise ValueError(f"config.input.group has unknown keys {unknown}; its keys are {list(_KNOBS)}.")
  size = group.get("size")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"config.input.group.size = {size!r}: expected an int >= 1 (records per example).")
  key = group.get("key")
  if key is not None and (not isinstance(key, str) or not key):
    raise ValueError(f"config.input.group.key = {key!r}: expected None or the name of a context feature "
                     "(e.g. 'episode/id').")
  remainder = group.get("remainder", "drop")
  if remainder not in REMAINDERS:
    raise ValueError(f"config.input.group.remainder = {remainder!r}: expected one of {list(REMAINDERS)}.")
  return Group(int(size), key, remainder)


def key_dtype(group: Group, files: Sequence[str]) -> tf.DType:
  """The dtype of `group.key` in the first record of `files[0]` (tf.string when there is no key to read)."""
  if group.key is None or not files:
    return tf.string
  first = framing.read_records(files[0], 1)
  if not first:
    raise ValueError(f"config.input.group.key={group.key!r}: {files[0]} holds no records to read it from.")
  ex = tf.train.SequenceExample.FromString(first[0])
  ctx = ex.context.feature
  if group.key not in ctx:
    raise ValueError(f"config.input.group.key={group.key!r} is not a context feature of the records: "
                     f"{files[0]} record 0 has {sorted(ctx)}.")
  kind = ctx[group.key].WhichOneof("kind")
  return {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}.get(kind, tf.string)


def _key_string(serialized: tf.Tensor, key: str, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
  """(the key's values as one string, whether the record has them) for one serialized record."""
  ctx, _ = tf.io.parse_single_sequence_example(serialized, context_features={key: tf.io.VarLenFeature(dtype)})
  values = ctx[key].values
  if dtype == tf.string:
    text = tf.strings.reduce_join(values, separator="\x1f")
  else:
    # Floats compare by their bits (as_string would round them); ints as decimal.
    ints = tf.bitcast(values, tf.int32) if dtype == tf.float32 else values
    text = tf.strings.reduce_join(tf.strings.as_string(ints), separator=",")
  return text, tf.size(values) > 0


def group_records(records: tf.data.Dataset, group: Group, dtype: tf.DType = tf.string) -> tf.data.Dataset:
  """One shard's records (in shard order) -> its groups, in order, as dicts.

  `records`: serialized records, or the reader's elements (`vlm.data.framing.dataset`: {'payload',
  '_corrupt_records', '_skipped_bytes', '_count_only'}), whose counts of framing losses then ride on the
  element of the record they came with (count-only elements are not records: they neither join nor end a run).
  Output elements:

    payload         string [K]  the group's records (padding repeats the last real one)
    _real           int64 []    real records in the group (K, or fewer with 'pad')
    _valid          bool []     False for an element that only carries counts (a dropped remainder, an unkeyed
                                record); `carry_counts` moves its counts onto the next group and removes it
    _group_dropped, _group_unkeyed, _group_padded   int64 []  counts (module docstring)
    _corrupt_records, _skipped_bytes                int64 []  the reader's counts

  One pass with O(K) state (a `scan` holding the group being filled), so shards of any size stream.
  """
  k = group.size
  pad = group.remainder == "pad"
  zero = tf.constant(0, tf.int64)
  if isinstance(records.element_spec, tf.TensorSpec):  # plain serialized records: no reader counts
    records = records.map(_no_autograph(lambda r: {"payload": r, **{c: zero for c in framing.COUNTS},
                                                   framing.COUNT_ONLY: tf.constant(False)}))
  # (record, reader counts, count-only flag) -> with the key: (..., key value, has key)
  records = records.map(_no_autograph(lambda e: (e["payload"], tuple(e[c] for c in framing.COUNTS),
                                                 e[framing.COUNT_ONLY])))
  if group.key is None:
    keyed = records.map(_no_autograph(lambda r, c, only: (r, c, only, tf.constant(""), tf.constant(True))))
  else:
    key = group.key

    @_no_autograph
    def read_key(r, c, only):
      # A record that does not parse must not stop the shard: it reads as having no key (counted, not used).
      one = tf.data.Dataset.from_tensors(r).map(
          lambda x: (x, c, only, *_key_string(x, key, dtype))).ignore_errors()
      return one.concatenate(tf.data.Dataset.from_tensors(
          (r, c, only, tf.constant(""), tf.constant(False)))).take(1)

    keyed = records.flat_map(read_key)
  # An end marker flushes the run still open at the end of the shard.
  keyed = keyed.map(lambda r, c, only, kv, has: (r, c, only, kv, has, tf.constant(False)))
  keyed = keyed.concatenate(tf.data.Dataset.from_tensors(
      (tf.constant(""), tuple(zero for _ in framing.COUNTS), tf.constant(True), tf.constant(""),
       tf.constant(False), tf.constant(True))))
  empty = tf.fill([k], "")
  slots = tf.range(k, dtype=tf.int64)

  @_no_autograph
  def step(state, x):
    buf, n, cur = state
    record, reader_counts, only, key_value, has_key, end = x
    is_record = tf.logical_not(only)  # a count-only element of the reader neither joins nor ends a run
    # The run ends before this record: at the shard's end, at an unkeyed record, or where the key changes.
    breaks = end | (is_record & (tf.logical_not(has_key) | ((n > 0) & tf.not_equal(key_value, cur))))
    rest = tf.where(breaks, n, zero)  # records left in the group being filled, flushed now (< K)
    flushed = tf.gather(buf, tf.minimum(slots, tf.maximum(rest - 1, 0)))  # padded by its last record
    n = tf.where(breaks, zero, n)
    takes = has_key & is_record & tf.logical_not(end)
    filled = tf.tensor_scatter_nd_update(buf, tf.reshape(tf.minimum(n, k - 1), [1, 1]), tf.reshape(record, [1]))
    buf = tf.where(takes, filled, buf)
    n = n + tf.cast(takes, tf.int64)
    full = tf.equal(n, k)  # never together with rest > 0 (K = 1 never holds a partial group)
    padded = rest > 0 if pad else tf.constant(False)  # the flushed records make a padded group
    out = {
        "payload": tf.where(full, buf, tf.where(padded, flushed, empty)),
        "_real": tf.where(full, tf.constant(k, tf.int64), tf.where(padded, rest, zero)),
        "_valid": full | padded,
        "_group_dropped": zero if pad else rest,
        "_group_unkeyed": tf.cast(tf.logical_not(has_key) & is_record & tf.logical_not(end), tf.int64),
        "_group_padded": tf.where(padded, k - rest, zero),
        **dict(zip(framing.COUNTS, reader_counts)),
    }
    new_state = (tf.where(full, empty, buf), tf.where(full, zero, n), tf.where(takes, key_value, cur))
    return new_state, out

  @_no_autograph
  def useful(e):
    return (e["_valid"] | (e["_group_dropped"] > 0) | (e["_group_unkeyed"] > 0) |
            (e["_corrupt_records"] > 0) | (e["_skipped_bytes"] > 0))

  return keyed.scan((empty, zero, tf.constant("")), step).filter(useful)


def carry_counts(ds: tf.data.Dataset, max_in_row: int, size: int) -> tf.data.Dataset:
  """Removes the count-only elements (`_valid` False), adding their counts to the next group's; drops `_valid`.

  Fails (instead of searching forever) when `max_in_row` count-only elements come in a row.
  """
  keys = tuple(COUNTS) + tuple(framing.COUNTS)

  @_no_autograph
  def step(state, e):
    in_row, acc = state
    e = dict(e)
    valid = e.pop("_valid")
    check = tf.debugging.assert_less(in_row, tf.constant(max_in_row, tf.int64), message=(
        f"{max_in_row} runs in a row gave no group of config.input.group.size={size} records (runs too short "
        "for 'drop', or records without config.input.group.key); see the group_* counts"))
    with tf.control_dependencies([check]):
      valid = tf.identity(valid)
    total = tuple(a + e[key] for a, key in zip(acc, keys))
    for key, t in zip(keys, total):
      e[key] = tf.where(valid, t, tf.zeros_like(t))
    new_acc = tuple(tf.where(valid, tf.zeros_like(t), t) for t in total)
    return (tf.where(valid, tf.constant(0, tf.int64), in_row + 1), new_acc), (e, valid)

  zeros = tuple(tf.constant(0, tf.int64) for _ in keys)
  ds = ds.scan((tf.constant(0, tf.int64), zeros), step)
  return ds.filter(_no_autograph(lambda e, valid: valid)).map(_no_autograph(lambda e, valid: e))


def stack_examples(outs: Sequence[Mapping[str, tf.Tensor]], real: tf.Tensor) -> dict[str, tf.Tensor]:
  """K preprocessed records -> one example: every feature stacked on a leading [K] axis, plus `group_mask`."""
  keys = sorted(outs[0])
  for i, o in enumerate(outs[1:], 1):
    if sorted(o) != keys:
      raise ValueError(f"Grouped records give different features: record 0 {keys}, record {i} {sorted(o)}.")
  out = {key: tf.stack([o[key] for o in outs]) for key in keys}
  out["group_mask"] = tf.cast(tf.range(len(outs), dtype=tf.int64) < real, tf.float32)
  return out

