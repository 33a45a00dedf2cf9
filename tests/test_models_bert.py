"""BERT text encoder (SViTT f_t): parity with HF transformers' BertModel (random weights, padding mask), and the
split of one BERT into text layers and cross-attending multimodal layers."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm.models import bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=16, hidden_act="gelu", layer_norm_eps=1e-12)


@pytest.fixture(scope="module")
def hf_bert():
  torch.manual_seed(0)
  model = transformers.BertModel(transformers.BertConfig(**CONFIG), add_pooling_layer=False).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  flat = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, flat


def _ids():
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 50, (3, 10))
  mask = np.ones((3, 10), np.int64)
  mask[1, 6:] = 0
  mask[2, 3:] = 0
  return ids, mask


def test_hf_bert_parity(hf_bert):
  model, flat = hf_bert
  ids, mask = _ids()
  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  ours = bert.BertEncoder(vocab_size=50, num_layers=3, hidden_size=32, mlp_dim=64, num_heads=2, max_positions=16)
  params = bert.from_hf_bert(flat, 2)
  got, _ = ours.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  real = mask.astype(bool)  # padded positions are not compared (neither model masks their queries)
  np.testing.assert_allclose(np.asarray(got)[real], expected[real], atol=2e-5, rtol=1e-4)
  with pytest.raises(ValueError, match="longer than the 16 positions"):
    ours.apply({"params": params}, jnp.zeros((1, 17), jnp.int32))


def test_split_bert_and_cross_attention(hf_bert):
  """Layers 0-1 as the text encoder and layer 2 run on their output (embed=False) give the full BERT; with
  cross-attention, the video context changes the text states and masked context tokens do not."""
  model, flat = hf_bert
  ids, mask = _ids()
  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  real = mask.astype(bool)
  text = bert.BertEncoder(vocab_size=50, num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2, max_positions=16)
  h, _ = text.apply({"params": bert.from_hf_bert(flat, 2, num_layers=2)}, jnp.asarray(ids), jnp.asarray(mask))
  upper = bert.BertEncoder(num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2, embed=False)
  out, _ = upper.apply({"params": bert.from_hf_bert(flat, 2, first_layer=2, embeddings=False)}, h,
                       jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=2e-5, rtol=1e-4)

  fusion = bert.BertEncoder(num_layers=1, hidden_size=32, mlp_dim=64, num_heads=2, cross_attention_from=0,
                            embed=False)
  video = jax.random.normal(jax.random.key(0), (3, 5, 24))
  video_mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  params = fusion.init(jax.random.key(1), h, jnp.asarray(mask), context=video)["params"]
  run = lambda v: np.asarray(fusion.apply({"params": params}, h, jnp.asarray(mask), context=v,
                                          context_mask=video_mask)[0])
  base = run(video)
  moved = video.at[1, 3:].add(5.0).at[2, 1:].add(5.0)  # only masked context tokens change
  np.testing.assert_allclose(run(moved), base, atol=1e-5)
  assert not np.allclose(run(video.at[0, 0].add(5.0))[0], base[0], atol=1e-3)
  with pytest.raises(ValueError, match="pass the context"):
    fusion.apply({"params": params}, h, jnp.asarray(mask))


def test_real_minilm_weights_match_hf():
  """all-MiniLM-L6-v2's real weights (tests/media_files.py fetches them) in our text encoder, on text tokenised
  by tensorflow_text with its vocab.txt: the same hidden states as HF transformers' BertModel."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import media_files  # pylint: disable=g-import-not-at-top
  path = media_files.minilm_dir()
  if path is None:
    pytest.skip("MiniLM-L6 weights not fetched: run python tests/media_files.py")
  text_lib = pytest.importorskip("tensorflow_text")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  with open(os.path.join(path, "config.json")) as f:
    cfg = json.load(f)
  sentences = ["A man is riding a horse on the beach.", "Two dogs play in the snow"]
  tokenizer = text_lib.BertTokenizer(os.path.join(path, "vocab.txt"), lower_case=True, token_out_type=tf.int64)
  vocab = open(os.path.join(path, "vocab.txt")).read().split("\n")
  cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
  pieces = [list(tokenizer.tokenize([s]).merge_dims(1, -1).to_list()[0]) for s in sentences]
  length = max(len(p) for p in pieces) + 2
  ids = np.zeros((2, length), np.int64)
  mask = np.zeros((2, length), np.int64)
  for i, p in enumerate(pieces):
    row = [cls] + p + [sep]
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  assert list(ids[0, 1:11]) == [1037, 2158, 2003, 5559, 1037, 3586, 2006, 1996, 3509, 1012]  # bert-base-uncased's ids for the caption
  reference = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
  with torch.no_grad():
    expected = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
  ours = bert.BertEncoder(vocab_size=cfg["vocab_size"], num_layers=cfg["num_hidden_layers"],
                          hidden_size=cfg["hidden_size"], mlp_dim=cfg["intermediate_size"],
                          num_heads=cfg["num_attention_heads"], max_positions=cfg["max_position_embeddings"])
  params = bert.from_hf_bert(load_file(os.path.join(path, "model.safetensors")), cfg["num_attention_heads"])
  got, _ = ours.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], expected.numpy()[real], atol=1e-4, rtol=1e-4)


def test_causal_cross_attending_decoder_matches_hf():
  """The QA answer decoder: HF BertModel(is_decoder, add_cross_attention) with encoder states = our causal
  BertEncoder with cross-attention from layer 0, and a later token never changes an earlier position."""
  torch.manual_seed(1)
  cfg = transformers.BertConfig(**CONFIG, is_decoder=True, add_cross_attention=True)
  model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  flat = {k: v.numpy() for k, v in model.state_dict().items()}
  ids, mask = _ids()
  context = np.random.default_rng(1).normal(size=(3, 7, 32)).astype(np.float32)
  context_mask = np.ones((3, 7), np.int64)
  context_mask[0, 5:] = 0
  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     encoder_hidden_states=torch.from_numpy(context),
                     encoder_attention_mask=torch.from_numpy(context_mask)).last_hidden_state.numpy()
  ours = bert.BertEncoder(vocab_size=50, num_layers=3, hidden_size=32, mlp_dim=64, num_heads=2, max_positions=16,
                          cross_attention_from=0, causal=True)
  params = bert.from_hf_bert(flat, 2)
  run = lambda i: np.asarray(ours.apply({"params": params}, jnp.asarray(i), jnp.asarray(mask),
                                        context=jnp.asarray(context), context_mask=jnp.asarray(context_mask))[0])
  got = run(ids)
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], expected[real], atol=2e-5, rtol=1e-4)
  changed = ids.copy()
  changed[:, 4:] = 7
  np.testing.assert_allclose(run(changed)[:, :4], got[:, :4], atol=1e-6)
  assert np.abs(run(changed)[0, 5] - got[0, 5]).max() > 1e-3


def test_multimodal_pruning_keeps_what_the_text_cls_attends_to():
  """q_m pruning after layer 1: layer 2 sees [CLS] + the ceil(q N) video tokens with the highest text-[CLS]
  cross-attention of layer 1 (head-averaged), in their original order."""
  rng = np.random.default_rng(2)
  ids = jnp.asarray(rng.integers(5, 50, (2, 6)))
  context = jnp.asarray(rng.normal(size=(2, 11, 24)).astype(np.float32))
  kw = dict(vocab_size=50, hidden_size=32, mlp_dim=64, num_heads=2, max_positions=16, cross_attention_from=0,
            dropout_rate=0.0)
  enc = bert.BertEncoder(num_layers=2, context_prune_after=(1,), context_keep_rate=0.4, **kw)
  params = enc.init(jax.random.key(0), ids, context=context)["params"]
  out, aux = enc.apply({"params": params}, ids, context=context)
  kept, kept_mask = aux["context"], aux["context_mask"]
  assert kept.shape == (2, 1 + 4, 24) and kept_mask is None  # ceil(0.4 * 10) = 4
  assert aux["layers"][0]["cls_attention"].shape == (2, 10) and aux["layers"][1] == {}
  # Reference: the embeddings, then layer 1 with its [CLS] cross-attention, pruned by hand, then layer 2.
  plain = bert.BertEncoder(num_layers=0, **kw)
  x, _ = plain.apply({"params": {k: v for k, v in params.items() if not k.startswith("layer_")}}, ids)
  layer = lambda **f: bert.BertBlock(2, 64, cross_attention=True, dropout_rate=0.0, attention_dropout_rate=0.0, **f)
  carry, layer_aux = layer(context_keep_rate=0.4).apply({"params": params["layer_00"]},
                                                        {"x": x, "context": context}, {}, 0, False)
  x1, scores = carry["x"], layer_aux["cls_attention"]
  top = np.sort(np.argsort(-np.asarray(scores), axis=1)[:, :4], axis=1)
  manual = np.concatenate([np.asarray(context)[:, :1],
                           np.take_along_axis(np.asarray(context)[:, 1:], top[..., None], axis=1)], axis=1)
  np.testing.assert_allclose(np.asarray(kept), manual, atol=1e-6)
  np.testing.assert_allclose(np.asarray(carry["context"]), manual, atol=1e-6)
  carry2, _ = layer().apply({"params": params["layer_01"]}, {"x": x1, "context": jnp.asarray(manual)}, {}, 1, False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(carry2["x"]), atol=1e-5)
  with pytest.raises(ValueError, match="keep rate"):
    bert.BertEncoder(num_layers=2, context_prune_after=(1,), context_keep_rate=1.5, **kw).init(
        jax.random.key(0), ids, context=context)


def test_hf_distilbert_parity(tmp_path):
  """DistilBERT (HierVL's text encoder): the BERT encoder without token types, from a saved HF DistilBertModel."""
  torch.manual_seed(2)
  config = transformers.DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                         max_position_embeddings=16)
  model = transformers.DistilBertModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path))
  from vlm.models import hf_weights  # pylint: disable=g-import-not-at-top
  params = bert.from_hf_distilbert(hf_weights.read_weights(str(tmp_path / "model.safetensors")), 2)
  ids, mask = _ids()
  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
  ours = bert.BertEncoder(vocab_size=50, num_layers=2, hidden_size=32, mlp_dim=64, num_heads=2, max_positions=16,
                          type_vocab_size=0)
  fresh = ours.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask))["params"]
  assert jax.tree.map(np.shape, flax.core.meta.unbox(fresh)) == \
      jax.tree.map(np.shape, params)
  got, _ = ours.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], expected[real], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(got)[:, 0], expected[:, 0], atol=1e-4, rtol=1e-4)  # the CLS HierVL reads
