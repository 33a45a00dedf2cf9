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
  # With [CLS] / [SEP] (non-empty texts; an empty caption stays empty so its mask stays zero).
  for s in SENTENCES[:5]:
    assert ours.to_int(s, bos=True, eos=True) == hf.encode(s)


def test_truncation_keeps_sep_as_hf():
  hf, ours = _tokenizers()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from vlm.data import ops_text  # pylint: disable=g-import-not-at-top
  text = "a man is riding a horse on the beach near the sea"
  op = ops_text.tokenize(8, tokenizer=ours, bos=True, eos=True)
  out = op({"captions": tf.constant([text, ""])})
  want = hf(text, truncation=True, max_length=8)["input_ids"]
  assert out["text"].numpy()[0].tolist() == want and want[-1] == ours.eos_id
  assert out["text_mask"].numpy()[1].tolist() == [0] * 8  # a padding caption stays empty
