"""Resumable, deterministic tf.data input of one dataset: `make_train_iterator` and `make_eval_iterator`.

Callers use the data layer's entry point, `vlm.data.inputs` (which adds dataset mixtures on top of this).
Both yield per-host batches, dicts of numpy arrays with the keys of the batch table in vlm/README.md (whatever the
pp spec keeps), built from a `Source` (vlm/data/sources.py) and a pp spec (vlm/data/pp.py).

Design (training)
  * Files: host i of n reads shards i::n. Every epoch e has its own file order and shuffle, both seeded by
    (seed, host, e); files are read `cycle_length` at a time with a deterministic `interleave`.
  * input.group (vlm/data/grouping.py): each shard's records are grouped as they are read (K consecutive
    records, e.g. an episode's clips, become one example with a leading [K] axis); everything below then
    applies to groups instead of records.
  * Records are numbered in the order they leave the shuffle buffer: (epoch, position). Each example's
    augmentation seed is derived from (seed, host, epoch, position) and every random op is stateless, so an
    example gets the same augmentation on every run.
  * Every batch carries the (epoch, position) of its examples; the iterator remembers those of the last batch it
    handed out, so `get_state()` = {'seed', 'epoch', 'position', ...} is exact whatever the prefetch depth.
    `make_train_iterator(..., state=s)` rebuilds epoch `s['epoch']` and skips `s['position']` serialized records
    after the shuffle (no parsing or decoding), so the next batch is the one an uninterrupted run would yield next.
    A state saved with another process count restarts its epoch from the start (with a warning): the host split
    changed, so positions no longer match.
  * input.cache: the host's records are read once in a fixed file order and kept in memory (`Dataset.cache`);
    each epoch then only reshuffles them (size the shuffle buffer to the host's record count).
  * Batch-level ops (input.batch_pp, e.g. mixup) draw from a seed folded out of the batch's first example seed.
  * Errors: each record is parsed and preprocessed inside its own one-element dataset with `ignore_errors`; a
    record that fails (truncated proto, corrupt JPEG, wrong layout, 'error' pad policy, ...) is replaced by a
    placeholder flagged invalid, a `scan` counts the invalid ones in front of each valid example, and they are
    filtered out. Counts therefore belong to the batches actually consumed: `DataIterator.skipped['corrupt']`.
    Shards whose framing is truncated (found by a header walk at start) are counted in
    `skipped['truncated_files']`; their readable records are used.
  * Before anything is built, the first records of the host's first shard are checked eagerly (layout, then
    parse + pp run eagerly), so a wrong layout or a broken pp spec fails at once with a clear error rather than
    as silently skipped records hours into the run.

Design (eval)
  Ordered, finite; per-host record counts come from the shard header walk (with input.group, the group counts
  from one pass over the records that reads only the key; `EvalIterable.skipped` then holds the split's
  grouping counts); every host yields ceil(max_host_count / host_batch) batches, padding with zero examples
  that have `_mask` = 0 (big_vision's "infinite padding"). Real examples have `_mask` = 1; skipped (invalid) records are replaced by padding. A host
  with no shard (more hosts than eval files) yields padding only. The iterable can be iterated again.

Config (config.seed and config.input; eval_input overrides fields of config.input, `data` merged key by key)
  seed: int                          base of every seed
  input.data: dict(name='builtin'|'records'|'tfds'|'module.path', split='train', options=dict(...),
                   files=..., dataset=..., data_dir=...)          see vlm/data/sources.py
  input.batch_size: int              GLOBAL batch; per-host = batch_size // process_count (must divide)
  input.shuffle_buffer: int = 1024   records in the shuffle buffer (serialized, before decoding); <= 1: none
  input.pp: str | list               pp spec (vlm/data/pp.py); default built from the fields below
  input.batch_pp: str = ''           ops on batched dicts, e.g. 'mixup(alpha=5.0)'
  input.pp_modules: list[str] = []   extra op modules to import
  input.num_frames: int = 32, input.fps: float | None = 10.0, input.stride: int = 1,
  input.crop_size: int = 224, input.audio_samples: int = 0, input.max_text_len: int = 16,
  input.num_captions: int = 1, input.num_classes: int = 0      used by the default pp and as op defaults
  input.num_clips: int = 1, input.num_crops: int = 1 (1 | 3)   eval default pp: views V = clips x crops
                                     (VATT B.5: 4 clips x 3 crops -> video [B, 12, F, H, W, 3])
  input.pad_policy: str = 'loop'     short clips: 'loop' | 'pad_last' | 'error'
  input.default_fps: float = 25.0    frame rate assumed for records without `video/fps`
  input.tokenizer: dict(kind='words'|'wordpiece', vocab_file=None, lower=True)  vocab_file None = source's vocab;
                                     no tokenizer and a source with a vocab (builtin) = whole words of that vocab
  input.extra_context: dict = {}     extra context keys to parse: {key: 'string'|'int'|'float'}
  input.cache: bool = False          keep the host's serialized records in memory after the first epoch
  input.cycle_length: int = 16       files read concurrently
  input.num_parallel_calls: int = -1 examples processed concurrently (-1: AUTOTUNE)
  input.threads: int = 0             tf.data private thread pool size (0: TF's shared pool)
  input.prefetch: int = 2            batches prefetched
  input.host_split: str = 'files'    training records per host: 'files' (host i reads shards i::n; scales) or
                                     'examples' (every host reads all shards and keeps its rows of each global
                                     batch: identical global batches for any process count while no record is
                                     skipped; for small datasets and reproducibility checks)
  input.mixture: dict = None         several datasets mixed by weight, one per global batch, each example tagged
                                     with `dataset` (joint image + video training): see vlm/data/mixture.py;
                                     read by `vlm.data.inputs`, refused here
  input.group: dict = None           dict(size=K, key=None | 'episode/id', remainder='drop' | 'pad'): K
                                     consecutive records of a shard (sharing `key`) make one example, before
                                     the shuffle; record sources only; see vlm/data/grouping.py
  input.skip_errors: bool = True     count and skip failing records (False: fail on the first)
  input.max_consecutive_errors: int = 1000   fail when this many records in a row are skipped
  input.check_files: bool | None     walk the host's shard headers at start to find truncated files (None:
                                     only for local files; eval always walks them, for the record counts)
  input.eager_check: int = 2         records checked eagerly before the pipeline starts (0: off)
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow as tf

from vlm.data import framing
from vlm.data import grouping
from vlm.data import pp as pp_lib
from vlm.data import sources as sources_lib

# Per-example counts (pipeline-private keys) -> names in `DataIterator.skipped`: the reader's framing losses
# (vlm/data/framing.py) and the grouping stage's.
_COUNTS = {**framing.COUNTS, **grouping.COUNTS}
_PRIVATE = ("_seed", "_epoch", "_pos", "_skipped", "_end_epoch", "_end_pos", framing.COUNT_ONLY, *_COUNTS)
# Every tf.data function here is plain TF (no Python control flow on tensors): skip AutoGraph, it only costs time.
_no_autograph = tf.autograph.experimental.do_not_convert
_BATCH_SALT = 0x6261  # folds the batch seed out of the first example's seed (batch-level ops)

DEFAULTS: dict[str, Any] = dict(
    shuffle_buffer=1024, pp=None, batch_pp="", pp_modules=(), num_frames=32, fps=10.0, stride=1, crop_size=224,
    audio_samples=0, max_text_len=16, num_captions=1, num_classes=0, num_clips=1, num_crops=1, pad_policy="loop",
    default_fps=25.0,
    tokenizer=None, extra_context=None, cache=False, cycle_length=16, num_parallel_calls=-1, threads=0,
    prefetch=2, host_split="files", skip_errors=True, max_consecutive_errors=1000, check_files=None, eager_check=2,
    group=None,
)


# ----------------------------------------------------------------------------------------------------------------
# Config helpers.


def _to_dict(x) -> dict:
  if x is None:
    return {}
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return dict(x)


def input_config(config, overrides=None) -> dict[str, Any]:
  """config.input (+ eval overrides) as a plain dict with defaults filled in."""
  inp = {**DEFAULTS, **_to_dict(config.input)}
  over = _to_dict(overrides)
  if "data" in over:
    over["data"] = {**_to_dict(inp.get("data")), **_to_dict(over["data"])}
  inp.update(over)
  if "batch_size" not in inp:
    raise ValueError("config.input.batch_size is required.")
  inp["data"] = _to_dict(inp.get("data")) or {"name": "builtin"}
  return inp


def host_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f"Global batch size {batch_size} is not divisible by the process count {process_count}.")
  return batch_size // process_count


def default_pp(inp: Mapping[str, Any], *, train: bool, text: bool | None = None, num_classes: int | None = None
               ) -> str:
  """The pp spec used when `input.pp` is not set: VATT-style clip, crop, augmentation, text and labels.

  Text ops are added when `text` (default: a tokenizer is configured) and `max_text_len` > 0; label ops when
  `num_classes` (default: `input.num_classes`) > 0.
  """
  text = inp.get("tokenizer") is not None if text is None else text
  num_classes = inp.get("num_classes") or 0 if num_classes is None else num_classes
  f, crop = inp["num_frames"], inp["crop_size"]
  timing = f"fps={inp['fps']}" if inp.get("fps") else f"stride={inp['stride']}"
  audio = inp.get("audio_samples") or 0
  keep = ["video", "audio_mask"] + (["audio"] if audio else [])
  if train:
    ops = [f"sample_clip({f}, {timing}, audio_samples={audio})", f"random_resized_crop({crop})", "flip",
           "color_jitter", "normalize(-1, 1)"] + (["audio_noise(0.01)"] if audio else [])
  else:
    clips, crops = int(inp.get("num_clips") or 1), int(inp.get("num_crops") or 1)
    if crops not in (1, 3):
      raise ValueError(f"input.num_crops must be 1 or 3, got {crops}.")
    if clips > 1 or crops == 3:  # multi-view: video [V, F, H, W, 3], V = clips * crops (VATT B.5: 4 x 3)
      # Three crops span the long side of the frame resized to `crop` on its short side (the standard 3-crop).
      space = f"three_crop({crop}, resize_smallest={crop})" if crops == 3 else f"center_crop({crop})"
      ops = [f"sample_multiclip({clips}, {f}, {timing}, audio_samples={audio})", space]
    else:
      ops = [f"sample_clip({f}, {timing}, random=False, audio_samples={audio})", f"center_crop({crop})"]
    ops.append("normalize(-1, 1)")
  if inp.get("max_text_len") and text:
    ops += [f"sample_captions({inp['num_captions']}, random={train})", f"tokenize({inp['max_text_len']})"]
    keep += ["text", "text_mask"]
  if num_classes:
    ops += ["label", f"onehot({num_classes})"]
    keep += ["label", "labels"]
  ops.append("keep(" + ", ".join(repr(k) for k in keep) + ")")
  return "|".join(ops)


def op_defaults(inp: Mapping[str, Any], source: sources_lib.Source) -> dict[str, dict[str, Any]]:
  """Config fields injected as default arguments of pp ops (explicit arguments in the spec win)."""
  tok = _to_dict(inp.get("tokenizer")) or None
  if tok is not None and not tok.get("vocab_file"):
    tok["vocab_file"] = source.meta.get("vocab_file")
  if tok is None and source.meta.get("vocab_file"):
    tok = {"kind": "words", "vocab_file": source.meta["vocab_file"]}
  clip = {"pad": inp["pad_policy"], "default_fps": inp["default_fps"]}
  out = {"sample_clip": clip, "sample_multiclip": dict(clip), "sample_captions": {"num": inp["num_captions"]}}
  if tok is not None:
    out["tokenize"] = {"tokenizer": tok, "max_len": inp["max_text_len"]}
  n_cls = inp.get("num_classes") or len(source.meta.get("class_names") or ())
  if n_cls:
    out["onehot"] = {"num_classes": n_cls}
    out["multihot"] = {"num_classes": n_cls}
  return out


# ----------------------------------------------------------------------------------------------------------------
# Dataset construction.


def _example_seed(base: tf.Tensor, epoch: tf.Tensor, pos: tf.Tensor) -> tf.Tensor:
  s = tf.random.experimental.stateless_fold_in(base, tf.cast(epoch, tf.int64))
  return tf.random.experimental.stateless_fold_in(s, tf.cast(pos, tf.int64))


def _host_seed(seed: int, process_index: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0x5EED], tf.int64), process_index)


class _Builder:
  """Builds the per-host datasets for one input config."""

  def __init__(self, config, inp: dict, process_index: int, process_count: int, *, train: bool):
    self.inp = inp
    self.train = train
    self.seed = int(config.get("seed", 0)) if hasattr(config, "get") else int(getattr(config, "seed", 0))
    self.process_index, self.process_count = process_index, process_count
    self.batch = host_batch_size(int(inp["batch_size"]), process_count)
    self.source = sources_lib.get_source(inp["data"])
    self.extra_context = _to_dict(inp.get("extra_context"))
    defaults = op_defaults(inp, self.source)
    spec = inp.get("pp") or default_pp(inp, train=train, text="tokenize" in defaults,
                                       num_classes=defaults.get("onehot", {}).get("num_classes", 0))
    self.pp = pp_lib.build(spec, defaults=defaults, modules=inp.get("pp_modules") or ())
    self.batch_pp = pp_lib.build(inp.get("batch_pp") or None, modules=inp.get("pp_modules") or ())
    self.is_records = self.source.load_examples is None
    self.group = grouping.parse(inp.get("group"))
    if self.group is not None and not self.is_records:
      raise ValueError(f"config.input.group needs a record source (builtin or records); input.data.name is "
                       f"{self.source.name!r}.")
    # Keys summed over skipped examples into the next one's (the reader's and the grouping stage's counts).
    self.carried = ((tuple(framing.COUNTS) if self.is_records else ())
                    + (tuple(grouping.COUNTS) if self.group is not None else ()))
    host_split = inp.get("host_split", "files")
    if host_split not in ("files", "examples"):
      raise ValueError(f"input.host_split={host_split!r}: expected 'files' or 'examples'.")
    # 'examples': every host reads every shard in the same global order and keeps its rows of each global batch,
    # so the global batches do not depend on the number of processes (exact multi-host reproducibility, at the
    # price of each host reading all records; parsing and decoding stay per host).
    self.split_examples = train and host_split == "examples" and process_count > 1
    if self.split_examples and not self.is_records:
      raise ValueError("input.host_split='examples' needs a record source (builtin or records).")
    file_host, file_hosts = (0, 1) if self.split_examples else (process_index, process_count)
    self.files = (sources_lib.host_files(self.source.files, file_host, file_hosts, allow_empty=not train)
                  if self.is_records else [])
    self.truncated_files = 0
    check = inp["check_files"]
    if check is None:  # auto: local shards only (a header walk seeks once per record: slow on remote storage)
      check = not any("://" in f for f in self.files)
    if self.is_records and check:
      self.truncated_files = sum(sources_lib.scan_shard(f).truncated for f in self.files)
    self.group_key_dtype = grouping.key_dtype(self.group, self.source.files) if self.group else None
    self.host_seed = _host_seed(self.seed, file_host)
    self.options = tf.data.Options()
    self.options.deterministic = True
    if inp["threads"]:
      self.options.threading.private_threadpool_size = int(inp["threads"])
      self.options.threading.max_intra_op_parallelism = 1

  # -- one example ------------------------------------------------------------------------------------------------

  def raw(self, payload) -> dict[str, tf.Tensor]:
    if self.is_records:
      return sources_lib.parse_example(payload, extra_context=self.extra_context)
    return dict(payload)

  def _preprocess(self, payload, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    data = self.raw(payload)
    data["_seed"] = seed
    out = self.pp(data)
    return {k: v for k, v in out.items() if not k.startswith("_")}

  def process(self, elem: dict) -> dict[str, tf.Tensor]:
    """{'payload', '_epoch', '_pos'} -> preprocessed example with the private keys."""
    seed = _example_seed(self.host_seed, elem["_epoch"], elem["_pos"])
    if self.group is None:
      out = self._preprocess(elem["payload"], seed)
    else:  # payload [K]: record k draws from the example seed folded with k
      out = grouping.stack_examples([
          self._preprocess(elem["payload"][k], tf.random.experimental.stateless_fold_in(seed, k))
          for k in range(self.group.size)], elem["_real"])
    out.update(_seed=seed, _epoch=tf.cast(elem["_epoch"], tf.int64), _pos=tf.cast(elem["_pos"], tf.int64))
    for key in ("_end_epoch", "_end_pos", *self.carried):  # 'examples' split: end of the global batch; counts
      if key in elem:
        out[key] = tf.cast(elem[key], tf.int64)
    return out

  def element(self, payload, epoch, pos) -> dict[str, tf.Tensor]:
    """What the stream holds at `pos` (a record's or a group's dict; a decoded example of a non-record source)
    -> the element `process` reads."""
    if not self.is_records:
      return {"payload": payload, "_epoch": epoch, "_pos": pos}
    return {**payload, "_epoch": epoch, "_pos": pos}

  def eager_check(self) -> None:
    """Layout check and an eager pp dry run on the first records (errors surface before training)."""
    n = int(self.inp["eager_check"])
    if not n:
      return
    if self.is_records:
      if not self.files:  # an eval host with no shard: it only pads
        return
      zero = tf.constant(0, tf.int64)
      payloads = [{"payload": tf.constant(r), **{k: zero for k in framing.COUNTS}}
                  for r in sources_lib.check_records(self.files, n, extra_context=self.extra_context)]
      if self.group is not None:  # the first complete groups of the first shard
        groups = self._group_file(framing.dataset(self.files[0]))
        payloads = list(groups.filter(lambda g: g["_valid"]).take(n))
    else:
      payloads = list(self.source.load_examples(self.process_index, self.process_count).take(n))
    unit = "record" if self.group is None else "group"
    for i, p in enumerate(payloads):
      try:
        self.process(self.element(p, tf.constant(0, tf.int64), tf.constant(i, tf.int64)))
      except Exception as e:
        where = self.files[0] if self.files else self.source.name
        raise _with_message(e, f"Preprocessing {unit} {i} of {where} failed before training: "
                               f"{getattr(e, 'message', None) or e}") from e

  def _processed(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Elements {'payload', '_epoch', '_pos'} -> valid processed examples with `_skipped` counts."""
    par = int(self.inp["num_parallel_calls"])
    par = tf.data.AUTOTUNE if par < 0 else par
    if not self.inp["skip_errors"]:
      return ds.map(_no_autograph(lambda e: {**self.process(e), "_skipped": tf.constant(0, tf.int64)}),
                    num_parallel_calls=par, deterministic=True)
    spec_holder = {}

    @_no_autograph
    def safe(elem):
      # One-element dataset per record: ignore_errors drops it on any error, the placeholder then fills in.
      inner = tf.data.Dataset.from_tensors(elem).map(_no_autograph(self.process)).ignore_errors()
      spec_holder["spec"] = inner.element_spec
      # Zero-size placeholders (every dim 0) cost nothing to build, unlike a full-size zero clip per record;
      # the real static shapes are restored after the filter.
      zeros = tf.nest.map_structure(lambda s: tf.zeros([0] * s.shape.rank, s.dtype), inner.element_spec)
      zeros.update({k: tf.cast(elem[k], tf.int64) for k in self.carried})  # a skipped group keeps its counts
      ok = inner.map(lambda d: (d, tf.constant(True)))
      return ok.concatenate(tf.data.Dataset.from_tensors((zeros, tf.constant(False)))).take(1)

    ds = ds.interleave(safe, cycle_length=par, block_length=1, num_parallel_calls=par, deterministic=True)

    max_bad = int(self.inp["max_consecutive_errors"])

    carried = self.carried

    @_no_autograph
    def count(state, elem):
      n_bad, acc = state
      d, valid = elem
      d = dict(d)
      # Fail instead of spinning forever when (nearly) every record is bad, e.g. a pp that fails on all of them.
      check = tf.debugging.assert_less(n_bad, tf.constant(max_bad, tf.int64), message=(
          f"{max_bad} records in a row failed to parse or preprocess (input.max_consecutive_errors); "
          "run with input.skip_errors=False to see the first error"))
      with tf.control_dependencies([check]):
        valid = tf.identity(valid)
      zero = tf.constant(0, tf.int64)
      d["_skipped"] = tf.where(valid, n_bad, zero)
      total = tuple(a + d[k] for a, k in zip(acc, carried))  # counts of the skipped ones go to the next example
      d.update({k: tf.where(valid, t, zero) for k, t in zip(carried, total)})
      return (tf.where(valid, zero, n_bad + 1), tuple(tf.where(valid, zero, t) for t in total)), (d, valid)

    @_no_autograph
    def is_valid(d, valid):
      del d
      return valid

    @_no_autograph
    def drop_flag(d, valid):
      del valid
      return d

    init = (tf.constant(0, tf.int64), tuple(tf.constant(0, tf.int64) for _ in carried))
    ds = ds.scan(init, count).filter(is_valid).map(drop_flag)
    # The placeholder's zero-size dims made the element shapes unknown: restore the real static shapes.
    spec = spec_holder["spec"]
    return ds.map(_no_autograph(
        lambda d: {k: (tf.ensure_shape(v, spec[k].shape) if k in spec else v) for k, v in d.items()}))

  # -- record streams ---------------------------------------------------------------------------------------------

  def _group_file(self, records: tf.data.Dataset) -> tf.data.Dataset:
    return grouping.group_records(records, self.group, self.group_key_dtype)

  def _read(self, files: tf.data.Dataset, cycle: int) -> tf.data.Dataset:
    """The records of `files`, `cycle` files at a time; with input.group, each file's groups (before the
    interleave, so a group holds consecutive records of one shard)."""
    def read(f):
      # Record-level recovery: a damaged record is skipped and counted, the rest of its shard is read.
      records = framing.dataset(f)
      return records if self.group is None else self._group_file(records)

    return files.interleave(read, cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
                            deterministic=True)

  def _without_count_only(self, ds: tf.data.Dataset, carry: bool = True) -> tf.data.Dataset:
    """The count-only elements removed (the reader's: losses at the end of a shard; with input.group, the
    grouping stage's), their counts moved onto the next element (`carry`; eval with input.group takes its
    counts from the counting pass instead, see `_count_groups_per_host`)."""
    if not self.is_records:
      return ds
    if self.group is None:
      return _carry_count_only(ds, int(self.inp["max_consecutive_errors"]))
    if not carry:
      valid = ds.filter(_no_autograph(lambda e: e["_valid"]))
      return valid.map(_no_autograph(lambda e: {k: v for k, v in e.items() if k != "_valid"}))
    return grouping.carry_counts(ds, int(self.inp["max_consecutive_errors"]), self.group.size)

  def _payloads(self) -> tf.data.Dataset:
    """The host's records (or decoded examples) in a fixed order, for one pass."""
    if self.is_records:
      cycle = max(1, min(int(self.inp["cycle_length"]), len(self.files)))
      return self._read(tf.data.Dataset.from_tensor_slices(tf.constant(self.files, tf.string)), cycle)
    return self.source.load_examples(self.process_index, self.process_count)

  def train_stream(self, start_epoch: int, start_pos: int) -> tf.data.Dataset:
    files = tf.constant(self.files or [""])
    n_files = len(self.files)
    cycle = max(1, min(int(self.inp["cycle_length"]), max(n_files, 1)))
    buf = int(self.inp["shuffle_buffer"])
    # Cached records (or a non-record source's examples) come in a fixed order; the shuffle buffer mixes them.
    fixed = None
    if self.inp["cache"]:
      fixed = self._payloads().cache()
    elif not self.is_records:
      fixed = self._payloads()

    @_no_autograph
    def epoch_stream(epoch):
      eseed = tf.random.experimental.stateless_fold_in(self.host_seed, epoch)
      if fixed is not None:
        ds = fixed
      else:
        order = tf.random.experimental.stateless_shuffle(tf.range(n_files), seed=eseed)
        ds = self._read(tf.data.Dataset.from_tensor_slices(tf.gather(files, order)), cycle)
      if buf > 1:
        ds = ds.shuffle(buf, seed=tf.math.abs(eseed[0]) + 1, reshuffle_each_iteration=False)
      ds = ds.enumerate().skip(tf.where(epoch == start_epoch, tf.constant(start_pos, tf.int64), 0))
      return ds.map(lambda pos, p: self.element(p, epoch, pos))

    ds = self._without_count_only(tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_stream))
    if self.split_examples:
      # Group the (cheap, serialized) records into global batches and keep this host's rows [lo, lo + batch).
      # Every row remembers where its global batch ends: that is where any host resumes, so all hosts stay
      # aligned on global batches across restarts and epoch boundaries.
      g, lo, n = self.batch * self.process_count, self.batch * self.process_index, self.batch

      def host_rows(b):
        out = {k: v[lo:lo + n] for k, v in b.items()}
        out["_end_epoch"] = tf.fill([n], b["_epoch"][-1])
        out["_end_pos"] = tf.fill([n], b["_pos"][-1])
        return out

      ds = ds.batch(g, drop_remainder=True).map(_no_autograph(host_rows)).unbatch()
    return ds

  def finish_train(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    ds = self._processed(ds).batch(self.batch, drop_remainder=True)
    ds = ds.map(_no_autograph(self._batch_ops))
    return ds.prefetch(int(self.inp["prefetch"])).with_options(self.options)

  def _batch_ops(self, batch):
    if not getattr(self.batch_pp, "ops", None):
      return batch
    private = {k: batch[k] for k in _PRIVATE if k in batch}
    data = {k: v for k, v in batch.items() if k not in private}
    data["_seed"] = tf.random.experimental.stateless_fold_in(batch["_seed"][0], _BATCH_SALT)
    out = self.batch_pp(data)
    out.pop("_seed", None)
    return {**out, **private}


def _carry_count_only(ds: tf.data.Dataset, max_in_row: int) -> tf.data.Dataset:
  """Removes the reader's count-only elements, adding their counts to the next element's; drops the flag.

  Runs on the whole (multi-epoch) stream, so no count is lost at an epoch's end; fails (instead of searching
  forever) when `max_in_row` come in a row (no shard has a readable record).
  """
  keys = tuple(framing.COUNTS)

  @_no_autograph
  def step(state, e):
    in_row, acc = state
    e = dict(e)
    only = e.pop(framing.COUNT_ONLY)
    check = tf.debugging.assert_less(in_row, tf.constant(max_in_row, tf.int64), message=(
        f"{max_in_row} record files in a row hold no readable record (input.max_consecutive_errors); see "
        "skipped['corrupt_records'] and skipped['skipped_bytes']"))
    with tf.control_dependencies([check]):
      only = tf.identity(only)
    total = tuple(a + e[k] for a, k in zip(acc, keys))
    zero = tf.constant(0, tf.int64)
    for k, t in zip(keys, total):
      e[k] = tf.where(only, zero, t)
    new_acc = tuple(tf.where(only, t, zero) for t in total)
    return (tf.where(only, in_row + 1, zero), new_acc), (e, tf.logical_not(only))

  zeros = tuple(tf.constant(0, tf.int64) for _ in keys)
  ds = ds.scan((tf.constant(0, tf.int64), zeros), step)
  return ds.filter(_no_autograph(lambda e, keep: keep)).map(_no_autograph(lambda e, keep: e))


def _with_message(e: Exception, message: str) -> Exception:
  """`e`'s type with `message` (TensorFlow's errors take (node_def, op, message); others one argument)."""
  if isinstance(e, tf.errors.OpError):
    return type(e)(e.node_def, e.op, message)
  try:
    return type(e)(message)
  except Exception:  # pylint: disable=broad-except  (an exception type with another constructor)
    return RuntimeError(message)


# ----------------------------------------------------------------------------------------------------------------
# Training iterator.


class DataIterator:
  """Infinite iterator of per-host training batches (dicts of numpy arrays) with a resumable position.

  Attributes:
    skipped: {'corrupt': records skipped because parsing / decoding / pp failed (in consumed batches),
              'corrupt_records': records lost to framing damage (a payload failing its CRC, a damaged length
                                 header, a truncated tail) in front of the consumed examples,
              'skipped_bytes': the bytes those occupied,
              'truncated_files': host shards that end inside a record (from the header walk at start),
              and with input.group the grouping counts}.
    batches: batches handed out since this iterator was created.
  """

  def __init__(self, dataset: tf.data.Dataset, *, seed: int, epoch: int, position: int, process_index: int,
               process_count: int, skipped: Mapping[str, int] | None = None):
    self._ds = dataset
    self._it = None
    self.seed, self.epoch, self.position = seed, epoch, position
    self.process_index, self.process_count = process_index, process_count
    self.skipped = {"corrupt": 0, "truncated_files": 0, **(skipped or {})}
    if any(k in dataset.element_spec for k in _COUNTS):
      self.skipped = {**{name: 0 for k, name in _COUNTS.items() if k in dataset.element_spec}, **self.skipped}
    self.batches = 0

  @property
  def element_spec(self):
    return {k: v for k, v in self._ds.element_spec.items() if k not in _PRIVATE}

  def __iter__(self) -> "DataIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._ds.as_numpy_iterator()
    batch = next(self._it)
    epochs, positions = batch.pop("_epoch"), batch.pop("_pos")
    if "_end_epoch" in batch:  # host_split='examples': resume after the whole global batch
      epochs, positions = batch.pop("_end_epoch"), batch.pop("_end_pos")
    self.skipped["corrupt"] += int(batch.pop("_skipped").sum())
    _count_groups(batch, self.skipped)
    batch.pop("_seed", None)
    # Examples leave the pipeline in (epoch, position) order: the last one is where to resume after.
    self.epoch, self.position = int(epochs[-1]), int(positions[-1]) + 1
    self.batches += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """Small JSON-serialisable state; `make_train_iterator(..., state=it.get_state())` continues after it."""
    return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
            "process_index": self.process_index, "process_count": self.process_count,
            "skipped": dict(self.skipped)}


def _count_groups(batch: dict[str, np.ndarray], skipped: dict[str, int]) -> None:
  """Moves the grouping stage's per-example counts out of `batch` into `skipped`."""
  for key, name in _COUNTS.items():
    if key in batch:
      skipped[name] = skipped.get(name, 0) + int(batch.pop(key).sum())


def make_train_iterator(config, *, process_index: int, process_count: int,
                        state: Mapping[str, Any] | None = None) -> DataIterator:
  """Infinite, shuffled, augmented, batched (drop_remainder) and prefetched per-host training batches.

  Args:
    config: the full config; reads `config.seed` and `config.input` (module docstring).
    process_index, process_count: this host and the number of hosts.
    state: a previous `DataIterator.get_state()`; the iterator continues with the next batch.

  Returns:
    A `DataIterator`.
  """
  if config.input.get("mixture", None) is not None:
    raise ValueError("config.input.mixture is set: build the iterator with vlm.data.inputs.make_train_iterator "
                     "(vlm.data.pipeline reads one dataset).")
  inp = input_config(config)
  b = _Builder(config, inp, process_index, process_count, train=True)
  epoch, position, skipped = 0, 0, {}
  if state:
    epoch, position = int(state.get("epoch", 0)), int(state.get("position", 0))
    skipped = dict(state.get("skipped") or {})
    if int(state.get("seed", b.seed)) != b.seed:
      logging.warning("Data state was saved with seed %s, config has %s: augmentation and order will differ.",
                      state.get("seed"), b.seed)
    if int(state.get("process_count", process_count)) != process_count:
      logging.warning("Data state was saved with %s hosts, now %s: restarting epoch %d from its start.",
                      state.get("process_count"), process_count, epoch)
      position = 0
  b.eager_check()
  ds = b.finish_train(b.train_stream(epoch, position))
  skipped["truncated_files"] = b.truncated_files
  return DataIterator(ds, seed=b.seed, epoch=epoch, position=position, process_index=process_index,
                      process_count=process_count, skipped=skipped)


# ----------------------------------------------------------------------------------------------------------------
# Eval iterator.


class EvalIterable:
  """Finite, re-iterable per-host eval batches; every host yields `num_batches` batches with `_mask`."""

  def __init__(self, dataset: tf.data.Dataset, num_batches: int, num_examples: int,
               group_counts: Mapping[str, int] | None = None):
    self._ds = dataset
    self.num_batches = num_batches
    self.num_examples = num_examples  # examples on this host (before skipping invalid ones)
    self._group_counts = dict(group_counts or {})  # with input.group: the counting pass's (whole host split)
    self._reader = not self._group_counts and any(k in dataset.element_spec for k in framing.COUNTS)
    self.skipped = self._fresh()

  def __len__(self) -> int:
    return self.num_batches

  def _fresh(self) -> dict[str, int]:
    return {"corrupt": 0, **({name: 0 for name in framing.COUNTS.values()} if self._reader else {}),
            **self._group_counts}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    self.skipped = self._fresh()
    for batch in self._ds.as_numpy_iterator():
      self.skipped["corrupt"] += int(batch.pop("_skipped").sum())
      if self._reader:  # without input.group the batches carry the reader's counts
        for k, name in framing.COUNTS.items():
          self.skipped[name] += int(batch.pop(k).sum())
      for k in ("_seed", "_epoch", "_pos", *_COUNTS):
        batch.pop(k, None)
      yield batch


def _count_groups_per_host(b: _Builder) -> tuple[list[int], dict[str, int]]:
  """(groups per host for all hosts, this host's grouping counts): one pass over the records, keys only."""
  keys = tuple(_COUNTS)  # the grouping stage's counts and the reader's
  counts, mine = [], {name: 0 for name in _COUNTS.values()}
  for h in range(b.process_count):
    files = sources_lib.host_files(b.source.files, h, b.process_count, allow_empty=True)
    if not files:
      counts.append(0)
      continue
    groups = b._read(tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)), 1)
    totals = groups.reduce((np.int64(0),) + (np.int64(0),) * len(keys), lambda c, g: (
        c[0] + tf.cast(g["_valid"], tf.int64),) + tuple(a + g[k] for a, k in zip(c[1:], keys)))
    counts.append(int(totals[0]))
    if h == b.process_index:
      mine = {_COUNTS[k]: int(t) for k, t in zip(keys, totals[1:])}
  return counts, mine


def _count_examples(b: _Builder, inp: Mapping[str, Any]) -> list[int]:
  """Records per host, for all hosts (each host computes all counts, so no communication is needed)."""
  if b.is_records:
    counts = []
    for h in range(b.process_count):
      files = sources_lib.host_files(b.source.files, h, b.process_count, allow_empty=True)
      counts.append(sum(sources_lib.scan_shard(f).num_records for f in files))
    return counts
  counts = []
  for h in range(b.process_count):
    ds = b.source.load_examples(h, b.process_count)
    n = int(ds.cardinality())
    if n < 0:  # Unknown: count by iterating (decodes the split once).
      n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    counts.append(n)
  return counts


def make_eval_iterator(config, eval_input, *, process_index: int, process_count: int) -> EvalIterable:
  """Finite, ordered per-host eval batches padded with `_mask` = 0 examples so all hosts run the same steps.

  Args:
    config: the full config (`config.seed`, `config.input`).
    eval_input: overrides of config.input fields (split via `data`, pp, batch_size, ...).
    process_index, process_count: this host and the number of hosts.
  """
  inp = input_config(config, eval_input)
  inp["check_files"] = True  # the header walk gives the record counts
  b = _Builder(config, inp, process_index, process_count, train=False)
  b.eager_check()
  group_counts = None
  if b.group is not None:
    counts, group_counts = _count_groups_per_host(b)
  else:
    counts = _count_examples(b, inp)
  num_batches = math.ceil(max(counts) / b.batch) if counts else 0
  ds = b._payloads().enumerate().map(lambda pos, p: b.element(p, tf.constant(0, tf.int64), pos))
  ds = b._processed(b._without_count_only(ds, carry=b.group is None))
  ds = ds.map(lambda d: {**d, "_mask": tf.constant(1.0, tf.float32)})
  spec = ds.element_spec
  unknown = [k for k, s in spec.items() if not s.shape.is_fully_defined()]
  if unknown:
    raise ValueError(f"Eval pp must give static shapes for padding; unknown for {unknown}: "
                     f"{ {k: spec[k].shape for k in unknown} }.")
  pad = {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}
  pad["_mask"] = tf.constant(0.0, tf.float32)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.batch(b.batch, drop_remainder=True).take(num_batches)
  ds = ds.prefetch(int(inp["prefetch"])).with_options(b.options)
  return EvalIterable(ds, num_batches, counts[process_index] if counts else 0, group_counts)
