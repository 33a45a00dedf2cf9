"""String-to-id text tokenizers for the data layer (one Protocol, two implementations).

Token ids are produced inside tf.data (`to_int_tf_op`) and in plain Python (`to_int`, `to_str`) with the same
vocabulary, so evaluators can encode class names or queries exactly as the input pipeline encodes captions.

* `WordPieceTokenizer`: BERT WordPiece (tensorflow_text's basic and WordPiece tokenizers) and a BERT-style vocab
  file (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]` lines; ids are line numbers, so a standard BERT vocab gives pad 0).
  The ids are those of HF transformers' `BertTokenizer` (tests/test_data_tokenizer_parity.py): its text
  cleaning (control and format characters deleted, whitespace characters made spaces), Python-style lower
  casing then NFD with the accents stripped (no compatibility folding: 'ß', 'ﬁ', '½', full-width letters stay
  themselves), CJK characters as words, punctuation split, special tokens written in the text ('[CLS]', '[SEP]',
  '[MASK]', ...) kept whole, words over 100 characters -> [UNK], and an empty text with bos/eos -> [CLS] [SEP].
* `WordTokenizer`: whole words for VATT-style vocabularies (2^16 words, one per line). Text is lower-cased,
  punctuation becomes a space, words are split on whitespace and looked up in a `tf.lookup.StaticHashTable`;
  unknown words map to the `[UNK]` id.

Id 0 is padding in both (the batch contract: `text` int32 [B, K, L], 0 = padding). A vocab file whose first line is
not a padding token (`[PAD]`, `<pad>`, `PAD`, `<PAD>` or an empty line) gets every id shifted by one so that 0 stays
free; a vocab with no unknown token (`[UNK]`, `<unk>`, `UNK`, `<UNK>`) gets one appended. Lines may carry extra
tab-separated fields (e.g. counts); only the first field is the token.

Config (`config.input.tokenizer`, read by `make_tokenizer`):
  kind: 'words' | 'wordpiece'
  vocab_file: path; None means the data source's own vocab (e.g. the built-in dataset's).
  lower: bool = True (lower-case before lookup).
"""
from __future__ import annotations

import collections
import re
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import tensorflow as tf

PAD_TOKENS = ("[PAD]", "<pad>", "PAD", "<PAD>", "")
UNK_TOKENS = ("[UNK]", "<unk>", "UNK", "<UNK>")
BOS_TOKENS = ("[CLS]", "<s>", "[BOS]", "<bos>")
EOS_TOKENS = ("[SEP]", "</s>", "[EOS]", "<eos>")

# HF BertTokenizer: words longer than this (in characters) are [UNK]; characters it deletes (control, format,
# private-use and surrogate categories but tab / newline / carriage return, plus NUL and U+FFFD) and those it
# makes spaces (tab, newline, carriage return, Zs, Zl, Zp); the private-use placeholder of special tokens.
_MAX_WORD_CHARS = 100
_CONTROL_RE = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\p{Cf}\p{Co}\p{Cs}\x{FFFD}]"
_SPACE_RE = r"[\t\n\r\p{Zs}\p{Zl}\p{Zp}]"
_PLACEHOLDER = 0xE000

# Characters turned into spaces before whole-word lookup (VATT/DMVR word tokenizers strip punctuation the same way).
_PUNCT_RE = r"[!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~]"


@runtime_checkable
class Tokenizer(Protocol):
  """What the data layer and evaluators need from a text tokenizer."""

  vocab_size: int
  pad_id: int
  unk_id: int
  bos_id: int | None
  eos_id: int | None

  def to_int(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    """Python: one string -> list of ids."""

  def to_int_tf_op(self, text: tf.Tensor, *, bos: bool = False, eos: bool = False) -> tf.RaggedTensor:
    """TF: string tensor of any shape [...] -> int32 RaggedTensor [..., (tokens)]."""

  def to_str(self, ids: Sequence[int]) -> str:
    """Python: ids -> text (padding dropped)."""


def read_vocab(vocab_file: str) -> list[str]:
  """Reads one token per line (first tab-separated field; trailing newline stripped)."""
  with tf.io.gfile.GFile(vocab_file, "r") as f:
    return [line.rstrip("\n").rstrip("\r").split("\t")[0] for line in f]


def _find(tokens: Sequence[str], candidates: Sequence[str]) -> int | None:
  index = {t: i for i, t in enumerate(tokens)}
  for c in candidates:
    if c in index:
      return index[c]
  return None


def _add_special(ids: tf.Tensor | tf.RaggedTensor, bos_id: int | None, eos_id: int | None, bos: bool,
                 eos: bool) -> tf.Tensor | tf.RaggedTensor:
  """Prepends / appends special ids along the last (ragged) axis of every text, an empty one included.

  An empty text gives [BOS, EOS] as HF's tokenizers do; padding captions are told apart by `sample_captions`'s
  validity marker instead (ops_text.tokenize zeroes their masks).
  """
  def one(token_id):
    if isinstance(ids, tf.RaggedTensor):
      outer = ids.bounding_shape()[:-1]
      col = tf.fill(tf.concat([outer, [1]], 0), tf.constant(token_id, ids.dtype))
      return tf.RaggedTensor.from_tensor(col, ragged_rank=ids.ragged_rank)
    return tf.constant([token_id], ids.dtype)

  if bos:
    if bos_id is None:
      raise ValueError("This vocabulary has no BOS token ([CLS] or <s>).")
    ids = tf.concat([one(bos_id), ids], axis=-1)
  if eos:
    if eos_id is None:
      raise ValueError("This vocabulary has no EOS token ([SEP] or </s>).")
    ids = tf.concat([ids, one(eos_id)], axis=-1)
  return ids


class WordTokenizer:
  """Whole-word tokenizer over a fixed vocabulary (VATT-style), OOV -> unk id.

  Attributes:
    vocab_size: number of ids (including any pad / unk added, see the module docstring).
    pad_id: 0.
    unk_id, bos_id, eos_id: ids of the special tokens (bos/eos None when the vocab has none).
  """

  def __init__(self, vocab_file: str, *, lower: bool = True):
    tokens = read_vocab(vocab_file)
    if not tokens:
      raise ValueError(f"Vocab file {vocab_file!r} is empty.")
    # Keep id 0 for padding: shift the file's ids by one unless line 0 is already a padding token.
    if tokens[0] not in PAD_TOKENS:
      tokens = ["[PAD]"] + tokens
    if _find(tokens, UNK_TOKENS) is None:
      tokens = tokens + ["[UNK]"]
    self.tokens = tokens
    self.vocab_file = vocab_file
    self.lower = lower
    self.vocab_size = len(tokens)
    self.pad_id = 0
    self.unk_id = _find(tokens, UNK_TOKENS)
    self.bos_id = _find(tokens, BOS_TOKENS)
    self.eos_id = _find(tokens, EOS_TOKENS)
    # Later duplicates must not shadow earlier ids: keep the first occurrence of each token.
    first = {}
    for i, t in enumerate(tokens[1:], start=1):
      first.setdefault(t, i)
    self._py_index = first
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(first.keys()), tf.string), tf.constant(list(first.values()), tf.int64)),
        default_value=self.unk_id)

  def _split(self, text: tf.Tensor) -> tf.RaggedTensor:
    if self.lower:
      text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, _PUNCT_RE, " ")
    return tf.strings.split(text)

  def to_int_tf_op(self, text: tf.Tensor, *, bos: bool = False, eos: bool = False) -> tf.RaggedTensor:
    """Strings [...] -> int32 ragged ids [..., (words)]."""
    text = tf.convert_to_tensor(text, tf.string)
    words = self._split(text)
    ids = tf.ragged.map_flat_values(lambda w: tf.cast(self._table.lookup(w), tf.int32), words)
    return _add_special(ids, self.bos_id, self.eos_id, bos, eos)

  def to_int(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    if self.lower:
      text = text.lower()
    words = re.sub(_PUNCT_RE, " ", text).split()
    ids = [self._py_index.get(w, self.unk_id) for w in words]
    if bos:
      ids = [self.bos_id] + ids
    if eos:
      ids = ids + [self.eos_id]
    return ids

  def to_str(self, ids: Sequence[int]) -> str:
    return " ".join(self.tokens[i] for i in np.asarray(ids).reshape(-1).tolist() if i != self.pad_id)


class WordPieceTokenizer:
  """BERT WordPiece tokenizer (`tensorflow_text.BertTokenizer`) over a BERT-style vocab file."""

  def __init__(self, vocab_file: str, *, lower: bool = True):
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top  (slow import, only when used)
    tokens = read_vocab(vocab_file)
    if not tokens:
      raise ValueError(f"Vocab file {vocab_file!r} is empty.")
    if tokens[0] not in PAD_TOKENS:
      raise ValueError(f"WordPiece vocab {vocab_file!r}: line 0 must be a padding token such as [PAD] "
                       f"(id 0 is padding in every batch), found {tokens[0]!r}.")
    unk = _find(tokens, UNK_TOKENS)
    if unk is None:
      raise ValueError(f"WordPiece vocab {vocab_file!r} has no unknown token ([UNK]).")
    self.tokens = tokens
    self.vocab_file = vocab_file
    self.lower = lower
    self.vocab_size = len(tokens)
    self.pad_id = 0
    self.unk_id = unk
    self.bos_id = _find(tokens, BOS_TOKENS)
    self.eos_id = _find(tokens, EOS_TOKENS)
    self._py_index = {t: i for i, t in reversed(list(enumerate(tokens)))}
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(tokens, tf.string), tf.range(len(tokens), dtype=tf.int64)), num_oov_buckets=1)
    # HF's BasicTokenizer + WordpieceTokenizer: our own normalisation (`_normalize`) and special-token handling,
    # then tensorflow_text's basic split (whitespace, punctuation, CJK) with its case folding OFF (it applies
    # NFKC compatibility folding) and WordPiece with a 100-character (not byte) word limit (`to_int_tf_op`).
    from tensorflow_text.python.ops import bert_tokenizer  # pylint: disable=g-import-not-at-top
    self._basic = bert_tokenizer.BasicTokenizer(lower_case=False, keep_whitespace=False)
    self._wordpiece = tf_text.WordpieceTokenizer(table, token_out_type=tf.int64, unknown_token=tokens[unk],
                                                 max_bytes_per_word=4 * _MAX_WORD_CHARS + 4)
    self.special = [t for t in ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]") if t in self._py_index]

  def _words(self, flat: tf.Tensor) -> tf.RaggedTensor:
    """Strings [N] -> words [N, (words)] as HF's BasicTokenizer splits them (special tokens whole)."""
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    text = tf.strings.regex_replace(flat, _CONTROL_RE, "")
    text = tf.strings.regex_replace(text, _SPACE_RE, " ")
    # Special tokens written in the text stay whole (HF splits them out first): a private-use placeholder
    # (the cleaning above removed any such character from the text) between spaces survives the split.
    for i, tok in enumerate(self.special):
      text = tf.strings.regex_replace(text, re.escape(tok), f" {chr(_PLACEHOLDER + i)} ")
    if self.lower:
      # HF lowers per character (capital sigma -> sigma); ICU's whole-string lowering gives final sigma at a
      # word's end.
      text = tf.strings.regex_replace(text, "\u03a3", "\u03c3")
      text = tf.strings.lower(text, encoding="utf-8")
      text = tf.strings.regex_replace(tf_text.normalize_utf8(text, "NFD"), r"\p{Mn}", "")
    words = self._basic.tokenize(text)
    values = words.flat_values
    values = tf.where(tf.strings.length(values, unit="UTF8_CHAR") > _MAX_WORD_CHARS, self.tokens[self.unk_id],
                      values)
    for i, tok in enumerate(self.special):
      values = tf.where(tf.equal(values, chr(_PLACEHOLDER + i)), tok, values)
    return words.with_flat_values(values)

  def to_int_tf_op(self, text: tf.Tensor, *, bos: bool = False, eos: bool = False) -> tf.RaggedTensor:
    """Strings [...] -> int32 ragged ids [..., (wordpieces)]."""
    text = tf.convert_to_tensor(text, tf.string)
    shape = tf.shape(text)
    flat = tf.reshape(text, [-1])
    ids = self._wordpiece.tokenize(self._words(flat)).merge_dims(-2, -1)  # [N, (words), (pieces)] -> [N, (pieces)]
    ids = tf.cast(ids, tf.int32)
    if text.shape.rank == 0:
      ids = ids[0]
    elif text.shape.rank > 1:
      ids = _reshape_ragged(ids, shape)
    return _add_special(ids, self.bos_id, self.eos_id, bos, eos)

  def to_int(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    ids = self.to_int_tf_op(tf.constant(text), bos=bos, eos=eos)
    return [int(i) for i in ids.numpy()]

  def to_str(self, ids: Sequence[int]) -> str:
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == self.pad_id:
        continue
      t = self.tokens[i] if 0 <= i < len(self.tokens) else self.tokens[self.unk_id]
      if t.startswith("##") and out:
        out[-1] += t[2:]
      else:
        out.append(t)
    return " ".join(out)


def _reshape_ragged(rt: tf.RaggedTensor, outer_shape: tf.Tensor) -> tf.RaggedTensor:
  """[prod(outer), (n)] ragged -> [*outer, (n)] (uniform outer dims)."""
  dims = tf.unstack(outer_shape)
  for d in reversed(dims[1:]):
    rt = tf.RaggedTensor.from_uniform_row_length(rt, tf.cast(d, tf.int64))
  return rt


def make_tokenizer(spec: Mapping[str, Any] | Tokenizer, *, default_vocab_file: str | None = None) -> Tokenizer:
  """Builds a tokenizer from `config.input.tokenizer` (see the module docstring) or returns one unchanged."""
  if isinstance(spec, (WordTokenizer, WordPieceTokenizer)) or (
      not isinstance(spec, Mapping) and hasattr(spec, "to_int_tf_op")):
    return spec
  spec = dict(spec)
  kind = spec.pop("kind", "words")
  vocab_file = spec.pop("vocab_file", None) or default_vocab_file
  if not vocab_file:
    raise ValueError("tokenizer: no vocab_file given and the data source provides none "
                     "(set config.input.tokenizer.vocab_file).")
  lower = spec.pop("lower", True)
  if spec:
    raise ValueError(f"tokenizer: unknown fields {sorted(spec)}; allowed: kind, vocab_file, lower.")
  if kind == "words":
    return WordTokenizer(vocab_file, lower=lower)
  if kind == "wordpiece":
    return WordPieceTokenizer(vocab_file, lower=lower)
  raise ValueError(f"tokenizer.kind must be 'words' or 'wordpiece', got {kind!r}.")


def read_names(names: str | Sequence[str] | None) -> list[str] | None:
  """A list of names as given, or read from a text file (one per line, blank lines skipped); None stays None
  (evaluators' answer lists and class names)."""
  if isinstance(names, str):
    with tf.io.gfile.GFile(names) as f:
      return [line.strip() for line in f if line.strip()]
  return None if names is None else list(names)


def tokenize_texts(texts: Sequence[str], tokenizer: Tokenizer, length: int) -> tuple[np.ndarray, np.ndarray]:
  """[C] strings -> ids [C, length] and mask, each `[CLS] text [SEP]` clipped or padded as the `tokenize` pp op
  writes a caption (for texts an evaluator embeds itself: answer lists, class-name prompts)."""
  ids = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    row = tokenizer.to_int(text, bos=True, eos=True)[:length]
    ids[i, :len(row)] = row
  return ids, (ids > 0).astype(np.int32)


def pad_or_clip(ids: tf.RaggedTensor, max_len: int, pad_id: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
  """Ragged ids [..., (n)] -> (ids int32 [..., max_len], mask int32 [..., max_len]); clipped or padded."""
  if not isinstance(ids, tf.RaggedTensor):
    # A scalar string tokenizes to a dense 1-D tensor: handle it as one row.
    ids, mask = pad_or_clip(tf.RaggedTensor.from_tensor(ids[None]), max_len, pad_id)
    return ids[0], mask[0]
  ids = ids[..., :max_len]
  mask = tf.ones_like(ids, tf.int32)
  dense = ids.to_tensor(default_value=pad_id)
  mask = mask.to_tensor(default_value=0)
  # to_tensor pads to the longest row only; pad the rest of the way to a static max_len.
  pad = max_len - tf.shape(dense)[-1]
  rank = dense.shape.rank
  paddings = [[0, 0]] * (rank - 1) + [[0, pad]]
  dense = tf.pad(dense, paddings, constant_values=pad_id)
  mask = tf.pad(mask, paddings)
  shape = dense.shape[:-1].concatenate([max_len])
  return tf.ensure_shape(tf.cast(dense, tf.int32), shape), tf.ensure_shape(mask, shape)


def build_word_vocab(texts: Iterable[str], path: str, *, max_size: int = 2**16, min_count: int = 1,
                     specials: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")) -> list[str]:
  """Writes a whole-word vocab (specials first, then words by descending count) usable by both tokenizers.

  Args:
    texts: a corpus of strings.
    path: output file, one token per line.
    max_size: total number of lines including the specials (VATT uses 2^16).
    min_count: words seen fewer times are dropped.
    specials: written first, in order (id 0 = padding).

  Returns:
    The tokens written, in id order.
  """
  counts = collections.Counter()
  for t in texts:
    counts.update(re.sub(_PUNCT_RE, " ", t.lower()).split())
  words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
  tokens = list(specials) + [w for w in words if w not in specials]
  tokens = tokens[:max_size]
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("\n".join(tokens) + "\n")
  return tokens
