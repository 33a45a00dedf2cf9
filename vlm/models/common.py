"""Model construction shared by every family: the variant grammar and config -> flax fields.

A family module `vlm/models/<family>.py` has a `SIZES` table and a flax `Model` whose fields are the only
defaults. `Model.from_config(config)` is

    cls(**model_kwargs(cls, config.model, sizes=SIZES, family='svitt', derived={...from config.input...}))

so a config key under `config.model` IS a field name (no renaming at the boundary), an unknown key is an error
naming it, and the only values a family computes are those derived from the input (frames, crop size).

Variant grammar (every family): `config.model.variant` is a key of the family's SIZES, optionally followed by
`/<patch>` for the patch (or tube) side in pixels: 'B', 'B/16', 'tiny', 'tiny/8'. Every family has 'tiny' (the
CPU size the tests and the quick start use).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections

from vlm import config_lib

RESERVED = ("name", "variant")  # config.model keys that select the model rather than set a field


def parse_variant(variant: str, sizes: Mapping[str, Any], *, family: str) -> tuple[str, int | None]:
  """'B/16' -> ('B', 16); 'tiny' -> ('tiny', None). Unknown sizes are an error listing the known ones."""
  name, _, patch = str(variant).partition("/")
  if name not in sizes:
    raise ValueError(f"config.model.variant={variant!r}: {family} has no size {name!r}; expected one of "
                     f"{sorted(sizes)}, optionally with '/<patch>' (e.g. '{sorted(sizes)[0]}/16').")
  if patch and not patch.isdigit():
    raise ValueError(f"config.model.variant={variant!r}: the part after '/' is the patch side in pixels, "
                     f"an integer; got {patch!r}.")
  return name, int(patch) if patch else None


def plain(value: Any) -> Any:
  """ConfigDict / FrozenConfigDict / lists -> dicts and tuples (hashable, comparable flax fields)."""
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def field_names(cls: type) -> list[str]:
  return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def model_kwargs(cls: type, model_cfg: Any, *, sizes: Mapping[str, Mapping[str, Any]], family: str,
                 derived: Mapping[str, Any] | None = None, patch_field: str | None = "patch_size"
                 ) -> dict[str, Any]:
  """Keyword arguments of `cls` from a size, `config.model` and values derived from the input.

  Args:
    cls: the flax Module class (its dataclass fields are the allowed keys and the defaults).
    model_cfg: `config.model` (ConfigDict or dict) with `variant` and any field overrides.
    sizes: the family's SIZES table (each entry: field -> value).
    family: for error messages.
    derived: fields computed from config.input (frames, image size); config.model may not set them.
    patch_field: the field a '/<patch>' in the variant sets (None: the family takes no patch suffix).

  Returns:
    SIZES[variant] updated by config.model's own keys and then by `derived`; strings under a `dtype` key
    become numpy dtypes.
  """
  model_cfg = plain(model_cfg or {})
  size, patch = parse_variant(model_cfg.get("variant", "tiny"), sizes, family=family)
  kwargs = dict(plain(sizes[size]))
  if patch is not None:
    if patch_field is None:
      raise ValueError(f"config.model.variant={model_cfg['variant']!r}: {family} variants take no '/<patch>'.")
    kwargs[patch_field] = patch
  own = {k: v for k, v in model_cfg.items() if k not in RESERVED}
  derived = dict(derived or {})
  clash = sorted(set(own) & set(derived))
  if clash:
    raise ValueError(f"config.model.{clash[0]} is derived from config.input for {family} "
                     f"(value {derived[clash[0]]!r}); set it there instead.")
  kwargs.update(own)
  kwargs.update(derived)
  allowed = field_names(cls)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f"config.model.{unknown[0]}: not a field of {cls.__module__}.{cls.__name__}; fields: "
                     f"{', '.join(allowed)}.")
  for key, value in kwargs.items():
    if (key == "dtype" or key.endswith("_dtype")) and isinstance(value, str):
      kwargs[key] = jnp.dtype(value)
  check_rates(kwargs)
  return kwargs


def check_rates(values: Mapping[str, Any], *, prefix: str = "config.model") -> None:
  """Checks model fields by name with the config's value-range rules (`config_lib.RANGE_RULES`): drop rates in
  [0, 1), keep rates in (0, 1], sizes >= 1. A drop rate of 1 would drop everything and a negative one silently
  disables the feature, so both are errors naming the key."""
  config_lib.check_ranges(values, prefix=prefix)
