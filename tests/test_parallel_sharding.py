"""Mesh construction, logical rules, and parameters created already sharded (8 fake CPU devices)."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlm import config_lib
from vlm.parallel import axes
from vlm.parallel import mesh as mesh_lib
from vlm.parallel import multihost
from vlm.parallel import partitioning
from vlm.train import trainer


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
  assert mesh_lib.mesh_shape((("data", -1), ("fsdp", 2), ("tensor", 1)), 8) == (
      ("data", "fsdp", "tensor"), (4, 2, 1))
  with pytest.raises(ValueError, match="multiply to 6 but there are 8 devices"):
    mesh_lib.mesh_shape((("data", 3), ("fsdp", 2)), 8)
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    mesh_lib.mesh_shape((("data", -1), ("fsdp", 3)), 8)
  with pytest.raises(ValueError, match="at most one size -1"):
    mesh_lib.mesh_shape((("data", -1), ("fsdp", -1)), 8)
  mesh = mesh_lib.make_mesh((("data", 4), ("fsdp", 2)))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert mesh_lib.num_batch_shards(mesh) == 8


def test_presets_cover_the_vocabulary_and_drop_absent_mesh_axes():
  for name, rules in axes.PRESETS.items():
    assert {r[0] for r in rules} == set(axes.VOCABULARY), name
  mesh = mesh_lib.make_mesh((("data", 8),))
  rules = dict(partitioning.get_rules("fsdp_tp", mesh=mesh))
  assert rules["batch"] == "data" and rules["embed"] is None and rules["mlp"] is None
  rules = partitioning.get_rules("dp", overrides=[("mlp", "data")], mesh=mesh)
  assert rules[0] == ("mlp", "data")  # overrides come first, so they win
  with pytest.raises(ValueError, match="unknown logical axis 'hiden'"):
    partitioning.get_rules("dp", overrides=[("hiden", "data")])
  with pytest.raises(ValueError, match="Unknown config.sharding"):
    partitioning.get_rules("zero3")


def test_unknown_logical_name_is_an_error_naming_the_path():
  with pytest.raises(ValueError, match="dense/kernel: 'hidden'"):
    partitioning.check_logical_names({"dense": {"kernel": P("embed", "hidden")}})


def test_uneven_dimension_is_replicated():
  mesh = mesh_lib.make_mesh((("fsdp", 8),))
  abstract = {"a": jax.ShapeDtypeStruct((12, 16), np.float32), "b": jax.ShapeDtypeStruct((16, 12), np.float32)}
  logical = {"a": P("embed", None), "b": P("embed", None)}
  shardings = partitioning.mesh_shardings(abstract, logical, mesh, partitioning.get_rules("fsdp", mesh=mesh))
  assert shardings["a"].spec == P(None, None) and shardings["b"].spec == P("fsdp", None)


def test_sharded_init_on_4x2_mesh_keeps_specs():
  config = config_lib.load_config("tests/toy_task.py:sharding=fsdp_tp,evals=false")
  config.mesh = (("fsdp", 4), ("tensor", 2))
  setup = trainer.setup_mesh(config)
  task = trainer.build_task(config)
  spec = trainer.build_state_spec(config, task, setup, total_steps=10)
  state = spec.init()

  expected = {"Dense_0/kernel": P("fsdp", "tensor"), "Dense_0/bias": P("tensor"),
              "Dense_1/kernel": P("tensor", None), "Dense_1/bias": P(None)}
  assert partitioning.describe(spec.shardings.params) == {k: str(v) for k, v in expected.items()}
  for path, array in zip(expected, [state.params["Dense_0"]["kernel"], state.params["Dense_0"]["bias"],
                                    state.params["Dense_1"]["kernel"], state.params["Dense_1"]["bias"]]):
    assert array.sharding.spec == expected[path], path
  # Created sharded: each device holds a (16/4, 32/2) block of the first kernel.
  assert state.params["Dense_0"]["kernel"].addressable_shards[0].data.shape == (4, 16)
  # Optimizer moments follow their parameters; counters and the step are replicated.
  opt = partitioning.describe(spec.shardings.opt_state)
  assert any(k.endswith("mu/Dense_0/kernel") and v == str(P("fsdp", "tensor")) for k, v in opt.items())
  assert state.step.sharding.is_fully_replicated
  assert state.model_state["batch_stats"]["mean"].shape == (16,)


def test_batch_divisibility_errors_name_both_numbers():
  with pytest.raises(ValueError, match="12 is not divisible by the 8 data shards"):
    multihost.check_batch_size(12, 8, 1)
  with pytest.raises(ValueError, match="16 is not divisible by the 3 processes"):
    multihost.check_batch_size(16, 1, 3)
  assert multihost.check_batch_size(16, 8, 2) == 8
