"""Reading flat {name: array} checkpoints (HF safetensors, big_vision npz) into our parameter trees."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def strip_prefix(flat: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  """float32 copies with `prefix` removed where present (HF task models nest the backbone: 'vit.', 'bert.')."""
  return {k[len(prefix):] if k.startswith(prefix) else k: np.asarray(v, np.float32) for k, v in flat.items()}


def take(flat: Mapping[str, Any], name: str, what: str = "checkpoint") -> np.ndarray:
  """flat[name] as float32, or a KeyError naming the missing entry and a few that exist."""
  if name not in flat:
    raise KeyError(f"{what} lacks {name!r} (has e.g. {sorted(flat)[:5]}).")
  return np.asarray(flat[name], np.float32)
