"""Data-side reliability: record-level recovery from damaged shards, early and clear input errors."""
import json
import os
import struct

import ml_collections
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vlm.data import bench  # pylint: disable=g-import-not-at-top
from vlm.data import framing  # pylint: disable=g-import-not-at-top
from vlm.data import inputs  # pylint: disable=g-import-not-at-top
from vlm.data import pipeline  # pylint: disable=g-import-not-at-top
from vlm.data import records  # pylint: disable=g-import-not-at-top
from vlm.data import sources  # pylint: disable=g-import-not-at-top

PP = "sample_clip(2)|center_crop(8)|label|keep('video', 'label')"
N = 12


def _offsets(raw: bytes) -> list[int]:
  """Start offsets of the records of an intact TFRecord file (and its size at the end)."""
  out, pos = [], 0
  while pos < len(raw):
    out.append(pos)
    pos += 16 + struct.unpack("<Q", raw[pos:pos + 8])[0]
  return out + [pos]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
  """One intact shard of N records; record i has label i."""
  path = tmp_path_factory.mktemp("shard") / "clean.tfrecord"
  bench.write_synthetic_records(str(path), N, num_frames=3, height=8, width=8, audio=False, num_classes=N)
  raw = path.read_bytes()
  return raw, _offsets(raw)


def _damaged(tmp_path, raw, offs, kind):
  b = bytearray(raw)
  if kind == "payload":  # 4 flipped bytes inside record 3's payload
    for j in range(4):
      b[offs[3] + 40 + j] ^= 0xFF
  elif kind == "header":  # record 5's length header
    b[offs[5] + 2] ^= 0x5A
  elif kind == "truncated":  # the file ends inside record N-1
    b = b[:offs[N - 1] + 30]
  elif kind == "both":  # payload of 2, header of 6 and a truncated tail
    b[offs[2] + 50] ^= 1
    b[offs[6] + 9] ^= 1
    b = b[:offs[N - 1] + 20]
  path = tmp_path / f"{kind}.tfrecord"
  path.write_bytes(bytes(b))
  return str(path)


EXPECTED = {  # kind -> (labels read, corrupt_records, skipped bytes as a function of offsets, truncated)
    "payload": ([i for i in range(N) if i != 3], 1, lambda o: o[4] - o[3], False),
    "header": ([i for i in range(N) if i != 5], 1, lambda o: o[6] - o[5], False),
    "truncated": (list(range(N - 1)), 1, lambda o: 30, True),
    "both": ([i for i in range(N - 1) if i not in (2, 6)], 3, lambda o: o[3] - o[2] + o[7] - o[6] + 20, True),
}


def _labels(payloads):
  return [int(tf.train.SequenceExample.FromString(p).context.feature[records.LABEL_INDEX].int64_list.value[0])
          for p in payloads]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_reader_goes_on_past_damage_and_counts_it(shard, tmp_path, kind):
  raw, offs = shard
  path = _damaged(tmp_path, raw, offs, kind)
  labels, lost, skipped, truncated = EXPECTED[kind]
  # TensorFlow's own reader stops the shard at the first damaged record.
  tf_read = list(tf.data.TFRecordDataset(path).ignore_errors().as_numpy_iterator())
  assert len(tf_read) < len(labels) or kind == "truncated"  # (the tail: all but the lost record, uncounted)
  walked = list(framing.walk(path))
  assert _labels([r.payload for r in walked if r.payload is not None]) == labels
  assert sum(r.corrupt_records for r in walked) == lost and sum(r.skipped_bytes for r in walked) == skipped(offs)
  elems = list(framing.dataset(path).as_numpy_iterator())
  assert _labels([e["payload"] for e in elems if not e["_count_only"]]) == labels
  assert sum(int(e["_corrupt_records"]) for e in elems) == lost
  assert sum(int(e["_skipped_bytes"]) for e in elems) == skipped(offs)
  info = sources.scan_shard(path)  # the header walk resynchronises too (payloads are not checked there)
  assert info.truncated is truncated
  assert info.num_records == len(labels) + (kind in ("payload", "both"))


def test_pipeline_counts_damage_and_resumes_exactly(shard, tmp_path):
  raw, offs = shard
  path = _damaged(tmp_path, raw, offs, "both")
  cfg = ml_collections.ConfigDict(dict(seed=3, input=dict(
      data=dict(name="records", files=path), batch_size=3, shuffle_buffer=1, pp=PP, eager_check=1)))
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  first_epoch = [x for _ in range(3) for x in next(it)["label"].tolist()]
  assert first_epoch == EXPECTED["both"][0]  # every healthy record, the ones behind the damage included
  # Losses count with the next record consumed: the truncated tail's with epoch 1's first record.
  assert it.skipped["corrupt_records"] == 2 and it.skipped["truncated_files"] == 1
  next(it)
  assert it.skipped["corrupt_records"] == 3 + 1 and it.skipped["corrupt"] == 0  # + epoch 1's record 2
  assert it.skipped["skipped_bytes"] == EXPECTED["both"][2](offs) + offs[3] - offs[2]  # + epoch 1's record 2
  cfg.input.shuffle_buffer = 4
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  ref = [next(it) for _ in range(10)]
  ref_skipped = dict(it.skipped)
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = inputs.make_train_iterator(cfg, process_index=0, process_count=1, state=state)
  got = [next(resumed) for _ in range(5)]
  for a, b in zip(got, ref[5:]):
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["video"], b["video"])
  assert resumed.skipped == ref_skipped  # counts exact across the restart (damage counted in each epoch)
  assert ref_skipped["corrupt_records"] >= 6


def test_a_shard_with_no_readable_record_is_counted_not_fatal(shard, tmp_path):
  raw, offs = shard
  bad = bytearray(raw[:offs[1]])
  bad[20] ^= 1
  (tmp_path / "a-bad.tfrecord").write_bytes(bytes(bad))
  (tmp_path / "b-good.tfrecord").write_bytes(raw)
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=str(tmp_path / "b-good.tfrecord") + "," + str(tmp_path / "a-bad.tfrecord")),
      batch_size=4, shuffle_buffer=1, pp=PP, eager_check=1, cycle_length=1)))
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  for _ in range(4):
    next(it)
  assert it.skipped["corrupt_records"] == 1 and it.skipped["skipped_bytes"] == offs[1]


def test_eval_reads_past_damage(shard, tmp_path):
  raw, offs = shard
  path = _damaged(tmp_path, raw, offs, "payload")
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=path), batch_size=4, pp=PP, eager_check=1)))
  ev = inputs.make_eval_iterator(cfg, {}, process_index=0, process_count=1)
  batches = list(ev)
  got = [l for b in batches for l, m in zip(b["label"].tolist(), b["_mask"].tolist()) if m]
  assert got == EXPECTED["payload"][0]
  assert ev.skipped["corrupt_records"] == 1


def test_wrong_dtype_in_the_first_record_names_key_type_and_file(tmp_path):
  ex = records.make_sequence_example(jpeg_frames=bench.encode_jpegs(bench.synthetic_frames(3, 8, 8)), fps=10.0,
                                     label_index=[0])
  ex.context.feature[records.FPS].Clear()
  ex.context.feature[records.FPS].int64_list.value.append(10)
  path = str(tmp_path / "dtype.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    w.write(ex.SerializeToString())
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=path), batch_size=1, pp=PP)))
  with pytest.raises(sources.LayoutError, match=r"dtype.tfrecord record 0: context feature 'video/fps' has type "
                                                r"int64 \(int64_list\), expected float"):
    inputs.make_train_iterator(cfg, process_index=0, process_count=1)


def test_eager_check_keeps_tensorflows_error_and_message(shard, tmp_path, monkeypatch):
  raw, _ = shard
  (tmp_path / "ok.tfrecord").write_bytes(raw)

  def fails(self, elem):
    raise tf.errors.InvalidArgumentError(None, None, "Key: video/fps. Data types don't match.")

  # TensorFlow's errors take (node_def, op, message): re-raising with one argument was a TypeError.
  monkeypatch.setattr(pipeline._Builder, "process", fails)  # pylint: disable=protected-access
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=str(tmp_path / "ok.tfrecord")), batch_size=1, eager_check=1, pp=PP)))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"record 0 of .*ok.tfrecord failed before training: Key: video/fps. Data types"):
    inputs.make_train_iterator(cfg, process_index=0, process_count=1)


def test_empty_glob_fails_in_the_early_check(tmp_path):
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=str(tmp_path / "nothing-*.tfrecord")), batch_size=1)))
  with pytest.raises(FileNotFoundError, match="nothing-"):
    inputs.check_input_config(cfg)
  cfg.input.data.files = str(tmp_path)  # a missing file
  ok = ml_collections.ConfigDict(dict(seed=0, input=dict(data=dict(name="builtin"), batch_size=1)))
  inputs.check_input_config(ok)  # built-in: nothing to check, nothing generated
  with pytest.raises(FileNotFoundError, match=r"evals.val.input.*nope"):
    inputs.check_input_config(ok, {"val": dict(data=dict(name="records", files=str(tmp_path / "nope*")))})
  mix = ml_collections.ConfigDict(dict(seed=0, input=dict(batch_size=1, mixture=dict(
      a=dict(weight=1.0, data=dict(name="records", files=str(tmp_path / "x-*")))))))
  with pytest.raises(FileNotFoundError, match=r"mixture\['a'\]"):
    inputs.check_input_config(mix)


def test_trainer_reports_an_empty_records_glob_before_building_the_state(tmp_path, monkeypatch):
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs/vatt/pretrain.py") + ":tiny")
  config.input.data = dict(name="records", split="train", files=str(tmp_path / "nothing-*.tfrecord"))
  monkeypatch.setattr(trainer, "setup_mesh", lambda *a: pytest.fail("the mesh was set up before the check"))
  with pytest.raises(FileNotFoundError, match="nothing-"):
    trainer.train_and_evaluate(config, str(tmp_path / "workdir"))
