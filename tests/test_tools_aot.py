"""vlm.tools.aot: every family's tiny config compiles ahead of time for a TPU topology with each sharding preset.

Needs libtpu (`pip install -e ".[tpu]"`), not a TPU; skipped where libtpu is not installed (the CPU-only test
venv). Run it in a venv with jax[tpu]:  python -m pytest -q tests/test_tools_aot.py

One XLA:TPU compile of a tiny config takes 25-75 s on a shared 2-core VM, so by default every family compiles
with fsdp_tp (the preset that uses all three mesh axes) and TubeViT, the quickest, with dp and fsdp too: every
family and every preset, 5 compiles. VLM_AOT_ALL=1 runs the whole family x preset matrix (9 compiles; 7.3 min
on the shared VM).
"""
import os
import re

import pytest

# libtpu takes /tmp/libtpu_lockfile per process; a test machine has no TPU to protect, so let a second process
# (another AOT compile) load it too.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

pytest.importorskip("libtpu", reason="AOT compilation for TPU needs libtpu (pip install -e '.[tpu]').")

from vlm import config_lib  # pylint: disable=g-import-not-at-top
from vlm.tools import aot  # pylint: disable=g-import-not-at-top

TOPOLOGY = "v5e:2x2"
FAMILIES = {
    "vatt": "configs/vatt/pretrain.py:tiny",
    "tubevit": "configs/tubevit/kinetics.py:tiny",
    "svitt": "configs/svitt/pretrain.py:tiny",
}
PRESETS = {  # preset -> the mesh it is expected to build over the 4 chips of v5e:2x2
    "dp": {"data": 4, "fsdp": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": 4, "tensor": 1},
    "fsdp_tp": {"data": 1, "fsdp": 2, "tensor": 2},
}


def _config(spec, preset, batch=8):
  config = config_lib.load_config(spec)
  aot.apply_preset(config, preset, tensor=2)
  with config.unlocked():
    config.input.batch_size = batch
  return config


DEFAULT_CASES = {("vatt", "fsdp_tp"), ("tubevit", "dp"), ("tubevit", "fsdp"), ("tubevit", "fsdp_tp"),
                 ("svitt", "fsdp_tp")}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_config_compiles_and_fits(family, preset):
  if (family, preset) not in DEFAULT_CASES and not os.environ.get("VLM_AOT_ALL"):
    pytest.skip("one of the 9 family x preset compiles outside the default 5; VLM_AOT_ALL=1 runs it")
  report = aot.aot(_config(FAMILIES[family], preset), TOPOLOGY)
  assert report["chip"] == "v5e" and report["devices"] == 4
  assert report["mesh"] == PRESETS[preset]
  assert report["sharding_preset"] == preset
  memory = report["train_step"]["memory_bytes_per_device"]
  for key in ("arguments", "outputs", "temporaries", "generated_code", "live"):
    assert memory[key] > 0, (key, memory)
  assert report["train_step"]["flops_per_device"] > 0
  assert report["fits"] is True
  assert re.fullmatch(r"fits: yes \([0-9.e-]+ GiB of 16 GiB per chip, [0-9.]+% headroom\)", report["verdict"]), \
      report["verdict"]
  params = report["params"]
  if preset == "dp":
    assert params["sharded_fraction"] == 0.0
    assert params["bytes_per_device"] == params["bytes"]
  else:  # the embedding dimension over fsdp (and, fsdp_tp, heads / mlp / vocab over tensor) where they divide;
    # tiny VATT's 1024 x 300 word table (300 not divisible by 4) stays replicated: 33% of its values are sharded
    assert params["sharded_fraction"] > 0.25, params
    assert params["bytes_per_device"] < 0.9 * params["bytes"], params
    assert report["opt_state"]["bytes_per_device"] < 0.9 * report["opt_state"]["bytes"]


def test_verdict_lines():
  gib = aot.GiB
  assert aot.verdict(4 * gib, 16) == "fits: yes (4 GiB of 16 GiB per chip, 75.0% headroom)"
  assert aot.verdict(20 * gib, 16) == "fits: NO (needs 20 GiB, chip has 16 GiB)"


def test_bad_inputs_fail_before_compiling():
  with pytest.raises(ValueError, match="does not know this topology"):
    aot.topology_devices("v9z:2x2")
  config = _config(FAMILIES["tubevit"], "dp", batch=6)  # 6 examples over 4 data shards
  with pytest.raises(ValueError, match="not divisible by the 4 data shards"):
    aot.aot(config, TOPOLOGY)
  config = _config(FAMILIES["tubevit"], None)
  with config.unlocked():
    config.mesh = (("data", 3), ("fsdp", 1), ("tensor", 1))
  with pytest.raises(ValueError, match="sizes multiply to 3 but there are 4 devices"):
    aot.aot(config, TOPOLOGY)
