"""The strict FILE:ARG parser and config loading."""
import pytest

from vlm import config_lib


def test_parse_arg_types_flags_and_positional():
  cfg = config_lib.parse_arg("LBS,tiny,batch=8,lr=0.5", variant="BBS", tiny=False, batch=2048, lr=1e-4)
  assert cfg.variant == "LBS" and cfg.tiny is True and cfg.batch == 8 and cfg.lr == 0.5
  assert isinstance(cfg.batch, int) and isinstance(cfg.lr, float)
  assert config_lib.parse_arg(None, variant="BBS", tiny=False).variant == "BBS"
  assert config_lib.parse_arg("tiny=false", tiny=True).tiny is False


@pytest.mark.parametrize("arg,match", [
    ("bogus=1", "Unknown config arg 'bogus'"),
    ("batch=eight", "expected an integer"),
    ("tiny=maybe", "expected a boolean"),
    ("BBS,LBS", "Unknown config arg 'LBS'"),
])
def test_parse_arg_rejects_bad_input(arg, match):
  with pytest.raises(ValueError, match=match):
    config_lib.parse_arg(arg, variant="BBS", tiny=False, batch=2048)


def test_parsed_arg_is_locked():
  cfg = config_lib.parse_arg("", variant="BBS")
  with pytest.raises(AttributeError):
    cfg.new_field = 1


def test_load_config_missing_file():
  with pytest.raises(FileNotFoundError, match="does not exist"):
    config_lib.load_config("configs/nope.py:tiny")


def test_explicit_args_survive_the_tiny_block():
  """The tiny block runs first; `apply_args` then writes what the arg string set (`steps=500000,tiny`)."""
  a = config_lib.parse_arg("tiny,steps=500000", variant="BBS", tiny=False, batch=2048, steps=500_000)
  assert a.explicit == ("tiny", "steps")
  c = config_lib.experiment(total_steps=a.steps)
  c.input = dict(batch_size=a.batch)
  if a.tiny:
    c.total_steps, c.input.batch_size = 1200, 32
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  assert c.total_steps == 500_000 and c.input.batch_size == 32
  with pytest.raises(KeyError, match="'lr' is not an arg"):
    config_lib.apply_args(c, a, lr="optim.lr")
  with pytest.raises(ValueError, match="'explicit' is reserved"):
    config_lib.parse_arg("", explicit=False)


def test_shared_blocks():
  c = config_lib.experiment(total_steps=10)
  assert c.init.path is None and c.init.assignment_map == () and not c.init.fallback_to_scratch
  c.init.path = "/tmp/x"  # a placeholder accepts a string
  config_lib.parallelism(c, sharding="fsdp")
  assert c.sharding == "fsdp" and c.mesh[0] == ("data", -1)
  o = config_lib.optimizer("adamw", 1e-3, weight_decay=0.05, warmup_steps=5, b1=0.9)
  assert o.b1 == 0.9 and o.schedule.warmup_steps == 5 and o.grad_clip_norm is None


def _at(config, path):
  for part in path.split("."):
    config = config[part]
  return config


# One `tiny` block per config file shrinks the run; what the arg string set explicitly is written over it.
@pytest.mark.parametrize("spec,want", [
    ("configs/vatt/pretrain.py:tiny,steps=500000", {"total_steps": 500_000, "input.batch_size": 32}),
    ("configs/vatt/pretrain.py:tiny,batch=2048", {"total_steps": 1200, "input.batch_size": 2048}),
    ("configs/vatt/pretrain.py:MA,tiny", {"model.variant": "MA-tiny", "input.num_frames": 8}),
    ("configs/vatt/finetune.py:tiny,steps=100000", {"total_steps": 100_000, "input.batch_size": 32}),
    ("configs/vatt/finetune.py:tiny,batch=8", {"total_steps": 1000, "input.batch_size": 8}),
    ("configs/vatt/linear_eval.py:tiny,variant=MA", {"model.variant": "MA-tiny", "evals.linear.num_classes": 12}),
    ("configs/tubevit/kinetics.py:tiny,steps=300000,batch=256", {"total_steps": 300_000, "input.batch_size": 256}),
    ("configs/tubevit/kinetics.py:tiny,frames=64,tubes=table3,image_weight=0.5",
     {"input.num_frames": 64, "model.tubes": "table3", "input.mixture.images.weight": 0.5, "model.variant": "tiny"}),
    ("configs/tubevit/finetune.py:tiny,steps=5,batch=8,frames=8",
     {"total_steps": 5, "input.batch_size": 8, "input.num_frames": 8, "model.variant": "tiny"}),
    ("configs/svitt/pretrain.py:tiny,steps=4800", {"total_steps": 4800, "input.batch_size": 32}),
    ("configs/svitt/retrieval.py:tiny,steps=9,frames=8", {"total_steps": 9, "input.num_frames": 8}),
    ("configs/svitt/retrieval.py:dataset=tiny", {"total_steps": 400, "input.num_frames": 4}),
    ("configs/svitt/qa.py:tiny,steps=2400,frames=1", {"total_steps": 2400, "input.num_frames": 1}),
])
def test_an_explicit_arg_is_never_replaced_by_the_tiny_form(spec, want):
  import os  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, spec))
  assert {path: _at(config, path) for path in want} == want


def test_every_config_file_has_one_tiny_block_and_no_tiny_ternaries():
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  paths = glob.glob(os.path.join(root, "configs", "**", "*.py"), recursive=True)
  assert paths
  for path in paths:
    code = open(path).read()
    assert len(re.findall(r"^  if (a\.)?tiny:", code, re.M)) == 1, path
    # (forwarding the flag to a base config, `",tiny" if tiny else ""`, is not a tiny value)
    assert not re.search(r"[^\"'] if (not )?(a\.)?tiny else\b", code), path


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0.0", r"config.optim.lr=0.0: expected a learning rate > 0"),
    ("optim.lr=nan", r"config.optim.lr=nan: expected a learning rate > 0"),
    ("optim.schedule.warmup_steps=-1", r"config.optim.schedule.warmup_steps=-1: expected a step count >= 0"),
    ("total_steps=-1", r"config.total_steps=-1: expected a step count >= 0 \(0: evaluation only"),
    ("input.batch_size=0", r"config.input.batch_size=0: expected a batch size >= 1"),
    ("input.num_frames=0", r"config.input.num_frames=0: expected a count >= 1"),
    ("model.droptoken_rate=1.0", r"config.model.droptoken_rate=1.0: expected a drop rate in \[0, 1\)"),
    ("task.temperature=-0.1", r"config.task.temperature=-0.1: expected a temperature > 0"),
    ("keep_checkpoints=0", r"config.keep_checkpoints=0: expected at least 1"),
])
def test_out_of_range_values_are_reported_when_the_task_is_built(override, message):
  """Every config's numbers are range-checked by key name (config_lib.RANGE_RULES) before any model exists."""
  import os  # pylint: disable=g-import-not-at-top
  from vlm import registry  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs/vatt/pretrain.py:tiny"))
  key, value = override.split("=")
  *parents, leaf = key.split(".")
  with config.unlocked():
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(float(value))
  with pytest.raises(ValueError, match=message):
    registry.build_task(config)


def test_every_shipped_config_is_in_range():
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for path in sorted(glob.glob(os.path.join(root, "configs", "*", "*.py"))):
    for arg in ("tiny", ""):
      config_lib.check_ranges(config_lib.load_config(f"{path}:{arg}" if arg else path))
