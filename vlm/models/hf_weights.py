"""Reading flat {name: array} checkpoints (HF safetensors, big_vision npz) into our parameter trees."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np


def read_weights(path: str) -> dict[str, np.ndarray]:
  """Flat {name: array} from a local `.npz` (big_vision) or `.safetensors` (HF transformers) file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint {path!r} is not a file.")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return {k: np.asarray(f[k]) for k in f.files}
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("Reading .safetensors needs the safetensors package (pip install safetensors).") from e
    return dict(load_file(path))
  raise ValueError(f"Checkpoint {path!r}: expected a .npz (big_vision / vision_transformer) or a "
                   ".safetensors (HF transformers) file.")


def hf_config(path: str | None) -> dict[str, Any] | None:
  """The config.json that HF `save_pretrained` writes beside `path`'s weights, or None when there is none."""
  config = os.path.join(os.path.dirname(path), "config.json") if path else None
  if config and os.path.isfile(config):
    with open(config) as f:
      return json.load(f)
  return None


def strip_prefix(flat: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  """float32 copies with `prefix` removed where present (HF task models nest the backbone: 'vit.', 'bert.')."""
  return {k[len(prefix):] if k.startswith(prefix) else k: np.asarray(v, np.float32) for k, v in flat.items()}


def take(flat: Mapping[str, Any], name: str, what: str = "checkpoint") -> np.ndarray:
  """flat[name] as float32, or a KeyError naming the missing entry and a few that exist."""
  if name not in flat:
    raise KeyError(f"{what} lacks {name!r} (has e.g. {sorted(flat)[:5]}).")
  return np.asarray(flat[name], np.float32)
