"""WordPiece ids equal to HF transformers' BertTokenizer on tricky text (the MiniLM / BERT uncased vocab)."""
import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SENTENCES = [
    "Héllo Wörld, naïve café!", "Straße ß ﬁ ½ x² ＡＢＣ …", "中文字符 and 日本語", "UPPER lower MiXeD",
    "a" * 101, "é" * 60, "b" * 100, "tab\there\nnew  multiple   spaces", "ctrl\x00char\x07s\u200bzero\ufffd",
    "[CLS] literal [SEP] x[MASK]y [UNK]", "", "   ", "don't stop-believing (ok)? #1 $5 @me ~^|`<=>+",
    "İstanbul ǅ ΣΑΣ σας", "emoji 😀 ok", "\u00a0nbsp\u3000ideo", "soft\u00adhyphen", "combining e\u0301 and n\u0303",
    "A man is riding a horse on the beach.", "unaffable playing-cards 3.14159 e-mail", "Ｈｅｌｌｏ fullwidth",
    "x\u2028y\u2029z", "Ärger über Öl", "résumé Ελληνικά Русский текст", "ﬀ ligature ‘quotes’ “double” — dash",
]


def _tokenizers():
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import media_files  # pylint: disable=g-import-not-at-top
  path = media_files.minilm_dir()
  if path is None:
    pytest.skip("MiniLM-L6 vocab not fetched: run python tests/media_files.py")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("tensorflow_text")
  from vlm.data import vocab  # pylint: disable=g-import-not-at-top
  vocab_file = os.path.join(path, "vocab.txt")
  return transformers.BertTokenizer(vocab_file, do_lower_case=True), vocab.WordPieceTokenizer(vocab_file)


def test_wordpiece_ids_equal_hf_bert_tokenizer():
  hf, ours = _tokenizers()
  differ = [(s, hf.encode(s, add_special_tokens=False), ours.to_int(s)) for s in SENTENCES
            if hf.encode(s, add_special_tokens=False) != ours.to_int(s)]
  assert not differ, differ
  # With [CLS] / [SEP], the empty and blank texts included ([CLS] [SEP]).
  differ = [s for s in SENTENCES if ours.to_int(s, bos=True, eos=True) != hf.encode(s)]
  assert not differ, differ


def test_truncation_keeps_sep_as_hf():
  hf, ours = _tokenizers()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlm.data import ops_text  # pylint: disable=g-import-not-at-top
  text = "a man is riding a horse on the beach near the sea"
  op = ops_text.tokenize(8, tokenizer=ours, bos=True, eos=True)
  out = op({"captions": tf.constant([text, ""])})
  want = hf(text, truncation=True, max_length=8)["input_ids"]
  assert out["text"].numpy()[0].tolist() == want and want[-1] == ours.eos_id
  assert out["text"].numpy()[1].tolist()[:2] == hf.encode("")  # an empty caption in the data: [CLS] [SEP]


def test_padding_captions_stay_invalid_while_empty_ones_are_cls_sep():
  hf, ours = _tokenizers()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlm.data import ops_text  # pylint: disable=g-import-not-at-top
  sample = ops_text.sample_captions(3, random=False)
  tokenize = ops_text.tokenize(6, tokenizer=ours, bos=True, eos=True)
  out = tokenize(sample({"captions": tf.constant(["a horse", ""])}))  # two real captions, one padding slot
  assert "captions_valid" not in out
  cls_sep = hf.encode("")
  assert out["text"].numpy().tolist() == [hf.encode("a horse") + [0, 0], cls_sep + [0] * 4, [0] * 6]
  assert out["text_mask"].numpy().tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6]
