"""VATT pre-training task: protocol, shapes, a few Adam steps, prediction functions, checkpoint adaptation."""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vlm import config_lib
from vlm.parallel import partitioning
from vlm.models import vatt
from vlm.tasks import contrastive
from vlm.train import init as init_lib


def tiny_config(**model):
  c = ml_collections.ConfigDict()
  c.model = {**dict(name="vatt", variant="tiny", text_vocab_size=50, dropout_rate=0.0,
                    attention_dropout_rate=0.0, scan=True), **model}
  c.task = dict(name="contrastive", va_weight=1.0, vt_weight=1.0, temperature=0.07)
  c.input = dict(num_frames=8, crop_size=32, fps=10.0, audio_sample_rate=3200, num_captions=2, max_text_len=6)
  return c


def random_batch(task, b=4):
  batch = task.dummy_batch(b)
  rng = np.random.default_rng(0)
  batch["video"] = rng.uniform(-1, 1, batch["video"].shape).astype(np.float32)
  batch["audio"] = rng.uniform(-1, 1, batch["audio"].shape).astype(np.float32)
  batch["text"] = rng.integers(1, 50, batch["text"].shape).astype(np.int32)
  batch["text"][1, 1, 3:] = 0  # a short caption
  batch["text_mask"] = (batch["text"] > 0).astype(np.int32)
  batch["text"][2], batch["text_mask"][2] = 0, 0  # a clip without text (AudioSet)
  batch["audio_mask"][3] = 0  # a clip without audio
  return batch


def test_config_fields_and_dummy_batch():
  task = contrastive.Task(tiny_config())
  batch = task.dummy_batch(3)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "video": ((3, 8, 32, 32, 3), np.float32), "audio": ((3, 2560), np.float32),  # 0.8 s at 3.2 kHz
      "audio_mask": ((3,), np.float32), "text": ((3, 2, 6), np.int32), "text_mask": ((3, 2, 6), np.int32)}
  assert task.model.video_pos_buckets == (2, 2, 2) and task.model.audio_pos_buckets == (20,)
  # Defaults reproduce VATT pre-training: 32x224x224 at 10 fps, 48 kHz audio, 4x16x16 and 128-sample patches.
  c = ml_collections.ConfigDict({"model": {"name": "vatt", "variant": "BBS"}})
  model = vatt.Model.from_config(c)
  assert model.video_pos_buckets == (8, 14, 14) and model.audio_pos_buckets == (1200,)
  assert (model.video_size, model.audio_size, model.text_size) == ("B", "B", "S")
  assert model.droptoken_rate == 0.5 and model.text_vocab_size == 2 ** 16
  assert vatt.input_shapes(None)["audio"] == (153_600,)
  inp = {"fps": None, "audio_samples": 1000}  # stride-based sampling: the audio length must be given
  assert vatt.input_shapes(inp)["audio"] == (1000,)
  with pytest.raises(ValueError, match="audio"):
    vatt.input_shapes({**inp, "audio_samples": 0})
  c.model.spectrogram = True
  assert vatt.Model.from_config(c).audio_pos_buckets == (152 // 16, 80 // 5)
  c.model.update(spectrogram=False, variant="MA-B")
  assert vatt.Model.from_config(c).modality_agnostic
  # config.task: its fields are the objective's; an unknown one is named.
  bad = tiny_config()
  bad.task.va_wieght = 1.0
  with pytest.raises(ValueError, match="config.task.va_wieght: not an option of the contrastive task"):
    contrastive.Task(bad)
  bad = tiny_config()
  bad.task.update(va_weight=0.0, vt_weight=0.0)
  with pytest.raises(ValueError, match="must be positive"):
    contrastive.Task(bad)


@pytest.mark.parametrize("variant", ["tiny", "MA-tiny"])
def test_init_variables_shard_under_every_preset(variant):
  task = contrastive.Task(tiny_config(variant=variant))
  abstract = jax.eval_shape(task.init_variables, jax.random.key(0), task.dummy_batch(2))  # boxed, no FLOPs
  assert set(abstract) == {"params", "batch_stats"}
  logical = partitioning.logical_specs(abstract)
  specs = flax.traverse_util.flatten_dict(logical["params"], sep="/")
  assert tuple(specs[f"{'backbone' if variant == 'MA-tiny' else 'video/encoder'}/encoderblock/mlp/wi/kernel"]) == (
      "layers", "embed", "mlp")
  assert tuple(specs["text/tokenizer/embedding"]) == ("vocab", None)
  assert tuple(specs["head/vid_to_hid/kernel"]) == ("embed", "proj")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  unboxed = flax.core.meta.unbox(abstract)
  for preset in ("dp", "fsdp", "fsdp_tp"):  # every name in the vocabulary, none twice in one array
    partitioning.mesh_shardings(unboxed, logical, mesh, partitioning.get_rules(preset, mesh=mesh))


def test_lead_config_builds_the_task():
  for arg, video in (("tiny", (2, 8, 32, 32, 3)), ("BBS", (2, 32, 224, 224, 3))):
    task = contrastive.Task(config_lib.load_config(f"configs/vatt/pretrain.py:{arg}"))
    batch = task.dummy_batch(2)
    assert batch["video"].shape == video
    jax.eval_shape(task.init_variables, jax.random.key(0), batch)


def numpy_variables(task, batch, seed=0):
  """init_variables' structure filled from numpy (scale 1, bias 0, weights N(0, 0.02)): no init to compile."""
  abstract = flax.core.meta.unbox(jax.eval_shape(task.init_variables, jax.random.key(0), batch))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = path[-1].key
    if name in ("scale", "var"):
      return np.ones(x.shape, x.dtype)
    if name in ("bias", "mean"):
      return np.zeros(x.shape, x.dtype)
    return (0.02 * rng.normal(size=x.shape)).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def trained():
  """Runs five Adam steps of the tiny model on one fixed batch."""
  task = contrastive.Task(tiny_config())
  batch = random_batch(task)
  variables = numpy_variables(task, batch)
  params = variables.pop("params")
  state0 = variables
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, model_state, rng):
    (loss, (metrics, model_state)), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        params, model_state, batch, rng, train=True)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, metrics, grads

  history, p, opt, state = [], params, tx.init(params), state0
  for i in range(5):
    p, opt, state, metrics, grads = step(p, opt, state, jax.random.fold_in(jax.random.key(1), i))
    history.append(jax.device_get(metrics))
    if i == 0:
      first_grads = grads
  return dict(task=task, batch=batch, params0=params, state0=state0, params=p, state=state, history=history,
              grads=first_grads)


def test_train_step_shapes_and_finite_loss(trained):
  m = trained["history"][0]
  assert set(m) == {"loss", "va_nce", "vt_milnce", "va_top1", "vt_top1", "audio_valid", "text_valid"}
  assert all(np.isfinite(v) for v in m.values())
  assert m["audio_valid"] == 0.75 and m["text_valid"] == 0.75
  assert m["loss"] == pytest.approx((m["va_nce"] + m["vt_milnce"]) / 2, rel=1e-5)
  shapes = lambda t: jax.tree_util.tree_map(lambda x: x.shape, t)
  assert shapes(trained["grads"]) == shapes(trained["params0"])
  # Frozen word2vec table: zero gradient; the rest of the text tower learns.
  g = trained["grads"]["text"]
  assert float(jnp.abs(g["tokenizer"]["embedding"]).max()) == 0.0
  assert float(jnp.abs(g["tokenizer"]["pre_projection"]["kernel"]).max()) > 0.0
  # BatchNorm statistics were updated in training.
  before = trained["state0"]["batch_stats"]["head"]["hid_to_va_bn"]["mean"]
  after = trained["state"]["batch_stats"]["head"]["hid_to_va_bn"]["mean"]
  assert not np.allclose(before, after)


def test_adam_steps_reduce_the_loss(trained):
  losses = [h["loss"] for h in trained["history"]]
  assert losses[-1] < losses[0] - 0.1, losses


def test_eval_loss_and_prediction_functions(trained):
  task, batch = trained["task"], trained["batch"]
  variables = {"params": trained["params"], **trained["state"]}

  @jax.jit
  def run(variables, rng):
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    loss, (metrics, new_state) = task.loss_fn(params, state, batch, rng, train=False)
    return (loss, new_state, task.embed_video(variables, batch["video"]),
            task.embed_text(variables, batch["text"][:, 0], batch["text_mask"][:, 0]))

  loss, new_state, vid, txt = run(variables, jax.random.key(2))
  loss2, *_ = run(variables, jax.random.key(3))
  assert np.isfinite(loss) and loss == loss2  # eval: no DropToken or dropout, running BN statistics
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, new_state,
                                                       {k: v for k, v in variables.items() if k != "params"}))
  assert vid.shape == (4, 256) and txt.shape == (4, 256)
  np.testing.assert_allclose(np.linalg.norm(vid, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1.0, rtol=1e-5)


def test_init_resamples_positional_tables(trained):
  """config.init from a checkpoint whose audio table has 30 buckets: vlm/models/vatt.py `load` resamples it."""
  task, params = trained["task"], trained["params"]
  loaded = jax.tree_util.tree_map(np.asarray, params)
  table = np.asarray(params["audio"]["posemb"]["temporal_embedding"])
  loaded["audio"]["posemb"]["temporal_embedding"] = np.repeat(table, 2, axis=0)[:30]  # 30 buckets -> 20
  out = init_lib.load_params(task.config, task.model, params, loaded)
  assert out["audio"]["posemb"]["temporal_embedding"].shape == table.shape
  np.testing.assert_array_equal(out["video"]["posemb"]["temporal_embedding"],
                                params["video"]["posemb"]["temporal_embedding"])
  loaded["head"]["aud_to_va"]["kernel"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match="aud_to_va"):
    init_lib.load_params(task.config, task.model, params, loaded)
