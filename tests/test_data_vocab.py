"""Tokenizers of vlm.data.vocab: whole-word and WordPiece, Python and TF paths, eagerly and inside tf.data."""
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from vlm.data import vocab  # pylint: disable=g-import-not-at-top

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "man", "is", "riding", "horse", "##s", "the"]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(WORDS) + "\n")
  return str(path)


def _in_tfdata(fn, x):
  return next(iter(tf.data.Dataset.from_tensors(x).map(fn)))


def test_word_tokenizer_lookup_oov_punctuation_case(vocab_file):
  tok = vocab.make_tokenizer(dict(kind="words", vocab_file=vocab_file))
  assert isinstance(tok, vocab.Tokenizer)
  assert (tok.vocab_size, tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (11, 0, 1, 2, 3)
  # Upper case folds, punctuation splits, unknown words ('horses', 'zebra') map to [UNK].
  assert tok.to_int("A MAN, riding horses; zebra!") == [4, 5, 7, 1, 1]
  assert tok.to_int("the man", bos=True, eos=True) == [2, 10, 5, 3]
  ids = tok.to_int_tf_op(tf.constant([["A man", "the horse zebra"], ["", "x"]]))
  assert ids.to_list() == [[[4, 5], [10, 8, 1]], [[], [1]]]
  assert tok.to_str([4, 5, 0, 0]) == "a man"


def test_word_tokenizer_reserves_pad_and_adds_unk(tmp_path):
  path = tmp_path / "plain.txt"
  path.write_text("the\nman\tcount=5\n")  # no pad line, no unk line, a tab-separated extra field
  tok = vocab.WordTokenizer(str(path))
  assert tok.tokens == ["[PAD]", "the", "man", "[UNK]"]
  assert tok.to_int("the man walks") == [1, 2, 3]


def test_wordpiece_tokenizer_matches_python_and_tf(vocab_file):
  tok = vocab.make_tokenizer(dict(kind="wordpiece", vocab_file=vocab_file))
  assert tok.to_int("A man is riding horses") == [4, 5, 6, 7, 8, 9]
  assert tok.to_str([4, 5, 8, 9]) == "a man horses"
  two_d = tok.to_int_tf_op(tf.constant([["a man", "horses"], ["zebra", ""]]))
  assert two_d.to_list() == [[[4, 5], [8, 9]], [[1], []]]


@pytest.mark.parametrize("kind", ["words", "wordpiece"])
def test_pad_or_clip_eager_and_tfdata(vocab_file, kind):
  tok = vocab.make_tokenizer(dict(kind=kind, vocab_file=vocab_file))

  def fn(x):
    return vocab.pad_or_clip(tok.to_int_tf_op(x, bos=True), 4, tok.pad_id)

  x = tf.constant(["a man is riding the horse", "man", ""])
  for ids, mask in (fn(x), _in_tfdata(fn, x)):
    # An empty text gets its BOS too (as HF's tokenizers); padding captions are masked by `tokenize` instead.
    np.testing.assert_array_equal(ids, [[2, 4, 5, 6], [2, 5, 0, 0], [2, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert ids.dtype == tf.int32 and ids.shape == (3, 4)
  ids, mask = vocab.pad_or_clip(tok.to_int_tf_op(tf.constant("the man")), 3)  # scalar string
  np.testing.assert_array_equal(ids, [10, 5, 0])
  np.testing.assert_array_equal(mask, [1, 1, 0])


def test_make_tokenizer_errors(vocab_file, tmp_path):
  with pytest.raises(ValueError, match="no vocab_file"):
    vocab.make_tokenizer(dict(kind="words"))
  with pytest.raises(ValueError, match="kind must be"):
    vocab.make_tokenizer(dict(kind="bpe", vocab_file=vocab_file))
  bad = tmp_path / "bad.txt"
  bad.write_text("a\n[UNK]\n")
  with pytest.raises(ValueError, match="line 0 must be a padding token"):
    vocab.WordPieceTokenizer(str(bad))


def test_build_word_vocab_round_trip(tmp_path):
  path = str(tmp_path / "v.txt")
  tokens = vocab.build_word_vocab(["the man, the horse", "a man"], path, max_size=7)
  assert tokens[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] and tokens[4:] == ["man", "the", "a"]
  tok = vocab.WordTokenizer(path)
  assert tok.to_int("The horse") == [5, 1]


def test_read_names_from_a_list_or_a_file(tmp_path):
  path = tmp_path / "classes.txt"
  path.write_text("circle moving left\n\n  square moving up \n")
  assert vocab.read_names(str(path)) == ["circle moving left", "square moving up"]
  assert vocab.read_names(("a", "b")) == ["a", "b"] and vocab.read_names(None) is None
