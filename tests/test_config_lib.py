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
