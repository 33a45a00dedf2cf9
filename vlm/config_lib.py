"""Helpers shared by config files: the strict `FILE:ARG` parser and config loading.

Command lines use `ml_collections.config_flags.DEFINE_config_file` (which splits `FILE:ARG`, calls
`get_config(ARG)` and applies type-checked `--config.a.b=value` overrides, rejecting unknown keys); code
(tests, colabs, tools) calls `load_config('FILE:ARG')`, which does the same without flags.

A config file is a Python module with `get_config(arg: str | None) -> ConfigDict`. The `arg` string is parsed by
`parse_arg`, which is typed and strict (big_vision style):

  parse_arg('BBS,tiny,batch=8', variant='BBS', tiny=False, batch=2048)
    -> ConfigDict(variant='BBS', tiny=True, batch=8)

* `key=value` pairs are converted to the type of the default (bool, int, float, str).
* A bare name that is a boolean default is a flag set to True (`tiny`).
* The first bare token that is not a boolean flag fills the first declared key (e.g. the variant).
* Unknown keys, or values that do not convert, raise `ValueError` naming the key and the expected type.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(key: str, value: str, default: Any) -> Any:
  if isinstance(default, bool):
    low = value.lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"Config arg {key!r}: expected a boolean (true/false), got {value!r}.")
  if isinstance(default, int):
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"Config arg {key!r}: expected an integer, got {value!r}.") from None
  if isinstance(default, float):
    try:
      return float(value)
    except ValueError:
      raise ValueError(f"Config arg {key!r}: expected a float, got {value!r}.") from None
  if default is None or isinstance(default, str):
    return value
  raise TypeError(f"Config arg {key!r}: unsupported default type {type(default).__name__}.")


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses a `FILE:ARG` argument string against typed defaults.

  Args:
    arg: comma-separated tokens, e.g. `'BBS,tiny,batch=8'`, or None / '' for the defaults.
    **defaults: the allowed keys, in order, with their default values (which fix their types).

  Returns:
    A locked ConfigDict with every key of `defaults`.

  Raises:
    ValueError: on an unknown key, a bad value, or a positional token when no key is left to fill.
  """
  out = dict(defaults)
  keys = list(defaults)
  positional_key = next((k for k in keys if not isinstance(defaults[k], bool)), None)
  positional_used = False
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    if "=" in token:
      key, value = (t.strip() for t in token.split("=", 1))
      if key not in defaults:
        raise ValueError(f"Unknown config arg {key!r} in {arg!r}; allowed: {', '.join(keys)}.")
      out[key] = _convert(key, value, defaults[key])
    elif token in defaults and isinstance(defaults[token], bool):
      out[token] = True
    elif positional_key is not None and not positional_used:
      out[positional_key] = _convert(positional_key, token, defaults[positional_key])
      positional_used = True
    else:
      raise ValueError(f"Unknown config arg {token!r} in {arg!r}; allowed: {', '.join(keys)}.")
  cfg = ml_collections.ConfigDict(out)
  cfg.lock()
  return cfg


def load_config(spec: str) -> ConfigDict:
  """Loads `path/to/config.py[:ARG]` and returns its locked config."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path!r} does not exist (from --config={spec!r}).")
  name = "vlm_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  # Registered before running so dataclasses / annotations inside the config module resolve.
  sys.modules[name] = module
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"Config file {path!r} has no get_config(arg) function.")
  cfg = module.get_config(arg or None)
  cfg.lock()
  return cfg
