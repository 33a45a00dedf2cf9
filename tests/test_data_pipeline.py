"""Train / eval iterators of vlm.data.pipeline: determinism, exact resume, error counting, host splits, padding."""
import json
import os

import ml_collections
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vlm.data import bench  # pylint: disable=g-import-not-at-top
from vlm.data import pipeline  # pylint: disable=g-import-not-at-top
from vlm.data import records  # pylint: disable=g-import-not-at-top
from vlm.data import sources  # pylint: disable=g-import-not-at-top

# Iteration mechanics need no text ops: a lighter spec builds faster.
LIGHT_PP = "sample_clip(4, stride=2)|random_resized_crop(8)|flip|label|keep('video', 'label', 'frame_index')"
TRAIN_PP = ("sample_clip(4, stride=2, audio_samples=800)|random_resized_crop(16)|flip|color_jitter|"
            "normalize(-1, 1)|audio_noise|sample_captions(2)|tokenize(5)|label|onehot(5)|"
            "keep('video', 'audio', 'audio_mask', 'text', 'text_mask', 'label', 'labels', 'frame_index')")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("records")
  for s in range(3):
    bench.write_synthetic_records(str(d / f"train-{s}.tfrecord"), 6, num_frames=10, height=20, width=24,
                                  seed=s)
  (d / "vocab.txt").write_text("[PAD]\n[UNK]\na\nred\nball\nmoves\nleft\nthe\nblue\nbox\n")
  return d


def make_config(data_dir, **input_overrides):
  inp = dict(data=dict(name="records", files=str(data_dir / "train-*.tfrecord")), batch_size=4,
             shuffle_buffer=8, pp=TRAIN_PP, tokenizer=dict(kind="words", vocab_file=str(data_dir / "vocab.txt")),
             eager_check=0, cycle_length=2)
  inp.update(input_overrides)
  return ml_collections.ConfigDict(dict(seed=5, input=inp))


def assert_batches_equal(a, b):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_keys_shapes_and_dtypes(data_dir):
  it = pipeline.make_train_iterator(make_config(data_dir, eager_check=2), process_index=0, process_count=1)
  b = next(it)
  shapes = {k: (v.shape, v.dtype.name) for k, v in b.items()}
  assert shapes == {
      "video": ((4, 4, 16, 16, 3), "float32"), "audio": ((4, 800), "float32"), "audio_mask": ((4,), "float32"),
      "text": ((4, 2, 5), "int32"), "text_mask": ((4, 2, 5), "int32"), "label": ((4,), "int32"),
      "labels": ((4, 5), "float32"), "frame_index": ((4, 4), "int32")}
  assert -1 <= b["video"].min() and b["video"].max() <= 1 and np.all(b["audio_mask"] == 1)
  assert np.all(np.diff(b["frame_index"], axis=1) == 2)
  np.testing.assert_array_equal(b["labels"].argmax(-1), b["label"])


def test_same_seed_same_batches_and_exact_resume(data_dir):
  cfg = make_config(data_dir, pp=LIGHT_PP)
  ref = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  # 18 records / 4 per batch: batches 4 and 5 straddle the epoch boundary.
  expected = [next(ref) for _ in range(7)]
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  states = {}
  for n in range(6):
    assert_batches_equal(next(it), expected[n])  # same seed, same batches
    states[n + 1] = json.loads(json.dumps(it.get_state()))  # small and JSON-serialisable
  for n in (4, 5):  # right before the batch that straddles the epoch boundary, and right after it
    resumed = pipeline.make_train_iterator(cfg, process_index=0, process_count=1, state=states[n])
    assert_batches_equal(next(resumed), expected[n])
    assert_batches_equal(next(resumed), expected[n + 1])
  state = states[5]
  assert set(state) >= {"seed", "epoch", "position"} and state["epoch"] == 1
  # Epoch 1 reshuffles: its first batch differs from epoch 0's; another seed gives other batches.
  assert not np.array_equal(expected[5]["label"], expected[0]["label"]) or not np.array_equal(
      expected[5]["frame_index"], expected[0]["frame_index"])
  cfg.seed = 6
  other = next(pipeline.make_train_iterator(cfg, process_index=0, process_count=1))
  assert not np.array_equal(other["video"], expected[0]["video"])


def _write_mixed(path, n_good=6, bad_at=(1, 3, 4)):
  """n_good good records with 3 bad ones interleaved: a corrupt JPEG frame, garbage bytes, a multi-JPEG entry."""
  good = [records.make_sequence_example(
      jpeg_frames=bench.encode_jpegs(bench.synthetic_frames(6, 16, 16, seed=i)), fps=10.0, label_index=[i],
      captions=["a ball"]).SerializeToString() for i in range(n_good)]
  jpegs = bench.encode_jpegs(bench.synthetic_frames(6, 16, 16))
  corrupt = records.make_sequence_example(
      jpeg_frames=jpegs[:3] + [jpegs[3][:40] + b"\x00" * 20] + jpegs[4:], fps=10.0).SerializeToString()
  multi = tf.train.SequenceExample()
  multi.feature_lists.feature_list[records.IMAGE].feature.add().bytes_list.value.extend(jpegs)
  bad = [corrupt, b"\x08\x96\x01 not a proto", multi.SerializeToString()]
  out, it_bad = [], iter(bad)
  for i in range(n_good + len(bad)):
    out.append(next(it_bad) if i in bad_at else good.pop(0))
  with tf.io.TFRecordWriter(str(path)) as w:
    for r in out:
      w.write(r)


def test_corrupt_records_are_counted_and_skipped(tmp_path):
  _write_mixed(tmp_path / "mixed.tfrecord")
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=str(tmp_path / "mixed.tfrecord")), batch_size=2, shuffle_buffer=1,
      eager_check=1, pp="sample_clip(4)|center_crop(8)|label|keep('video', 'label')")))
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  labels = [next(it)["label"].tolist() for _ in range(3)]
  assert labels == [[0, 1], [2, 3], [4, 5]]  # the good records, in order
  assert it.skipped == {"corrupt": 3, "corrupt_records": 0, "skipped_bytes": 0, "truncated_files": 0}
  next(it)
  assert it.get_state()["skipped"]["corrupt"] == 4  # epoch 1's first batch skipped the bad record at position 1
  cfg.input.max_consecutive_errors = 2  # records 3 and 4 are bad in a row
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match="2 records in a row failed"):
    for _ in range(3):
      next(it)
  cfg.input.skip_errors = False
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  with pytest.raises(tf.errors.InvalidArgumentError):
    for _ in range(3):
      next(it)


def test_truncated_file_is_counted_and_its_records_used(data_dir, tmp_path):
  raw = (data_dir / "train-0.tfrecord").read_bytes()
  (tmp_path / "t.tfrecord").write_bytes(raw[:-100])
  info = sources.scan_shard(str(tmp_path / "t.tfrecord"))
  assert (info.num_records, info.truncated) == (5, True)
  assert sources.scan_shard(str(data_dir / "train-0.tfrecord")).truncated is False
  cfg = make_config(data_dir, data=dict(name="records", files=str(tmp_path / "t.tfrecord")), batch_size=5,
                    shuffle_buffer=1)
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(it)["label"], [0, 1, 2, 3, 4])
  assert it.skipped["truncated_files"] == 1


def test_layout_errors_fail_before_training(tmp_path):
  jpegs = bench.encode_jpegs(bench.synthetic_frames(3, 8, 8))
  ex = tf.train.SequenceExample()
  ex.feature_lists.feature_list[records.IMAGE].feature.add().bytes_list.value.extend(jpegs)
  with tf.io.TFRecordWriter(str(tmp_path / "bad.tfrecord")) as w:
    w.write(ex.SerializeToString())
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="records", files=str(tmp_path / "bad.tfrecord")), batch_size=1, pp="sample_clip(2)")))
  with pytest.raises(sources.LayoutError, match=r"'image/encoded' entry 0 holds 3 values"):
    pipeline.make_train_iterator(cfg, process_index=0, process_count=1)


def test_eager_check_reports_pp_errors_early(data_dir):
  cfg = make_config(data_dir, eager_check=1, pp="sample_clip(4)|keep('nope')|normalize")
  with pytest.raises(KeyError, match="before training"):
    pipeline.make_train_iterator(cfg, process_index=0, process_count=1)


def test_host_split_and_batch_errors(data_dir):
  files = [f"f{i}" for i in range(5)]
  assert sources.host_files(files, 1, 2) == ["f1", "f3"]
  with pytest.raises(ValueError, match="5 record files cannot be split over 8 hosts"):
    sources.host_files(files, 0, 8)
  with pytest.raises(ValueError, match="Global batch size 4 is not divisible by the process count 3"):
    pipeline.make_train_iterator(make_config(data_dir, pp=LIGHT_PP), process_index=0, process_count=3)
  # Two hosts read disjoint files and draw different augmentations.
  cfg = make_config(data_dir, batch_size=4, shuffle_buffer=1, pp=LIGHT_PP)
  b0 = next(pipeline.make_train_iterator(cfg, process_index=0, process_count=2))
  b1 = next(pipeline.make_train_iterator(cfg, process_index=1, process_count=2))
  assert b0["video"].shape[0] == b1["video"].shape[0] == 2
  assert not np.array_equal(b0["video"], b1["video"])


def test_eval_pads_so_hosts_run_the_same_number_of_batches(data_dir):
  cfg = make_config(data_dir)
  eval_input = dict(batch_size=4, pp="sample_multiclip(2, 3)|three_crop(8)|normalize(-1, 1)|label|"
                                     "keep('video', 'label', 'filename')")
  seen, lengths = [], []
  for host in range(2):
    ev = pipeline.make_eval_iterator(cfg, eval_input, process_index=host, process_count=2)
    batches = list(ev)
    assert len(batches) == len(ev) == 6  # host 0 reads 2 files (12 records) = 6 batches of 2
    lengths.append(sum(int(b["_mask"].sum()) for b in batches))
    for b in batches:
      assert b["video"].shape == (2, 6, 3, 8, 8, 3) and b["_mask"].dtype == np.float32
      seen += [f for f, m in zip(b["filename"], b["_mask"]) if m]
      assert np.all(b["video"][b["_mask"] == 0] == 0)
    assert list(ev)[0]["label"].tolist() == batches[0]["label"].tolist()  # re-iterable, same order
  assert lengths == [12, 6] and len(seen) == 18 and len(set((f, l) for f, l in zip(seen, range(18)))) == 18
  # More hosts than files: the host without a file yields padding only, as many batches as the others.
  ev = pipeline.make_eval_iterator(cfg, eval_input, process_index=3, process_count=4)
  assert len(ev) == 6 and all(b["_mask"].sum() == 0 for b in ev)  # 6 records per file, 1 per host batch


def test_batch_pp_mixup(data_dir):
  cfg = make_config(data_dir, batch_pp="mixup(alpha=5.0)", pp="sample_clip(2)|center_crop(8)|onehot(5)|"
                    "keep('video', 'labels')")
  b = next(pipeline.make_train_iterator(cfg, process_index=0, process_count=1))
  np.testing.assert_allclose(b["labels"].sum(-1), 1.0, rtol=1e-5)
  assert b["mixup_lam"].shape == (4,) and 0 < b["mixup_lam"][0] < 1


def test_default_pp_from_config_fields(data_dir):
  cfg = make_config(data_dir, pp=None, num_frames=4, fps=5.0, crop_size=16, audio_samples=400, num_captions=2,
                    max_text_len=6, num_classes=5)
  spec = pipeline.default_pp(pipeline.input_config(cfg), train=True)
  assert spec.startswith("sample_clip(4, fps=5.0, audio_samples=400)|random_resized_crop(16)|flip|color_jitter")
  b = next(pipeline.make_train_iterator(cfg, process_index=0, process_count=1))
  assert b["video"].shape == (4, 4, 16, 16, 3) and b["text"].shape == (4, 2, 6) and b["labels"].shape == (4, 5)
  assert b["audio"].shape == (4, 400)
  ev = pipeline.make_eval_iterator(cfg, dict(num_clips=2, num_crops=3, batch_size=2), process_index=0,
                                   process_count=1)
  e = next(iter(ev))
  assert e["video"].shape == (2, 6, 4, 16, 16, 3) and e["audio"].shape == (2, 2, 400)
  assert e["text"].shape == (2, 2, 6) and e["_mask"].tolist() == [1, 1]


def test_cache_keeps_records_in_memory_after_the_first_epoch(data_dir, tmp_path):
  for f in data_dir.glob("train-*.tfrecord"):
    (tmp_path / f.name).write_bytes(f.read_bytes())
  cfg = make_config(data_dir, cache=True, shuffle_buffer=18, pp="sample_clip(2)|center_crop(8)|label|"
                    "keep('video', 'label')", data=dict(name="records", files=str(tmp_path / "train-*.tfrecord")))
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  first = [next(it)["label"] for _ in range(6)]  # past the end of epoch 0: the cache is complete
  for f in tmp_path.glob("train-*.tfrecord"):
    f.unlink()
  epoch_labels = np.concatenate(first + [next(it)["label"] for _ in range(8)])
  assert it.get_state()["epoch"] == 3
  # Every epoch is a permutation of the 18 records (labels i % 5 of 6 records per file).
  np.testing.assert_array_equal(np.sort(epoch_labels[18:36]), np.sort(epoch_labels[:18]))


def test_builtin_source_with_default_pp(tmp_path):
  builtin = pytest.importorskip("vlm.data.builtin")
  options = dict(data_dir=str(tmp_path), num_train=8, num_test=4, num_images=2, num_frames=8, size=32,
                 num_shards=2, sample_rate=8000, episode_len=2)
  ds = builtin.ensure_builtin(**options)
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="builtin", split="train", options=options), batch_size=4, num_frames=4, fps=5.0,
      crop_size=16, max_text_len=8, num_captions=2, audio_samples=6400, eager_check=1)))
  b = next(pipeline.make_train_iterator(cfg, process_index=0, process_count=2))
  assert b["video"].shape == (2, 4, 16, 16, 3) and b["audio"].shape == (2, 6400)
  assert b["text"].shape == (2, 2, 8) and b["text_mask"][:, 0].sum() > 0  # the dataset's own vocab
  assert b["labels"].shape == (2, len(ds.class_names))
  assert np.all(b["audio_mask"] == 1) and np.abs(b["audio"]).max() > 0


def test_tfds_source_adapter_jpeg_free_path(monkeypatch):
  from vlm.data import tfds_builder  # pylint: disable=g-import-not-at-top
  frames = (np.arange(10)[:, None, None, None] * np.ones([10, 12, 14, 3])).astype(np.uint8)
  calls = []

  def fake_load(name, split, *, data_dir=None, **kw):
    calls.append((name, str(split), data_dir, kw))
    ex = {"frames": frames, "label": np.int32(3), "audio": np.zeros([100], np.float32)}
    return tf.data.Dataset.from_tensors(ex).repeat(5)

  monkeypatch.setattr(tfds_builder, "load_tfds_video", fake_load)
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="tfds", dataset="fake_video", split="train", data_dir="/x", options=dict(download=False)),
      batch_size=2, shuffle_buffer=4, pp="sample_clip(4, stride=2)|random_resized_crop(8)|label|onehot(5)|"
      "keep('video', 'label', 'labels', 'audio_mask', 'frame_index')")))
  it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
  b = next(it)
  assert b["video"].shape == (2, 4, 8, 8, 3) and b["label"].tolist() == [3, 3]
  np.testing.assert_allclose(b["video"][:, :, 0, 0, 0] * 255, b["frame_index"], atol=1e-3)
  assert calls[0][:3] == ("fake_video", "train", "/x") and calls[0][3] == {"download": False}
  ev = pipeline.make_eval_iterator(cfg, dict(pp="sample_clip(4, random=False)|center_crop(8)|label|"
                                             "keep('video', 'label')"), process_index=0, process_count=1)
  assert len(ev) == 3 and sum(int(x["_mask"].sum()) for x in ev) == 5


def test_host_split_examples_gives_the_same_global_batches_for_any_process_count(tmp_path):
  """'examples': the concatenated per-host batches of 2 hosts equal the batches of 1 host."""
  files = []
  for shard in range(3):
    path = str(tmp_path / f"d-{shard}.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
      for i in range(10):
        frame = tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(shard * 10 + i, tf.uint8))).numpy()
        w.write(records.make_sequence_example(jpeg_frames=[frame] * 2, fps=10.0,
                                              label_index=[shard * 10 + i]).SerializeToString())
    files.append(path)
  config = ml_collections.ConfigDict(dict(seed=3, input=dict(
      data=dict(name="records", files=files), batch_size=4, shuffle_buffer=8, host_split="examples",
      pp="sample_clip(2, stride=1)|decode|label|keep('video', 'label')")))
  one = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  two = [pipeline.make_train_iterator(config, process_index=i, process_count=2) for i in range(2)]
  for _ in range(9):  # past the 30-record epoch
    b1 = next(one)
    halves = [next(it) for it in two]
    np.testing.assert_array_equal(b1["label"], np.concatenate([h["label"] for h in halves]))
    np.testing.assert_array_equal(b1["video"], np.concatenate([h["video"] for h in halves]))
  # Resuming host 1 from its saved position continues with its next rows.
  state = two[1].get_state()
  resumed = pipeline.make_train_iterator(config, process_index=1, process_count=2, state=state)
  np.testing.assert_array_equal(next(resumed)["label"], next(two[1])["label"])
