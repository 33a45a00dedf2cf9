"""The variant grammar and config -> flax fields, shared by every family."""
import os

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import pytest

from vlm.models import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Net(nn.Module):
  width: int = 8
  depth: int = 2
  patch_size: int = 16
  frames: int = 4
  dropout_rate: float = 0.1
  dtype: object = jnp.float32


SIZES = {"tiny": dict(width=4, depth=1), "B": dict(width=768, depth=12)}


def test_sizes_then_config_then_derived():
  cfg = ml_collections.ConfigDict(dict(name="net", variant="B/8", dropout_rate=0.0, dtype="bfloat16"))
  kwargs = common.model_kwargs(_Net, cfg, sizes=SIZES, family="net", derived=dict(frames=8))
  assert kwargs == dict(width=768, depth=12, patch_size=8, dropout_rate=0.0, dtype=jnp.dtype("bfloat16"), frames=8)
  assert _Net(**kwargs).width == 768
  assert common.model_kwargs(_Net, {"variant": "tiny"}, sizes=SIZES, family="net") == dict(width=4, depth=1)


@pytest.mark.parametrize("cfg,match", [
    (dict(variant="XL"), r"config.model.variant='XL': net has no size 'XL'; expected one of \['B', 'tiny'\]"),
    (dict(variant="B/x"), r"the part after '/' is the patch side"),
    (dict(variant="B", widht=3), r"config.model.widht: not a field of .*_Net; fields: width, depth"),
    (dict(variant="B", frames=3), r"config.model.frames is derived from config.input"),
])
def test_bad_model_config_is_named(cfg, match):
  with pytest.raises(ValueError, match=match):
    common.model_kwargs(_Net, cfg, sizes=SIZES, family="net", derived=dict(frames=8))


def test_plain_turns_configdicts_and_lists_into_dicts_and_tuples():
  cfg = ml_collections.ConfigDict(dict(a=[1, [2, 3]], b=dict(c=[4])))
  assert common.plain(cfg) == {"a": (1, (2, 3)), "b": {"c": (4,)}}


def test_every_family_with_from_config_has_tiny():
  """`tiny` is the CPU size of every family, the same name everywhere (configs' tiny forms select it)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import pkgutil  # pylint: disable=g-import-not-at-top
  import vlm.models  # pylint: disable=g-import-not-at-top
  families = []
  for info in pkgutil.iter_modules(vlm.models.__path__):
    module = importlib.import_module(f"vlm.models.{info.name}")
    if hasattr(getattr(module, "Model", None), "from_config"):
      families.append(info.name)
      assert "tiny" in module.SIZES, info.name
      common.parse_variant("tiny", module.SIZES, family=info.name)
  assert {"vatt", "tubevit"} <= set(families)


@pytest.mark.parametrize("key, value", [("droptoken_rate", -0.5), ("droptoken_rate", 1.0), ("dropout_rate", 1.5),
                                        ("attention_dropout_rate", -0.1)])
def test_out_of_range_rates_are_errors_naming_the_key(key, value):
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  from vlm.models import vatt  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, "configs/vatt/pretrain.py") + ":tiny")
  with config.unlocked():
    config.model[key] = value
  with pytest.raises(ValueError, match=f"config.model.{key}={value}"):
    vatt.Model.from_config(config)
