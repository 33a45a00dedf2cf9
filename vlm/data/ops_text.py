"""Text pp ops: choose K candidate captions per clip and tokenize them to [K, L] ids with masks.

  sample_captions  `captions` string [K0] -> [K]: K candidates (MIL-NCE; VATT uses the caption plus its
                   neighbouring sentences). Training takes a random contiguous window of K (narrations are in
                   time order), eval the first K. Missing ones are padded with empty strings and marked in
                   `<key>_valid` bool [K]; `tokenize` gives them an all-zero mask: an invalid caption the
                   losses ignore. (A caption that is empty in the data is valid: [CLS] [SEP] with bos/eos.)
  tokenize         strings [...] -> `text` int32 [..., L] and `text_mask` int32 [..., L] (clipped or padded).
                   The tokenizer comes from `config.input.tokenizer` (the pipeline injects it as a default) or
                   from the op's `tokenizer=dict(kind=..., vocab_file=...)`.
  sample_qa        one (question, answer) pair of the QA lists (video QA: SViTT, TW-BERT).
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from vlm.data import pp
from vlm.data import vocab as vocab_lib
from vlm.data.pp import register


@register()
def sample_captions(num: int = 1, random: bool = True, key: str = "captions") -> pp.Op:
  """`key` string [K0] -> [num]: a random contiguous window (train) or the first `num` (eval), padded with ''.

  Also writes `<key>_valid` bool [num]: False for the padding, which `tokenize` masks out.
  """

  def op(data):
    caps = tf.reshape(tf.convert_to_tensor(data[key], tf.string), [-1])
    k0 = tf.shape(caps)[0]
    max_start = tf.maximum(k0 - num, 0)
    if random:
      start = tf.random.stateless_uniform([], pp.get_seed(data), 0, max_start + 1, dtype=tf.int32)
    else:
      start = 0
    chosen = caps[start:start + num]
    real = tf.shape(chosen)[0]
    chosen = tf.concat([chosen, tf.fill([num - real], "")], 0)
    valid = tf.range(num) < real
    return {**data, key: tf.ensure_shape(chosen, [num]), f"{key}_valid": tf.ensure_shape(valid, [num])}

  return op


@register()
def tokenize(max_len: int, tokenizer: Mapping[str, Any] | vocab_lib.Tokenizer | None = None,
             bos: bool = False, eos: bool = False, inkey: str = "captions", outkey: str = "text",
             mask_key: str = "text_mask") -> pp.Op:
  """Tokenizes strings [...] into int32 ids [..., max_len] plus a 1/0 mask, padding with 0.

  Args:
    max_len: L (VATT: 16 words).
    tokenizer: a `vocab.Tokenizer` or its config dict (`kind`, `vocab_file`, `lower`).
    bos, eos: add the vocabulary's BOS / EOS ids (counted within max_len; a clipped text keeps its EOS).
    inkey, outkey, mask_key: input strings, output ids and mask keys. When the data has `<inkey>_valid` (from
      `sample_captions`), texts marked False become all-pad ids with an all-zero mask, and the marker is consumed.
  """
  if tokenizer is None:
    raise ValueError("tokenize: no tokenizer; set config.input.tokenizer or pass tokenizer=dict(kind=..., "
                     "vocab_file=...).")
  tok = vocab_lib.make_tokenizer(tokenizer)

  def op(data):
    data = dict(data)
    valid = data.pop(f"{inkey}_valid", None)
    text = tf.convert_to_tensor(data[inkey], tf.string)
    ids = tok.to_int_tf_op(text, bos=bos, eos=False)
    if eos:  # truncation keeps the EOS ([SEP]) last, as HF's tokenizers do
      clipped = ids[..., :max_len - 1]
      ids = vocab_lib._add_special(clipped, None, tok.eos_id, False, True)  # pylint: disable=protected-access
    dense, mask = vocab_lib.pad_or_clip(ids, max_len, tok.pad_id)
    if valid is not None:
      keep = tf.cast(valid, mask.dtype)[..., None]
      mask = mask * keep
      dense = tf.where(keep > 0, dense, tf.constant(tok.pad_id, dense.dtype))
    # Ragged tokenization loses the static outer shape; eval padding and batching want it back.
    shape = text.shape.concatenate([max_len])
    return {**data, outkey: tf.ensure_shape(dense, shape), mask_key: tf.ensure_shape(mask, shape)}

  op.tokenizer = tok
  return op


@register()
def sample_qa(random: bool = True, question_key: str = "qa/question", answer_key: str = "qa/answer",
              index_key: str = "qa/answer/index", kind_key: str = "qa/kind/index") -> pp.Op:
  """One (question, answer) pair of a clip's QA lists: a random pair (train) or the first (eval).

  `question_key` / `answer_key` string [Q] (parsed via `config.input.extra_context`) -> `question`, `answer`
  strings []; `index_key` int [Q], when present, -> `answer_index` int32 [] (the answer's id in the dataset's
  closed answer list, which the QA evaluator ranks); `kind_key` int [Q], when present, -> `question_kind`
  int32 [] (the question's kind, for accuracy per kind; -1 where the list is shorter). A clip without QA pairs
  fails with an error naming the keys.
  """

  def op(data):
    questions = tf.reshape(tf.convert_to_tensor(data[question_key], tf.string), [-1])
    answers = tf.reshape(tf.convert_to_tensor(data[answer_key], tf.string), [-1])
    n = tf.shape(questions)[0]
    check = tf.debugging.assert_positive(n, message=f"sample_qa: a clip without QA pairs ({question_key!r} empty)")
    with tf.control_dependencies([check]):
      i = (tf.random.stateless_uniform([], pp.get_seed(data), 0, tf.maximum(n, 1), dtype=tf.int32) if random
           else tf.constant(0, tf.int32))
    out = {**data, "question": questions[i], "answer": answers[i]}
    if index_key in data:
      out["answer_index"] = tf.cast(tf.reshape(data[index_key], [-1])[i], tf.int32)
    if kind_key in data:
      kinds = tf.cast(tf.reshape(data[kind_key], [-1]), tf.int32)
      out["question_kind"] = tf.concat([kinds, [-1]], 0)[tf.minimum(i, tf.size(kinds))]
    return out

  return op
