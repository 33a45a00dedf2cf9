"""Tests of the built-in dataset (vlm.data.builtin): format, determinism, splits, and that it tests what it claims.

The key claims checked numerically: a single frame carries no information about the motion direction (a classifier
on one frame is at chance) while two frames determine it; the audio depends on what is seen (pitch gives the shape,
sound only during an event); episodes, QA, events and the vocabulary are consistent.
"""
from __future__ import annotations

import collections
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from vlm.data import builtin
from vlm.data import records

# Small but large enough for the statistics below (about 2 s to generate).
OPTS = dict(num_train=320, num_test=160, num_images=24, num_frames=8, fps=10.0, size=32, sample_rate=4000,
            episode_len=4, num_shards=2, seed=3)


def _parse_all(paths: list[str]) -> list[dict]:
  """Every record of `paths` parsed with a feature spec (the reader's path), decoded to numpy."""
  ctx_spec = {
      records.FILENAME: tf.io.FixedLenFeature([], tf.string),
      records.START_TS: tf.io.FixedLenFeature([], tf.int64),
      records.CAPTION: tf.io.VarLenFeature(tf.string),
      records.LABEL_INDEX: tf.io.VarLenFeature(tf.int64),
      records.LABEL_TEXT: tf.io.VarLenFeature(tf.string),
      records.SAMPLE_RATE: tf.io.FixedLenFeature([], tf.int64),
      builtin.ATTRIBUTE_INDEX: tf.io.VarLenFeature(tf.int64),
      builtin.QA_QUESTION: tf.io.VarLenFeature(tf.string),
      builtin.QA_ANSWER: tf.io.VarLenFeature(tf.string),
      builtin.QA_ANSWER_INDEX: tf.io.VarLenFeature(tf.int64),
      builtin.QA_KIND_INDEX: tf.io.VarLenFeature(tf.int64),
      builtin.EPISODE_ID: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      builtin.EPISODE_INDEX: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      builtin.EPISODE_LENGTH: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      builtin.EPISODE_SUMMARY: tf.io.FixedLenFeature([], tf.string, default_value=""),
      builtin.EPISODE_NARRATION: tf.io.FixedLenFeature([], tf.string, default_value=""),
      builtin.EVENT_START: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      builtin.EVENT_END: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }
  seq_spec = {records.IMAGE: tf.io.FixedLenSequenceFeature([], tf.string),
              records.AUDIO: tf.io.VarLenFeature(tf.float32)}

  def parse(raw):
    ctx, seq = tf.io.parse_single_sequence_example(raw, context_features=ctx_spec, sequence_features=seq_spec)
    ex = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in ctx.items()}
    ex["frames"] = tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3), seq[records.IMAGE],
                             fn_output_signature=tf.uint8)
    ex["audio"] = seq[records.AUDIO].values  # Row-major: the chunks concatenated in order.
    ex["raw"] = raw
    return ex

  out = []
  for path in paths:  # Graph-mode tf.data: far faster than parsing record by record eagerly.
    for ex in tf.data.TFRecordDataset(path).map(parse).as_numpy_iterator():
      ex = {k: ([x.decode() for x in v] if isinstance(v, np.ndarray) and v.dtype == object else
                v.decode() if isinstance(v, bytes) and k != "raw" else v) for k, v in ex.items()}
      ex["shard"] = path
      out.append(ex)
  return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  ds = builtin.ensure_builtin(str(tmp_path_factory.mktemp("builtin")), **OPTS)
  return ds, {split: _parse_all(paths) for split, paths in ds.files.items()}


def _direction(ex) -> int:
  return int(ex[records.LABEL_INDEX][0]) % len(builtin.DIRECTIONS)


def _foreground(frames: np.ndarray) -> np.ndarray:
  """bool [F, H, W]: pixels away from the (uniform) background, estimated per frame by the median."""
  bg = np.median(frames.reshape(frames.shape[0], -1, 3), axis=1)[:, None, None, :]
  return np.abs(frames.astype(np.float32) - bg).sum(-1) > 60


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
  """The periodic (dy, dx) that best maps mask a onto mask b (circular cross-correlation)."""
  corr = np.real(np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)))
  dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
  h, w = a.shape
  return (dy + h // 2) % h - h // 2, (dx + w // 2) % w - w // 2


def test_api_and_layout(data):
  ds, parsed = data
  assert set(ds.files) == {"train", "test", "train_images", "test_images"}
  assert ds.num_examples == {"train": 320, "test": 160, "train_images": 24, "test_images": 6}
  assert {k: len(v) for k, v in parsed.items()} == ds.num_examples
  assert len(ds.class_names) == 12 and len(ds.attribute_names) == 14 and len(ds.answer_names) == 18
  assert (ds.num_frames, ds.fps, ds.size, ds.sample_rate) == (8, 10.0, 32, 4000)
  assert all(os.path.basename(p).startswith("train-") for p in ds.files["train"]) and len(ds.files["train"]) == 2
  ex = parsed["train"][0]
  assert ex["frames"].shape == (8, 32, 32, 3)
  assert ex["audio"].shape == (3200,) and np.abs(ex["audio"]).max() <= 1.0  # 0.8 s at 4 kHz.
  assert ex[records.SAMPLE_RATE] == 4000
  for ex in parsed["train"] + parsed["test"]:
    label = int(ex[records.LABEL_INDEX][0])
    assert len(ex[records.LABEL_INDEX]) == 1 and ex[records.LABEL_TEXT] == [ds.class_names[label]]
    attrs = [ds.attribute_names[i] for i in ex[builtin.ATTRIBUTE_INDEX]]
    shape, _, direction = ds.class_names[label].split()
    assert shape in attrs and direction in attrs
    assert len(ex[records.CAPTION]) == builtin.NUM_CAPTIONS == len(set(ex[records.CAPTION]))
  for ex in parsed["train_images"] + parsed["test_images"]:
    assert ex["frames"].shape == (1, 32, 32, 3) and ex["audio"].size == 0
    assert ex[records.LABEL_TEXT] == [ds.image_class_names[int(ex[records.LABEL_INDEX][0])]]
    assert len(ex[records.CAPTION]) >= 3
  # The loader path: a second call finds the cache and generates nothing.
  again = builtin.ensure_builtin(os.path.dirname(ds.root), **OPTS)
  assert again == ds


def test_splits_are_disjoint(data):
  _, parsed = data
  seen = {}
  for split, exs in parsed.items():
    keys = {ex["frames"].tobytes() for ex in exs}
    assert len(keys) == len(exs), f"duplicate clips inside {split}"
    for other, other_keys in seen.items():
      assert not keys & other_keys, (split, other)
    seen[split] = keys


def test_one_frame_cannot_tell_direction_two_frames_can(data):
  _, parsed = data
  train, test = parsed["train"], parsed["test"]

  def features(exs, frame):
    x = np.stack([ex["frames"][frame].astype(np.float32) / 255.0 for ex in exs])
    x = x.reshape(len(exs), 16, 2, 16, 2, 3).mean((2, 4)).reshape(len(exs), -1)  # 16x16x3 = 768 features.
    return np.concatenate([x, np.ones((len(exs), 1), np.float32)], 1)

  def ridge(x, y, num_classes, lam=10.0):
    """A linear classifier in closed form (least squares on one-hot targets)."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ np.eye(num_classes)[y])

  def colour(ex):  # Of the big object, named in the narration "the red circle moves left".
    return builtin.COLOURS.index(ex[builtin.EPISODE_NARRATION].split()[1])

  y_train = np.array([_direction(e) for e in train])
  y_test = np.array([_direction(e) for e in test])
  c_train = np.array([colour(e) for e in train])
  c_test = np.array([colour(e) for e in test])
  for frame in (0, 5):
    x_train, x_test = features(train, frame), features(test, frame)
    w = ridge(x_train, y_train, 4)
    assert np.mean(np.argmax(x_train @ w, 1) == y_train) > 0.5  # It fits the training set ...
    test_acc = np.mean(np.argmax(x_test @ w, 1) == y_test)
    assert test_acc < 0.36, test_acc  # ... yet stays at chance (0.25; 160 clips: sd 0.034) on held-out clips,
    w = ridge(x_train, c_train, 5)  # while the same classifier does learn what one frame shows (chance 0.2).
    assert np.mean(np.argmax(x_test @ w, 1) == c_test) > 0.3

  # Two frames: the displacement of the foreground between the first and the last frame gives the direction.
  steps = {(0, -1): 0, (0, 1): 1, (-1, 0): 2, (1, 0): 3}  # (sign dy, sign dx) -> left, right, up, down.
  hits = []
  for ex in test:
    if ex[builtin.EVENT_START] != 0 or ex[builtin.EVENT_END] != 8:
      continue  # The big object is hidden in some frames of event clips.
    fg = _foreground(ex["frames"]).astype(np.float32)
    dy, dx = _shift(fg[0], fg[-1])
    guess = steps.get((int(np.sign(dy)), 0) if abs(dy) > abs(dx) else (0, int(np.sign(dx))), -1)
    hits.append(guess == _direction(ex))
  assert len(hits) > 80 and np.mean(hits) > 0.9, (len(hits), np.mean(hits))


def test_audio_depends_on_content(data):
  ds, parsed = data
  exs = parsed["train"] + parsed["test"]
  sr = ds.sample_rate
  shape_hits = []
  for ex in exs:
    # One object (one colour among the attributes), visible throughout.
    single = sum(ds.attribute_names[i] in builtin.COLOURS for i in ex[builtin.ATTRIBUTE_INDEX]) == 1
    if not single or ex[builtin.EVENT_START] != 0 or ex[builtin.EVENT_END] != 8:
      continue
    spectrum = np.abs(np.fft.rfft(ex["audio"] * np.hanning(ex["audio"].size)))
    peak_hz = np.argmax(spectrum) * sr / ex["audio"].size
    guess = 0 if peak_hz < 300 else 1 if peak_hz < 640 else 2  # 220 / 440 / 880 Hz, +-1/4 octave.
    shape_hits.append(guess == int(ex[records.LABEL_INDEX][0]) // 4)
  assert len(shape_hits) > 50 and np.mean(shape_hits) == 1.0

  # Event clips: the big object sounds only while it is visible.
  spf = sr // 10  # Samples per frame.
  ratios = []
  for ex in exs:
    s, e = int(ex[builtin.EVENT_START]), int(ex[builtin.EVENT_END])
    n_colours = sum(ds.attribute_names[i] in builtin.COLOURS for i in ex[builtin.ATTRIBUTE_INDEX])
    if (s, e) == (0, 8) or n_colours != 1:
      continue
    a = ex["audio"]
    inside = np.sqrt(np.mean(a[s * spf + 20:e * spf - 20] ** 2))
    outside = np.sqrt(np.mean(np.concatenate([a[:max(0, s * spf - 20)], a[e * spf + 20:]]) ** 2))
    ratios.append(inside / max(outside, 1e-6))
  assert len(ratios) > 10 and min(ratios) > 5, ratios


def test_events_episodes_qa(data):
  ds, parsed = data
  for split in ("train", "test"):
    exs = parsed[split]
    # Events: frames inside [start, end) show more foreground (the big object) than frames outside.
    n_events = 0
    for ex in exs:
      s, e = int(ex[builtin.EVENT_START]), int(ex[builtin.EVENT_END])
      assert 0 <= s < e <= 8
      if (s, e) != (0, 8):
        n_events += 1
        fg = _foreground(ex["frames"]).mean((1, 2))
        outside = np.concatenate([fg[:s], fg[e:]])
        assert fg[s:e].min() > outside.max(), (s, e, fg)
    assert 0.1 < n_events / len(exs) < 0.4

    # Episodes: consecutive records, one shape and colour, one summary, whole inside one shard.
    episodes = collections.defaultdict(list)
    for i, ex in enumerate(exs):
      episodes[int(ex[builtin.EPISODE_ID])].append((i, ex))
    assert len(episodes) == len(exs) // 4
    for members in episodes.values():
      idx = [i for i, _ in members]
      assert idx == list(range(idx[0], idx[0] + len(idx)))
      assert [int(ex[builtin.EPISODE_INDEX]) for _, ex in members] == list(range(len(members)))
      assert {int(ex[builtin.EPISODE_LENGTH]) for _, ex in members} == {len(members)}
      assert len({ex[builtin.EPISODE_SUMMARY] for _, ex in members}) == 1
      assert len({ex["shard"] for _, ex in members}) == 1
      assert len({int(ex[records.LABEL_INDEX][0]) // 4 for _, ex in members}) == 1  # Same shape.
      assert [int(ex[records.START_TS]) for _, ex in members] == [k * 800_000 for k in range(len(members))]
      for _, ex in members:
        shape, _, direction = ds.class_names[int(ex[records.LABEL_INDEX][0])].split()
        assert ex[builtin.EPISODE_NARRATION].endswith(f"{shape} moves {direction}")

    # QA: answers from the closed set, consistent with the labels.
    for ex in exs:
      assert len(ex[builtin.QA_QUESTION]) == builtin.NUM_QA
      assert [ds.answer_names[i] for i in ex[builtin.QA_ANSWER_INDEX]] == ex[builtin.QA_ANSWER]
      shape, _, direction = ds.class_names[int(ex[records.LABEL_INDEX][0])].split()
      for q, a in zip(ex[builtin.QA_QUESTION], ex[builtin.QA_ANSWER]):
        if q.startswith(("which way", "in which direction", "where is")):
          assert a == direction
        if q.startswith(("what shape", "what is the shape", "how many", "is the ", "how fast")):
          assert a in builtin.SHAPES + ("one", "two") + builtin.SPEEDS
        if q.startswith(("is there", "can you see")):
          assert a in ("yes", "no")


def test_vocab_covers_every_text(data):
  ds, parsed = data
  with open(ds.vocab_file) as f:
    vocab = f.read().split("\n")[:-1]
  assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert len(vocab) == len(set(vocab)) and all(v == v.lower() for v in vocab[5:])
  words = set(vocab)
  texts = []
  for split, exs in parsed.items():
    for ex in exs:
      texts += ex[records.CAPTION] + ex[builtin.QA_QUESTION] + ex[builtin.QA_ANSWER]
      if not split.endswith("images"):
        texts += [ex[builtin.EPISODE_SUMMARY], ex[builtin.EPISODE_NARRATION]]
  for t in texts:
    assert t == t.lower() and all(w in words for w in t.split()), t  # Whole-word use.
  text = pytest.importorskip("tensorflow_text")
  tok = text.BertTokenizer(ds.vocab_file, lower_case=True, token_out_type=tf.int32)
  ids = tok.tokenize(tf.constant(texts)).merge_dims(-2, -1).flat_values.numpy()
  assert ids.min() >= 5 and 1 not in ids  # No [UNK], no specials.


def test_deterministic_and_atomic(tmp_path, capsys, monkeypatch):
  tiny = dict(num_train=8, num_test=4, num_images=4, num_frames=4, size=16, sample_rate=2000, num_shards=2)
  a = builtin.ensure_builtin(str(tmp_path / "a"), **tiny)
  err = capsys.readouterr().err
  assert "done in" in err and "MiB" in err  # Time and size are printed.
  b = builtin.ensure_builtin(str(tmp_path / "b"), **tiny)
  assert os.path.basename(a.root) == os.path.basename(b.root)
  for split in a.files:
    for pa, pb in zip(a.files[split], b.files[split]):
      with open(pa, "rb") as fa, open(pb, "rb") as fb:
        assert fa.read() == fb.read(), pa
  c = builtin.ensure_builtin(str(tmp_path / "a"), **dict(tiny, seed=1))
  assert c.root != a.root
  with open(a.files["train"][0], "rb") as fa, open(c.files["train"][0], "rb") as fc:
    assert fa.read() != fc.read()

  # A crash during generation leaves neither a dataset nor a temporary directory behind.
  def boom(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(builtin, "generate", boom)
  with pytest.raises(RuntimeError):
    builtin.ensure_builtin(str(tmp_path / "d"), **tiny)
  assert os.listdir(tmp_path / "d") == []
  # An existing complete cache is used without generating.
  assert builtin.ensure_builtin(str(tmp_path / "a"), **tiny) == a
  assert not glob.glob(str(tmp_path / "a" / "*.tmp-*"))


@pytest.mark.parametrize("extra,digest,directory", [
    ({}, "b212da442a5ce6bc", "v2-c34fa4cbac8b"),
    ({"colour_change": 0.5}, "0a79549dff804a82", "v2-739d0b12803d"),
    ({"routines": 5}, "866c8ef8e4b04d13", "v2-280e1d847ce4"),
])
def test_texts_are_pinned_with_their_cache_directory(tmp_path, extra, digest, directory):
  # The texts are a function of the random stream alone (exact on every CPU; the same under FORMAT_VERSION 1 and
  # 2, which only added the episode tags). Default data: the colour-change
  # option draws nothing while off, so texts and directory are those of the data before it existed (digest taken
  # then). If this fails after a change to the generator, the change alters cached data: bump FORMAT_VERSION
  # (default data) or the option's OPTION_VERSIONS entry, so that old caches are not reused, and re-pin.
  import hashlib  # pylint: disable=g-import-not-at-top
  tiny = dict(num_train=8, num_test=4, num_images=4, num_frames=8, size=16, sample_rate=2000, num_shards=1)
  ds = builtin.ensure_builtin(str(tmp_path), **tiny, **extra)
  h = hashlib.sha256()
  for split in ("train", "test"):
    for raw in tf.data.TFRecordDataset(ds.files[split]).as_numpy_iterator():
      ctx = tf.train.SequenceExample.FromString(raw).context.feature
      for k in (records.CAPTION, builtin.QA_QUESTION, builtin.QA_ANSWER, builtin.EPISODE_SUMMARY,
                builtin.EPISODE_NARRATION):
        h.update(b"\n".join(ctx[k].bytes_list.value) + b"|")
  assert (h.hexdigest()[:16], os.path.basename(ds.root)) == (digest, directory)


def _palette_colours(frame: np.ndarray) -> set[str]:
  """The palette colours (names) covering at least 5 foreground pixels of one frame [H, W, 3]."""
  fg = _foreground(frame[None])[0]
  palette = builtin._RGB  # pylint: disable=protected-access
  dist = np.linalg.norm(frame[fg].astype(np.float32)[:, None] - palette[None], axis=-1)
  counts = np.bincount(dist.argmin(1)[dist.min(1) < 60], minlength=len(builtin.COLOURS))
  return {builtin.COLOURS[i] for i in np.flatnonzero(counts >= 5)}


def test_colour_change_is_a_temporal_order_signal(tmp_path):
  opts = dict(num_train=96, num_test=8, num_images=0, num_frames=8, size=32, sample_rate=2000, num_shards=1,
              colour_change=0.5)
  ds = builtin.ensure_builtin(str(tmp_path), **opts)
  exs = _parse_all(ds.files["train"])
  order = builtin.QUESTION_KINDS.index("colour order")
  kinds = [list(ex[builtin.QA_KIND_INDEX]) for ex in exs]
  changed = [k[0] == order for k in kinds]
  plain = [ex for ex, c in zip(exs, changed) if (int(ex[builtin.EVENT_START]), int(ex[builtin.EVENT_END])) == (0, 8)]
  assert 0.3 < sum(changed) / len(plain) < 0.7  # Half of the clips without an event.
  for ex, k, c in zip(exs, kinds, changed):
    assert len(k) == builtin.NUM_QA and k.count(order) == int(c)
    if not c:
      continue
    # The first frame (before F/4) shows the first colour, the last (after 3F/4) the second (the small object,
    # if any, keeps its own colour, unless the big one hides it): the answer is a colour the last frame shows and
    # the first does not, and the first shows one the last does not.
    first, last = _palette_colours(ex["frames"][0]), _palette_colours(ex["frames"][-1])
    a = ex[builtin.QA_ANSWER][0]
    assert a in last - first and first - last, (ex[builtin.QA_QUESTION][0], a, first, last)
    attrs = [ds.attribute_names[i] for i in ex[builtin.ATTRIBUTE_INDEX]]
    assert first | last <= set(attrs)
    # Every caption names the change to the new colour (a synonym of it); no plain colour question is asked.
    new = builtin.COLOURS.index(a)
    templates, words = builtin._CHANGE_TEMPLATES, builtin._COLOUR_WORDS[new]  # pylint: disable=protected-access
    phrases = [t.format(cb=w) for t in templates for w in words]
    assert all(any(p in cap for p in phrases) for cap in ex[records.CAPTION]), ex[records.CAPTION]
    assert builtin.QUESTION_KINDS.index("colour") not in k
    assert ex[builtin.EPISODE_NARRATION].endswith(f"turns {a}")
  # New words are appended to the vocabulary: every earlier word keeps its id.
  vocab = builtin.vocabulary()
  assert vocab[-3:] == ["end", "turn", "turns"] and vocab[5:-3] == sorted(vocab[5:-3])
  with open(ds.vocab_file) as f:
    words = set(f.read().split())
  for ex in exs:
    for t in ex[records.CAPTION] + ex[builtin.QA_QUESTION] + [ex[builtin.EPISODE_NARRATION]]:
      assert all(w in words for w in t.split()), t
  with pytest.raises(ValueError, match="colour_change"):
    builtin.ensure_builtin(str(tmp_path), **dict(opts, colour_change=1.5))



def test_routines_fix_each_episodes_directions_by_colour(tmp_path):
  opts = dict(num_train=60, num_test=30, num_images=0, num_frames=8, size=32, sample_rate=2000, num_shards=1,
              episode_len=6, routines=5)
  ds = builtin.ensure_builtin(str(tmp_path), **opts)
  table = builtin.routine_table(0, 5, 6)
  assert table.shape == (len(builtin.COLOURS), 6) and len({tuple(r) for r in table}) > 1
  steps = {(0, -1): 0, (0, 1): 1, (-1, 0): 2, (1, 0): 3}  # (sign dy, sign dx) -> left, right, up, down
  moved, seen = [], 0
  for split in ("train", "test"):  # one routine table for every split
    for ex in _parse_all(ds.files[split]):
      colour = builtin.COLOURS.index(ex[builtin.EPISODE_NARRATION].split()[1])
      i = int(ex[builtin.EPISODE_INDEX])
      assert _direction(ex) == table[colour, i], (split, ex[builtin.EPISODE_NARRATION], i)
      seen += 1
      if ex[builtin.EVENT_START] == 0 and ex[builtin.EVENT_END] == 8:  # the frames move that way too
        fg = _foreground(ex["frames"]).astype(np.float32)
        dy, dx = _shift(fg[0], fg[-1])
        moved.append(steps.get((int(np.sign(dy)), 0) if abs(dy) > abs(dx) else (0, int(np.sign(dx))), -1)
                     == table[colour, i])
  assert seen == 90 and np.mean(moved) > 0.9
  with pytest.raises(ValueError, match="routines"):
    builtin.ensure_builtin(str(tmp_path), **dict(opts, routines=6))
