"""The attention-kernel registry: kernels register here by name, layers look them up here.

A kernel is a function `fn(query [B, T, H, K], key [B, S, H, K], value [B, S, H, K], *, mask, bias, dropout_rate,
dropout_rng, deterministic, **options) -> [B, T, H, K]` (the contract of `vlm.nn.kernels.dense.dense_attention`).
A kernel registered with `takes_layer=True` also takes the option `layer`: the index of the encoder layer it runs
in (a Python int when the layers are unrolled, traced under `nn.scan`), e.g. block-sparse attention's per-layer
evaluation pattern. Layers pass it only to such kernels, so no layer needs to know which kernel wants it.

This module imports nothing of vlm: every kernel module imports it, and the layers import the kernels.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

AttentionFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class _Entry:
  fn: AttentionFn
  takes_layer: bool


_KERNELS: dict[str, _Entry] = {}


def register_attention(name: str, *, takes_layer: bool = False) -> Callable[[AttentionFn], AttentionFn]:
  """Decorator registering an attention kernel under `name` (see the module docstring for `takes_layer`)."""
  def wrap(fn: AttentionFn) -> AttentionFn:
    if name in _KERNELS:
      raise ValueError(f"Attention kernel {name!r} is already registered.")
    _KERNELS[name] = _Entry(fn, takes_layer)
    return fn
  return wrap


def _entry(name: str) -> _Entry:
  if name not in _KERNELS:
    raise ValueError(f"Unknown attention {name!r}; registered: {sorted(_KERNELS)}.")
  return _KERNELS[name]


def get_attention_fn(name: str) -> AttentionFn:
  """Returns the attention kernel registered as `name`."""
  return _entry(name).fn


def takes_layer(name: str) -> bool:
  """Whether the kernel `name` takes the encoder layer's index as its option `layer`."""
  return _entry(name).takes_layer


def names() -> list[str]:
  """The registered kernel names, sorted."""
  return sorted(_KERNELS)
