"""SViTT tasks: pre-training losses and gradients, temporal expansion and QA decoder initialisation from a
checkpoint, the table A1 / A4 configurations, and bad configurations."""
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm import config_lib
from vlm.nn.kernels import block_sparse
from vlm.nn import video_positions
from vlm.tasks import matching
from vlm.tasks import answer_decoding
from vlm.train import init as init_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name="pretrain.py", arg="tiny", **overrides):
  config = config_lib.load_config(os.path.join(ROOT, "configs/svitt", name) + ":" + arg)
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _batch(task, b=8, seed=0):
  rng = np.random.default_rng(seed)
  batch = task.dummy_batch(b)
  batch["video"] = rng.uniform(-1, 1, batch["video"].shape).astype(np.float32)
  text = rng.integers(5, 150, batch["text"].shape).astype(np.int32)
  text[:, 0], text[:, 7], text[:, 8:] = 2, 3, 0
  batch["text"], batch["text_mask"] = text, (text > 0).astype(np.int32)
  return batch


SHALLOW = {"model.vision_layers": 2, "model.text_layers": 1, "model.fusion_layers": 1,
           "model.visual_prune_after": (1,)}  # compiles in a third of the time; every stage still runs


def test_pretrain_losses_reach_every_part_and_learn():
  task = matching.Task(_config(**SHALLOW))
  batch = _batch(task)
  params = flax.core.meta.unbox(task.init_variables(jax.random.key(0), batch)["params"])
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt, rng):
    (loss, (m, _)), g = jax.value_and_grad(lambda p: task.loss_fn(p, {}, batch, rng, train=True),
                                           has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, m, g

  opt = tx.init(params)
  params, opt, first, grads = step(params, opt, jax.random.key(1))
  for name in ("video_encoder", "text_encoder", "fusion_encoder", "vision_proj", "text_proj", "vtm_head",
               "mlm_head", "log_temperature"):
    norm = sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(grads[name]))
    assert np.isfinite(norm) and norm > 0, name
  assert first["vtc"] == pytest.approx(np.log(8), rel=0.2)  # the mean of two directions, near chance at init
  assert first["vtm"] == pytest.approx(np.log(2), rel=0.2)
  assert first["mlm"] == pytest.approx(np.log(160), rel=0.2)
  for _ in range(15):
    params, opt, m, _ = step(params, opt, jax.random.key(1))
  assert m["vtc"] < 0.5 * first["vtc"] and m["mlm"] < first["mlm"] and m["loss"] < first["loss"]


def test_temporal_expansion_and_the_qa_decoder_start_from_a_checkpoint():
  pre = matching.Task(_config(arg="tiny,frames=2", **{"model.vision_layers": 2}))
  batch = _batch(pre, b=2)
  loaded = flax.core.meta.unbox(pre.init_variables(jax.random.key(0), batch)["params"])
  loaded = jax.tree.map(np.asarray, loaded)
  config = _config("qa.py", "tiny", **{"model.vision_layers": 2})  # 4 frames, a 2-layer decoder
  qa = answer_decoding.Task(config)
  target = jax.eval_shape(lambda: qa.init_variables(jax.random.key(1), qa.dummy_batch(2))["params"])
  target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), flax.core.meta.unbox(target))
  with pytest.raises(ValueError, match="config.init.options.frames_from"):
    init_lib.load_params(config, qa.model, target, loaded)
  config = _config("qa.py", "tiny", **{"init.options.frames_from": 2, "model.vision_layers": 2})
  params = init_lib.load_params(config, qa.model, target, loaded)
  table = loaded["video_encoder"]["layer_00"]["relative_position_bias_table"]
  np.testing.assert_array_equal(params["video_encoder"]["layer_00"]["relative_position_bias_table"],
                                video_positions.expand_relative(table, (2, 4, 4), 4))
  for i in range(2):  # decoder layers from the multimodal layers, embeddings from f_t, head from MLM
    a = jax.tree.leaves(params["answer_decoder"][f"layer_{i:02d}"])
    b = jax.tree.leaves(loaded["fusion_encoder"][f"layer_{i:02d}"])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
  np.testing.assert_array_equal(params["answer_decoder"]["word_embeddings"], loaded["text_encoder"]["word_embeddings"])
  np.testing.assert_array_equal(params["answer_head"]["bias"], loaded["mlm_head"]["bias"])
  assert "log_temperature" not in params


def test_qa_loss_scores_and_answer_ranking():
  task = answer_decoding.Task(_config("qa.py", "tiny", **SHALLOW, **{"model.decoder_layers": 1}))
  batch = task.dummy_batch(3)
  rng = np.random.default_rng(0)
  batch["video"] = rng.uniform(-1, 1, batch["video"].shape).astype(np.float32)
  batch["answer"][:, 1], batch["answer"][:, 2] = [10, 11, 12], 3
  batch["answer_mask"] = (batch["answer"] > 0).astype(np.int32)
  variables = {"params": flax.core.meta.unbox(task.init_variables(jax.random.key(0), batch)["params"])}
  loss_of = jax.jit(lambda b: task.loss_fn(variables["params"], {}, b, jax.random.key(1), train=False)[0])
  cands = np.array([[2, 10, 3, 0, 0], [2, 11, 3, 0, 0], [2, 12, 3, 0, 0], [2, 12, 13, 3, 0]], np.int32)
  scores = np.asarray(jax.jit(task.answer_scores)(variables, batch["video"], batch["question"],
                                                   batch["question_mask"], jnp.asarray(cands),
                                                   jnp.asarray((cands > 0).astype(np.int32))))
  assert scores.shape == (3, 4) and (scores < 0).all()
  # The score of example i's own answer is minus its teacher-forced loss times its two predicted tokens.
  per_example = [loss_of({k: v[i:i + 1] for k, v in batch.items()}) for i in range(3)]
  np.testing.assert_allclose(scores[np.arange(3), [0, 1, 2]], -2 * np.asarray(per_example), rtol=1e-4)
  assert np.isfinite(per_example).all() and min(per_example) > 0


def test_table_a1_and_a4_configurations():
  for frames, batch, lr, keep, edges, sparsity in ((4, 512, 3e-5, (0.7, 0.1), 1.475e6, 0.802),
                                                   (8, 336, 1e-5, (0.6, 0.1), 2.605e6, 0.912),
                                                   (16, 192, 5e-6, (0.5, 0.1), 4.622e6, 0.961)):
    c = _config(arg=f"frames={frames}")
    assert (c.input.batch_size, c.optim.lr, c.optim.weight_decay, c.input.max_text_len) == (batch, lr, 0.02, 32)
    assert (c.model.visual_keep_rate, c.model.multimodal_keep_rate) == keep
    assert (c.model.local_blocks, c.model.random_blocks, c.model.block_size) == (1, 3, 56)
    task = matching.Task(c)
    got = task.attention_edges()
    assert got["edges"] == pytest.approx(edges, rel=1e-3) and got["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    assert task.token_counts()["video"] == frames * 196
  dense = matching.Task(_config(arg="frames=8,dense")).attention_edges()
  # Dense: equation 3's denominator leaves out the [CLS] edges that the count includes, hence just below 0.
  assert -2e-3 < dense["sparsity"] <= 0.0
  qa = _config("qa.py", "msrvtt_qa")
  assert (qa.input.max_question_len, qa.input.max_answer_len, qa.input.batch_size, qa.optim.lr) == (25, 5, 128, 5e-5)
  assert (qa.model.visual_keep_rate, qa.model.multimodal_keep_rate, qa.input.num_frames) == (0.6, 0.5, 8)
  ret = _config("retrieval.py", "didemo,frames=16")
  assert (ret.input.max_text_len, ret.input.batch_size, ret.task.mlm_weight) == (64, 32, 0.0)
  assert "tokenize(64," in ret.input.pp and "tokenize(64," in ret.evals.retrieval.input.pp
  assert _config("retrieval.py", "msrvtt,zeroshot").total_steps == 0


def test_bad_configurations_fail_before_compute():
  with pytest.raises(ValueError, match="keep rate"):
    matching.Task(_config(**{"model.visual_keep_rate": 1.5}))
  with pytest.raises(ValueError, match="exceeds the 2 blocks"):  # 1 frame of 4x4 patches, blocks of 8
    matching.Task(_config(arg="tiny,frames=1", **{"model.attention": "block_sparse"}))
  with pytest.raises(ValueError, match="table A4 has 4, 8 and 16"):
    _config(arg="frames=5")
  with pytest.raises(ValueError, match="512 positions"):
    matching.Task(_config(**{"input.max_text_len": 600}))
  with pytest.raises(ValueError, match="answer decoder"):
    answer_decoding.Task(_config("qa.py", "tiny", **{"model.decoder_layers": 0}))
  with pytest.raises(ValueError, match="takes one"):
    matching.flat_text(jnp.zeros((2, 3, 5)))
  assert block_sparse.num_blocks(64, 8) == 8
  finer = matching.Task(_config(**{"model.patch_size": 4}))  # 4 frames of 32 px in 4-px patches
  assert finer.token_counts()["video"] == 4 * 8 * 8 and finer.model.vision["patch_size"] == 4
  with pytest.raises(ValueError, match="not a multiple of the 5-pixel patches"):
    matching.Task(_config(**{"model.patch_size": 5}))


def test_run_from_scratch_starts_from_hf_beit_and_bert(tmp_path):
  """config.init.options.beit / .bert (vlm/models/svitt.py `load`): HF weights land in the video, text and
  multimodal encoders and the MLM head (f_t matches HF BERT's hidden states after its first L_t layers); the
  cross-attention and projections stay fresh; a head count or grid that does not fit is an error."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  beit_cfg = transformers.BeitConfig(
      hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32,
      patch_size=8, use_relative_position_bias=True, use_absolute_position_embeddings=True, use_mean_pooling=True,
      layer_scale_init_value=0.1, layer_norm_eps=1e-12)
  bert_cfg = transformers.BertConfig(vocab_size=160, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=512, layer_norm_eps=1e-12)
  hf_bert = transformers.BertForMaskedLM(bert_cfg).eval()
  for model, name in ((transformers.BeitModel(beit_cfg), "beit"), (hf_bert, "bert")):
    with torch.no_grad():
      for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path / name))
  overrides = {**SHALLOW, "model.text_layers": 1, "model.fusion_layers": 1,
               "init.options.beit": str(tmp_path / "beit/model.safetensors"),
               "init.options.bert": str(tmp_path / "bert/model.safetensors")}
  config = _config(**overrides)
  task = matching.Task(config)
  batch = _batch(task, b=2)
  shapes = flax.core.meta.unbox(jax.eval_shape(lambda: task.init_variables(jax.random.key(0), batch))["params"])
  rng = np.random.default_rng(0)  # stands in for a fresh init (traced, not compiled: the hook reads only values)
  fresh = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), shapes)
  params = init_lib.load_params(config, task.model, fresh, None)

  state = {k: v.numpy() for k, v in hf_bert.state_dict().items()}
  np.testing.assert_array_equal(params["fusion_encoder"]["layer_00"]["mlp"]["wi"]["kernel"],
                                state["bert.encoder.layer.1.intermediate.dense.weight"].T)  # f_m = BERT layer 1
  np.testing.assert_array_equal(params["mlm_head"]["bias"], state["cls.predictions.bias"])
  assert params["video_encoder"]["pos_embedding"].shape[1] == 1 + 4 * 16  # the image table on every frame
  for kept in (("fusion_encoder", "layer_00", "cross_attention"), ("vision_proj",), ("vtm_head",)):
    a, b = params, fresh
    for k in kept:
      a, b = a[k], b[k]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), kept
  ids = jnp.asarray(batch["text"])
  ours = task.model.apply({"params": params}, ids, jnp.asarray(batch["text_mask"]), method="encode_text")[0]
  with torch.no_grad():
    theirs = hf_bert.bert(torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(batch["text_mask"]),
                          output_hidden_states=True).hidden_states[1].numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)

  bad = tmp_path / "bad"
  bad.mkdir()
  config = dict(json.loads((tmp_path / "bert/config.json").read_text()), num_attention_heads=4)
  (bad / "config.json").write_text(json.dumps(config))
  (bad / "model.safetensors").write_bytes((tmp_path / "bert/model.safetensors").read_bytes())
  with pytest.raises(ValueError, match="4 attention heads; the model has 2"):
    config = _config(**{**overrides, "init.options.bert": str(bad / "model.safetensors")})
    init_lib.load_params(config, matching.Task(config).model, fresh, None)
  with pytest.raises(ValueError, match="4-patch grid.*set input.crop_size"):
    config = _config(**{**overrides, "input.crop_size": 64})
    init_lib.load_params(config, matching.Task(config).model, fresh, None)


def test_svitt_backbone_classifies_from_a_pretraining_checkpoint():
  from vlm.models import svitt  # pylint: disable=g-import-not-at-top
  from vlm.tasks import classification  # pylint: disable=g-import-not-at-top
  pre = matching.Task(_config(**SHALLOW))
  pre_batch = _batch(pre, b=2)
  pre_params = jax.tree.map(np.asarray, flax.core.meta.unbox(
      pre.init_variables(jax.random.key(3), pre_batch)["params"]))

  def classifier(frames, **init):
    config = _config(**SHALLOW)
    with config.unlocked():
      config.task = dict(name="classification", heads={"videos": 12})
      config.input.num_frames = frames
      config.init.assignment_map = ((r"backbone/(.*)", r"\1"), (r"head_.*", None))
      for k, v in init.items():
        config.init.options[k] = v
    return config, classification.Task(config)

  config, task = classifier(4)
  assert isinstance(task.backbone, svitt.VideoBackbone)
  video = pre_batch["video"]
  fresh = task.init_variables(jax.random.key(0), {"video": video})["params"]
  assert set(init_lib.flatten(fresh["backbone"])) == {
      k for k in init_lib.flatten(pre_params) if k.startswith("video_encoder/")}
  params = init_lib.load_params(config, task.model, fresh, pre_params)
  got = task.features({"params": params}, {"video": video})
  want = pre.model.apply({"params": pre_params}, video,
                         method=lambda m, v: m.video_encoder(v, train=False)[1]["pooled"])
  assert got.shape == (2, 64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # 8 frames from the 4-frame checkpoint: the relative tables expanded (equation 7), the rest as saved.
  config8, task8 = classifier(8, frames_from=4)
  video8 = np.concatenate([video, video], axis=1)
  fresh8 = task8.init_variables(jax.random.key(0), {"video": video8})["params"]
  params8 = init_lib.load_params(config8, task8.model, fresh8, pre_params)
  table = "backbone/video_encoder/layer_01/relative_position_bias_table"
  side = config8.input.crop_size // 8
  np.testing.assert_array_equal(
      init_lib.flatten(params8)[table],
      video_positions.expand_relative(init_lib.flatten(pre_params)[table[len("backbone/"):]], (4, side, side), 8))
  config8.init.options.frames_from = None
  with pytest.raises(ValueError, match="frames_from"):
    init_lib.load_params(config8, task8.model, fresh8, pre_params)
