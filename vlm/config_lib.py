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
* The result also records which keys the string set (`explicit`), so `apply_args` can write exactly those
  onto the config after the `tiny` block: an explicit `steps=500000,tiny` keeps 500000 steps.

A config file reads in this order (big_vision's `runlocal` pattern):

  a = config_lib.parse_arg(arg, variant='BBS', tiny=False, batch=2048, steps=500_000)
  c = config_lib.experiment(total_steps=a.steps)       # the full-size config, written once
  ...
  if a.tiny:                                           # one block: the CPU-sized overrides
    ...
  config_lib.apply_args(c, a, batch='input.batch_size', steps='total_steps')   # what the user set wins

Shared blocks: `experiment` (seed, steps, logging / checkpoint cadence, `init`), `init_block` (config.init:
vlm/train/init.py), `optimizer` (config.optim: vlm/train/optim.py), `parallelism` (mesh and sharding preset).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import ml_collections
from ml_collections import config_dict

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
  if "explicit" in defaults:
    raise ValueError("'explicit' is reserved: parse_arg records there the keys the arg string set.")
  out = dict(defaults)
  keys = list(defaults)
  explicit = []
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
      explicit.append(key)
    elif token in defaults and isinstance(defaults[token], bool):
      out[token] = True
      explicit.append(token)
    elif positional_key is not None and not positional_used:
      out[positional_key] = _convert(positional_key, token, defaults[positional_key])
      explicit.append(positional_key)
      positional_used = True
    else:
      raise ValueError(f"Unknown config arg {token!r} in {arg!r}; allowed: {', '.join(keys)}.")
  cfg = ml_collections.ConfigDict(out)
  cfg.explicit = tuple(dict.fromkeys(explicit))
  cfg.lock()
  return cfg


def apply_args(c: ConfigDict, a: ConfigDict, **paths: str) -> ConfigDict:
  """Writes each arg the user set explicitly (`a.explicit`) onto its dotted config path; returns `c`.

  Example: `apply_args(c, a, steps='total_steps', batch='input.batch_size')` after the tiny block.
  """
  for arg_name, path in paths.items():
    if arg_name not in a:
      raise KeyError(f"apply_args: {arg_name!r} is not an arg of this config ({', '.join(a.keys())}).")
    if arg_name in a.explicit:
      *parents, leaf = path.split(".")
      node = c
      for part in parents:
        node = node[part]
      node[leaf] = a[arg_name]
  return own_data_overridable(c)


def own_data_overridable(c: ConfigDict) -> ConfigDict:
  """Makes the own-data overrides settable from the command line in every config; returns `c`.

  A field a config leaves unset (or None) has no type, and ml_collections refuses to set it from a flag. So every
  full data source (`config.input.data`, each `config.input.mixture.<name>.data`, each evaluation's
  `input.data` that names a source) gets `files` as a string placeholder and an `options` block, and
  `config.input.tokenizer.vocab_file` becomes a string placeholder: e.g.
    --config.input.data.name=records --config.input.data.files='gs://B/train-*.tfrecord'
    --config.input.tokenizer.vocab_file=/path/vocab.txt
  Called by `apply_args`, the last step of every config's get_config.
  """
  inputs = [c.get("input")]
  inputs += [entry for entry in (c.input.get("mixture") or {}).values()] if c.get("input") else []
  inputs += [ev.get("input") for ev in (c.get("evals") or {}).values()]
  for inp in inputs:
    if not isinstance(inp, ConfigDict) or not isinstance(inp.get("data"), ConfigDict) or "name" not in inp.data:
      continue  # partial evaluation overrides (e.g. `data=dict(split='test')`) inherit the training source's
    with inp.data.unlocked():
      if inp.data.get("files") is None:
        inp.data.files = config_dict.placeholder(str)
      if "options" not in inp.data:
        inp.data.options = ConfigDict()
  tokenizer = c.input.get("tokenizer") if c.get("input") else None
  if isinstance(tokenizer, ConfigDict) and tokenizer.get("vocab_file") is None:
    with tokenizer.unlocked():
      tokenizer.vocab_file = config_dict.placeholder(str)
  return c


def init_block() -> ConfigDict:
  """`config.init`: where a run with no checkpoint of its own starts from (read by vlm/train/init.py).

  path: None | a checkpoint (workdir, checkpoints/ or a step directory) | a weights file the family's load reads.
  assignment_map: ((target_regex, source_replacement | None), ...) renames; None keeps the fresh value.
  fallback_to_scratch: parameters the checkpoint lacks keep their fresh values instead of an error.
  options: what the family's `load` documents (a config adds its keys here, as placeholders).
  """
  block = ml_collections.ConfigDict()
  block.path = config_dict.placeholder(str)
  block.assignment_map = ()
  block.fallback_to_scratch = False
  block.options = ml_collections.ConfigDict()
  return block


def experiment(*, total_steps: int, log_every_steps: int = 100, checkpoint_every_steps: int = 5000,
               keep_checkpoints: int = 3, seed: int = 0) -> ConfigDict:
  """A new experiment config with the fields the trainer reads at the top level (vlm/train/trainer.py)."""
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.total_steps = total_steps
  c.log_every_steps = log_every_steps
  c.checkpoint_every_steps = checkpoint_every_steps
  c.keep_checkpoints = keep_checkpoints
  c.init = init_block()
  return c


def optimizer(name: str, lr: float, *, weight_decay: float = 0.0, warmup_steps: int = 0, end_lr: float = 0.0,
              schedule: str = "warmup_cosine", **extra: Any) -> ConfigDict:
  """`config.optim` (vlm/train/optim.py): optimizer name, peak lr, decay, clipping and the lr schedule.

  `extra` holds optimizer-specific fields (b1 / b2, momentum) and schedule options go in `schedule_options`.
  """
  schedule_options = dict(extra.pop("schedule_options", {}))
  o = ml_collections.ConfigDict()
  o.name = name
  o.lr = lr
  o.weight_decay = weight_decay
  o.grad_clip_norm = config_dict.placeholder(float)
  for key, value in extra.items():
    o[key] = value
  o.schedule = dict(kind=schedule, warmup_steps=warmup_steps, end_lr=end_lr, **schedule_options)
  return o


def parallelism(c: ConfigDict, *, sharding: str = "dp", mesh: tuple = (("data", -1), ("fsdp", 1), ("tensor", 1))
                ) -> ConfigDict:
  """Sets `c.mesh` (axis name, size; -1 takes the remaining devices), `c.sharding` (preset: 'dp' | 'fsdp' |
  'fsdp_tp') and `c.sharding_rules` (extra (logical, mesh axis) rules tried before the preset)."""
  c.mesh = mesh
  c.sharding = sharding
  c.sharding_rules = None
  return c


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


# Value ranges by key name, checked on the whole config before anything is built (`check_ranges`). Patterns are
# fnmatch patterns on the leaf key (the last part of its dotted path); the first matching rule applies. A key no
# rule names is left to the code that reads it (sizes, ids and shapes are checked where the model is built).
_UNIT = "a probability in [0, 1)"
RANGE_RULES: tuple[tuple[str, str, Any], ...] = (
    ("*keep_rate", "a keep rate in (0, 1] (1 keeps everything)", lambda v: 0.0 < v <= 1.0),
    ("*drop*_rate", "a drop rate in [0, 1) (0 disables it)", lambda v: 0.0 <= v < 1.0),
    ("head_dropout", "a drop rate in [0, 1) (0 disables it)", lambda v: 0.0 <= v < 1.0),
    ("label_smoothing", _UNIT, lambda v: 0.0 <= v < 1.0),
    ("mlm_probability", "a masking probability in (0, 1)", lambda v: 0.0 < v < 1.0),
    ("colour_change", "a probability in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    ("b1", _UNIT, lambda v: 0.0 <= v < 1.0),
    ("b2", _UNIT, lambda v: 0.0 <= v < 1.0),
    ("momentum", _UNIT, lambda v: 0.0 <= v < 1.0),
    ("lr", "a learning rate > 0", lambda v: v > 0),
    ("end_lr", "a learning rate >= 0", lambda v: v >= 0),
    ("weight_decay", "a decay >= 0", lambda v: v >= 0),
    ("grad_clip_norm", "a norm > 0 (None disables clipping)", lambda v: v > 0),
    ("temperature", "a temperature > 0", lambda v: v > 0),
    ("margin", "a margin >= 0", lambda v: v >= 0),
    ("observed", "a clip count >= 1", lambda v: v >= 1),
    ("horizon", "a clip count >= 1", lambda v: v >= 1),
    ("*weight", "a loss weight >= 0", lambda v: v >= 0),
    ("warmup_steps", "a step count >= 0", lambda v: v >= 0),
    ("keep_checkpoints", "at least 1 (the last checkpoint is the run's result)", lambda v: v >= 1),
    ("total_steps", "a step count >= 0 (0: evaluation only, `--mode=eval`)", lambda v: v >= 0),
    ("*_steps", "a step count >= 1", lambda v: v >= 1),
    ("steps", "a step count >= 1", lambda v: v >= 1),
    ("batch_size", "a batch size >= 1", lambda v: v >= 1),
    ("num_frames", "a count >= 1", lambda v: v >= 1),
    ("num_captions", "a count >= 1", lambda v: v >= 1),
    ("num_classes", "a count >= 1", lambda v: v >= 1),
    ("num_clips", "a count >= 1", lambda v: v >= 1),
    ("num_crops", "a count >= 1", lambda v: v >= 1),
    ("num_candidates", "a count >= 2", lambda v: v >= 2),
    ("num_*", "a count >= 0", lambda v: v >= 0),
    ("max_*_len", "a length >= 1", lambda v: v >= 1),
    ("max_iters", "a count >= 1", lambda v: v >= 1),
    ("*_size", "a size >= 1", lambda v: v >= 1),
    ("*_dim", "a width >= 1", lambda v: v >= 1),
    ("*_layers", "a layer count >= 0", lambda v: v >= 0),
    ("*_blocks", "a block count >= 0", lambda v: v >= 0),
    ("*sample_rate", "a rate in Hz > 0", lambda v: v > 0),
    ("fps", "frames per second > 0", lambda v: v > 0),
    ("shuffle_buffer", "a buffer size >= 0", lambda v: v >= 0),
    ("C", "a regularisation constant > 0", lambda v: v > 0),
    ("tol", "a tolerance > 0", lambda v: v > 0),
)


def check_ranges(config: Any, *, prefix: str = "config") -> None:
  """Raises ValueError naming the first numeric config value outside its range (`RANGE_RULES`).

  Walks nested ConfigDicts and dicts (mixture entries, task and evaluator blocks); None, booleans and
  non-numbers are skipped, as are NaN-free ints used as ids (no rule names them).
  """
  import fnmatch  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  items = config.items() if hasattr(config, "items") else ()
  for key, value in items:
    path = f"{prefix}.{key}"
    if isinstance(value, (ConfigDict, dict)):
      check_ranges(value, prefix=path)
      continue
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    for pattern, expected, ok in RANGE_RULES:
      if fnmatch.fnmatchcase(str(key), pattern):
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
          raise ValueError(f"{path}={value!r}: expected {expected}.")
        break
