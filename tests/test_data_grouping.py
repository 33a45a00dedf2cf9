"""The grouping stage (vlm/data/grouping.py): episodes as examples, remainder counts, exact resume, bad config;
and the data layer's entry point (vlm/data/inputs.py)."""
import ast
import json
import os

import ml_collections
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vlm.data import bench  # pylint: disable=g-import-not-at-top
from vlm.data import grouping  # pylint: disable=g-import-not-at-top
from vlm.data import inputs  # pylint: disable=g-import-not-at-top
from vlm.data import pipeline  # pylint: disable=g-import-not-at-top
from vlm.data import records  # pylint: disable=g-import-not-at-top

PP = "sample_clip(2, random=False)|center_crop(8)|label|keep('video', 'label')"
EPISODE = "episode/id"
# Per shard: episode lengths 3, 2, 4 and 1 (10 records). Record i of shard s has label 100 * s + i.
LENGTHS = (3, 2, 4, 1)

_JPEGS = {}


def _record(label, episode=None, corrupt=False) -> bytes:
  if "ok" not in _JPEGS:
    _JPEGS["ok"] = bench.encode_jpegs(bench.synthetic_frames(3, 16, 16))
  jpegs = list(_JPEGS["ok"])
  if corrupt:
    jpegs[1] = jpegs[1][:40] + b"\x00" * 20
  extra = None if episode is None else {EPISODE: tf.train.Feature(int64_list=tf.train.Int64List(value=[episode]))}
  return records.make_sequence_example(jpeg_frames=jpegs, fps=10.0, label_index=[label],
                                       extra_context=extra).SerializeToString()


def _write(path, recs):
  with tf.io.TFRecordWriter(str(path)) as w:
    for r in recs:
      w.write(r)
  return str(path)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
  d = tmp_path_factory.mktemp("episodes")
  for s in range(2):
    eps = [s * 10 + e for e, n in enumerate(LENGTHS) for _ in range(n)]
    _write(d / f"ep-{s}.tfrecord", [_record(100 * s + i, ep) for i, ep in enumerate(eps)])
  return d


def _config(d, group, **inp):
  base = dict(data=dict(name="records", files=str(d / "ep-*.tfrecord")), batch_size=2, shuffle_buffer=1,
              pp=PP, eager_check=1, cycle_length=1, group=group)
  base.update(inp)
  return ml_collections.ConfigDict(dict(seed=3, input=base))


def _groups(it, n):
  """The label groups of the next n batches, and the batches."""
  batches = [next(it) for _ in range(n)]
  return [g.tolist() for b in batches for g in b["label"]], batches


def _shard_order(labels, per_shard):
  """`per_shard(0) + per_shard(1)` or the other way round (each epoch reads the shards in an order of its own),
  cut to len(labels)."""
  options = [per_shard(a) + per_shard(b) for a, b in ((0, 1), (1, 0))]
  return [o[:len(labels)] for o in options]


def test_groups_are_consecutive_records_of_one_episode_with_remainders_counted(episodes):
  # cycle_length=1, no shuffle: one shard's groups, then the other's.
  it = inputs.make_train_iterator(_config(episodes, dict(size=2, key=EPISODE)), process_index=0, process_count=1)
  labels, batches = _groups(it, 4)
  assert labels in _shard_order(labels, lambda s: [[100 * s + i, 100 * s + i + 1] for i in (0, 3, 5, 7)])
  b = batches[0]
  assert b["video"].shape == (2, 2, 2, 8, 8, 3) and b["label"].shape == (2, 2) and b["group_mask"].shape == (2, 2)
  assert all(np.all(x["group_mask"] == 1) for x in batches)
  # Per shard, record 2 (end of the 3-clip episode) and record 9 (a 1-clip episode) are dropped and counted
  # with the next group handed out: the last shard's record 9 with epoch 1's first group.
  assert it.skipped == {"corrupt": 0, "corrupt_records": 0, "skipped_bytes": 0, "truncated_files": 0,
                        "group_dropped": 3, "group_unkeyed": 0,
                        "group_padded": 0}
  next(it)  # epoch 1's first two groups: the last of epoch 0's remainders and epoch 1's first one
  assert it.skipped["group_dropped"] == 5

  it = inputs.make_train_iterator(_config(episodes, dict(size=2, key=EPISODE, remainder="pad")), process_index=0,
                                  process_count=1)
  labels, batches = _groups(it, 3)
  assert labels in _shard_order(labels, lambda s: (100 * s + np.array([[0, 1], [2, 2], [3, 4], [5, 6], [7, 8],
                                                                         [9, 9]])).tolist())
  masks = np.concatenate([b["group_mask"] for b in batches]).tolist()
  assert masks == [[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 0]]
  np.testing.assert_array_equal(batches[0]["video"][1, 1], batches[0]["video"][1, 0])  # padding repeats the last
  assert it.skipped["group_padded"] == 2 and it.skipped["group_dropped"] == 0

  # No key: K consecutive records of a shard, whatever their episode; the shard's last records are the rest.
  it = inputs.make_train_iterator(_config(episodes, dict(size=4)), process_index=0, process_count=1)
  labels, _ = _groups(it, 2)
  assert labels in _shard_order(labels, lambda s: [list(range(100 * s, 100 * s + 4)),
                                                   list(range(100 * s + 4, 100 * s + 8))])
  assert it.skipped["group_dropped"] == 2  # records 8 and 9 of the first shard
  # The eval split counts groups for its padding, and the remainders of the whole split.
  ev = inputs.make_eval_iterator(_config(episodes, dict(size=2, key=EPISODE)), dict(batch_size=3),
                                 process_index=0, process_count=1)
  evb = list(ev)
  assert len(ev) == 3 and [int(x["_mask"].sum()) for x in evb] == [3, 3, 2]
  assert evb[2]["label"].tolist()[:2] == [[105, 106], [107, 108]] and ev.skipped["group_dropped"] == 4


def test_exact_resume_with_groups(episodes):
  cfg = _config(episodes, dict(size=2, key=EPISODE, remainder="pad"), shuffle_buffer=4, cycle_length=2,
                pp="sample_clip(2)|random_resized_crop(8)|flip|label|keep('video', 'label')")
  ref = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  expected = [next(ref) for _ in range(9)]  # 12 groups per epoch, 6 batches: batch 6 starts epoch 1
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  states = {}
  for n in range(8):
    b = next(it)
    for k in b:
      np.testing.assert_array_equal(b[k], expected[n][k], err_msg=k)
    states[n + 1] = json.loads(json.dumps(it.get_state()))
  assert (states[6]["epoch"], states[6]["position"], states[7]["epoch"]) == (0, 12, 1)  # positions count groups
  assert states[6]["skipped"]["group_padded"] == 4  # 2 slots per shard per epoch
  for n in (4, 5, 6, 7):  # around the epoch boundary
    resumed = inputs.make_train_iterator(cfg, process_index=0, process_count=1, state=states[n])
    for want in expected[n:n + 2]:
      got = next(resumed)
      for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"resumed after {n}: {k}")
    if n == 6:  # the counts continue too: after batch 8, as the uninterrupted run's
      assert resumed.skipped == it.skipped
  # Clips of a group draw their own augmentation (the example seed folded with the clip's index).
  pair = [b for b in expected if (b["label"][:, 0] != b["label"][:, 1]).any()][0]
  assert not np.array_equal(pair["video"][0, 0], pair["video"][0, 1])


def test_host_split_examples_gives_the_same_global_groups_for_any_process_count(episodes):
  cfg = _config(episodes, dict(size=2, key=EPISODE, remainder="pad"), batch_size=4, shuffle_buffer=4,
                cycle_length=2, host_split="examples")
  one = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  two = [inputs.make_train_iterator(cfg, process_index=i, process_count=2) for i in range(2)]
  for _ in range(4):  # past the 12-group epoch
    b, halves = next(one), [next(it) for it in two]
    for k in ("label", "group_mask"):
      np.testing.assert_array_equal(b[k], np.concatenate([h[k] for h in halves]), err_msg=k)
  assert one.skipped["group_padded"] == sum(it.skipped["group_padded"] for it in two)


def test_unkeyed_and_corrupt_records_are_counted_never_dropped_silently(tmp_path):
  recs = [_record(0, 1), _record(1, 1), _record(2, 1),  # a 3-clip episode: record 2 is a remainder
          _record(3, None),                              # no key
          b"\x08\x96\x01 not a proto",                    # unreadable: no key either
          _record(5, 2), _record(6, 2, corrupt=True),    # a group that fails to decode, carrying the counts
          _record(7, 3), _record(8, 3)]
  cfg = _config(tmp_path, dict(size=2, key=EPISODE), data=dict(name="records", files=_write(tmp_path / "x.tfrecord",
                                                                                              recs)))
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  b = next(it)
  assert b["label"].tolist() == [[0, 1], [7, 8]]
  assert it.skipped == {"corrupt": 1, "corrupt_records": 0, "skipped_bytes": 0, "truncated_files": 0,
                        "group_dropped": 1, "group_unkeyed": 2,
                        "group_padded": 0}
  next(it)  # epoch 1: the same again
  assert it.get_state()["skipped"]["group_unkeyed"] == 4 and it.skipped["corrupt"] == 2


def test_grouping_off_is_bit_identical_to_the_ungrouped_pipeline(tmp_path):
  for s in range(3):
    bench.write_synthetic_records(str(tmp_path / f"train-{s}.tfrecord"), 6, num_frames=10, height=20, width=24,
                                  seed=s)
  pp = "sample_clip(4, stride=2)|random_resized_crop(8)|flip|label|keep('video', 'label', 'frame_index')"
  cfg = ml_collections.ConfigDict(dict(seed=5, input=dict(
      data=dict(name="records", files=str(tmp_path / "train-*.tfrecord")), batch_size=4, shuffle_buffer=8, pp=pp,
      eager_check=0, cycle_length=2)))
  unset = [next(it) for it in [inputs.make_train_iterator(cfg, process_index=0, process_count=1)] for _ in range(6)]
  cfg.input.group = None
  explicit = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  for want in unset:
    got = next(explicit)
    assert set(got) == {"video", "label", "frame_index"}
    for k in got:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert explicit.skipped == {"corrupt": 0, "corrupt_records": 0, "skipped_bytes": 0, "truncated_files": 0}
  # Order, clip offsets and seeds of the stream as the pipeline produced them before the grouping stage existed.
  pinned = [([2, 0, 0, 2], [2, 2, 2, 1]), ([0, 3, 4, 1], [0, 1, 3, 3]), ([0, 4, 3, 3], [1, 0, 1, 2]),
            ([0, 4, 1, 1], [3, 0, 2, 1]), ([0, 2, 2, 0], [2, 1, 3, 0]), ([0, 2, 0, 3], [3, 2, 2, 3])]
  assert [(b["label"].tolist(), b["frame_index"][:, 0].tolist()) for b in unset] == pinned


def test_builtin_episodes_group_into_whole_episodes(tmp_path):
  builtin = pytest.importorskip("vlm.data.builtin")
  options = dict(data_dir=str(tmp_path), num_train=14, num_test=4, num_images=0, num_frames=4, size=16,
                 num_shards=2, sample_rate=1000, episode_len=4)
  builtin.ensure_builtin(**options)
  cfg = ml_collections.ConfigDict(dict(seed=0, input=dict(
      data=dict(name="builtin", split="train", options=options), batch_size=3, shuffle_buffer=1,
      extra_context={builtin.EPISODE_ID: "int", builtin.EPISODE_INDEX: "int", builtin.EPISODE_NOUNS: "int",
                     builtin.EPISODE_VERBS: "int"},
      group=dict(size=4, key=builtin.EPISODE_ID),
      pp="sample_clip(2)|center_crop(8)|copy('episode/id', 'episode')|copy('episode/index', 'clip')|"
         f"multihot(3, inkey='{builtin.EPISODE_NOUNS}', outkey='nouns')|"
         f"multihot(4, inkey='{builtin.EPISODE_VERBS}', outkey='verbs')|copy('label_index', 'label')|"
         "keep('video', 'episode', 'clip', 'nouns', 'verbs', 'label')")))
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  b = next(it)  # 14 clips: episodes of 4, 4, 4 and 2 (the last, short one dropped)
  assert b["video"].shape == (3, 4, 2, 8, 8, 3)
  episode, clip = b["episode"][..., 0], b["clip"][..., 0]
  assert sorted(episode[:, 0].tolist()) == [0, 1, 2] and np.all(episode == episode[:, :1])
  np.testing.assert_array_equal(clip, np.broadcast_to(np.arange(4), (3, 4)))
  # The narration's tags: noun = the shape, verb = the direction (the class label is shape * 4 + direction).
  assert b["nouns"].shape == (3, 4, 3) and np.all(b["nouns"].sum(-1) == 1) and np.all(b["verbs"].sum(-1) == 1)
  np.testing.assert_array_equal(b["nouns"].argmax(-1) * 4 + b["verbs"].argmax(-1), b["label"][..., 0])
  next(it)  # the short episode ends shard 1: its count comes with the next epoch's first group
  assert it.skipped["group_dropped"] == 2


def test_a_mixture_entry_can_group(episodes):
  cfg = _config(episodes, None, mixture=dict(
      clips=dict(weight=1.0, data=dict(name="records", files=str(episodes / "ep-*.tfrecord"))),
      episodes=dict(weight=1.0, data=dict(name="records", files=str(episodes / "ep-*.tfrecord")),
                    group=dict(size=2, key=EPISODE))))
  it = inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  shapes = {inputs.mixture_names(cfg)[int(b["dataset"][0])]: b["label"].shape for b in (next(it) for _ in range(8))}
  assert shapes == {"clips": (2,), "episodes": (2, 2)}
  assert it.skipped["group_dropped"] > 0


@pytest.mark.parametrize("group, match", [
    (dict(size=0), r"group.size = 0: expected an int >= 1"),
    (dict(size=True), r"group.size = True"),
    (dict(size="4"), r"group.size = '4'"),
    (dict(key=EPISODE), r"group.size = None"),
    (dict(size=2, remainder="keep"), r"group.remainder = 'keep': expected one of \['drop', 'pad'\]"),
    (dict(size=2, keys=EPISODE), r"unknown keys \['keys'\]; its keys are \['size', 'key', 'remainder'\]"),
    (dict(size=2, key="episode/idx"), r"group.key='episode/idx' is not a context feature of the records: "
                                      r".*ep-0.tfrecord record 0 has \[.*'episode/id'"),
    (4, r"expected None or dict\(size=K"),
])
def test_bad_group_config_is_an_error_before_anything_runs(episodes, group, match):
  with pytest.raises(ValueError, match=match):
    inputs.make_train_iterator(_config(episodes, group), process_index=0, process_count=1)


def test_grouping_needs_a_record_source_and_pp_errors_name_the_group(episodes, monkeypatch):
  from vlm.data import tfds_builder  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tfds_builder, "load_tfds_video", lambda *a, **k: tf.data.Dataset.from_tensors(
      {"frames": np.zeros([2, 4, 4, 3], np.uint8)}))
  cfg = _config(episodes, dict(size=2), data=dict(name="tfds", dataset="fake"))
  with pytest.raises(ValueError, match="config.input.group needs a record source"):
    inputs.make_train_iterator(cfg, process_index=0, process_count=1)
  cfg = _config(episodes, dict(size=2, key=EPISODE), pp="sample_clip(2)|keep('nope')|normalize")
  with pytest.raises(KeyError, match="Preprocessing group 0 of .*ep-0.tfrecord failed before training"):
    inputs.make_train_iterator(cfg, process_index=0, process_count=1)


def test_group_records_alone_and_the_entry_point_has_no_import_cycle(episodes):
  files = sorted(str(p) for p in episodes.glob("ep-*.tfrecord"))
  group = grouping.parse(dict(size=3, key=EPISODE, remainder="pad"))
  assert group == grouping.Group(3, EPISODE, "pad") and grouping.parse(None) is None
  assert grouping.key_dtype(group, files) == tf.int64
  out = list(grouping.group_records(tf.data.TFRecordDataset(files[0]), group, tf.int64).as_numpy_iterator())
  assert [int(e["_real"]) for e in out] == [3, 2, 3, 1, 1]  # episodes 3 | 2 | 4 = 3 + 1 | 1
  assert [int(e["_group_padded"]) for e in out] == [0, 1, 0, 2, 2] and all(e["_valid"] for e in out)
  # pipeline reads one dataset and never imports mixture; the entry point dispatches.
  tree = ast.parse(open(pipeline.__file__, encoding="utf-8").read())
  imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
  assert "mixture" not in imported and "inputs" not in imported
  cfg = _config(episodes, None, mixture=dict(a=dict(weight=1.0, data=dict(split="train"))))
  with pytest.raises(ValueError, match="vlm.data.inputs.make_train_iterator"):
    pipeline.make_train_iterator(cfg, process_index=0, process_count=1)
