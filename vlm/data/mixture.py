"""Several training datasets mixed by weight, one dataset per global batch (joint image + video training).

TubeViT (supplement section 1) trains ImageNet and Kinetics together, each with its own classification layer.
`config.input.mixture` lists the datasets; every global batch is drawn from ONE of them, chosen by weight with a
generator seeded by (config.seed, batch index). So images (1 frame) and videos (F frames) never need one shape,
every host picks the same dataset at the same step, and a resumed run draws the same sequence. Each example
carries `dataset` int32 = the dataset's index in the mixture order, which the classification task maps to its
head (vlm/tasks/classification.py; `mixture_names(config)` gives the order).

  config.input.mixture = {
      'videos': dict(weight=0.5, data=dict(split='train'), num_frames=16, pp='...', num_classes=12),
      'images': dict(weight=0.5, data=dict(split='train_images'), num_frames=1, pp='...', num_classes=15),
  }

Each entry: `weight` (> 0; normalised over the mixture), an optional `name` (default: its key), and any
config.input field, which overrides the shared one for that dataset (`data` merged key by key; other fields
such as `group` or `pp` replaced whole; an entry's `batch_size` is the global batch of its steps, e.g. HierVL's
8 episodes of 4 clips against 32 single clips, each checked against the mesh by the trainer). Each dataset runs
through `vlm.data.pipeline.make_train_iterator` (its own shuffle, augmentation seeds and resumable position);
the mixture's state is {'step', 'datasets': {name: that iterator's state}}. Callers build it through `vlm.data.inputs`.

Schedule (`config.input.mixture_schedule`): 'weighted' (default) draws each batch's dataset at random by weight
as above; 'cycle' repeats a fixed pattern in which each dataset takes `weight` consecutive batches, in mixture
order (integer weights): HierVL's child and parent steps are `clips` weight 5 and `episodes` weight 1, a parent
step after every 5 child steps. Either way the dataset of batch i depends on i alone, so a resumed run continues
both streams where they were.

Evaluation stays per dataset: give each evaluator the `input` (split, frames, pp) of the dataset it scores.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections
import numpy as np

from vlm.data import pipeline

SCHEDULES = ("weighted", "cycle")


def _entries(config) -> list[tuple[str, dict[str, Any]]]:
  mixture = config.input.get("mixture", None)
  if mixture is None:
    return []
  items = mixture.items() if hasattr(mixture, "items") else [(None, m) for m in mixture]
  out, seen = [], set()
  for key, entry in items:
    entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry or {})
    name = str(entry.pop("name", None) or key or "")
    if not name:
      raise ValueError(f"config.input.mixture entry {entry}: needs a name (a dict key or name=...).")
    if name in seen:
      raise ValueError(f"config.input.mixture: dataset name {name!r} appears twice.")
    seen.add(name)
    weight = entry.pop("weight", None)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
      raise ValueError(f"config.input.mixture[{name!r}].weight = {weight!r}: expected a number > 0.")
    if not entry.get("data"):
      raise ValueError(f"config.input.mixture[{name!r}] has a weight but no dataset: set its `data` "
                       "(e.g. dict(name='records', files=...) or dict(split='train_images')).")
    out.append((name, {"weight": float(weight), **entry}))
  if not out:
    raise ValueError("config.input.mixture is empty; give at least one dataset or remove it.")
  return out


def mixture_names(config) -> list[str]:
  """Dataset names in mixture order (the `dataset` index of each batch row)."""
  return [name for name, _ in _entries(config)]


def dataset_config(config, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose input is the shared input with dataset `name`'s overrides and no mixture."""
  entries = dict(_entries(config))
  if name not in entries:
    raise ValueError(f"no dataset {name!r} in config.input.mixture ({sorted(entries)}).")
  entry = dict(entries[name])
  entry.pop("weight")
  sub = ml_collections.ConfigDict(config.to_dict())
  inp = sub.input.to_dict()
  inp.pop("mixture")
  if "data" in entry:
    entry["data"] = {**dict(inp.get("data") or {}), **dict(entry["data"])}
  inp.update(entry)
  sub.input = ml_collections.ConfigDict(inp)
  return sub


class MixtureIterator:
  """Per-host batches from several iterators, one chosen per step by weight; resumable."""

  def __init__(self, iterators: Mapping[str, Any], weights: Mapping[str, float], *, seed: int, step: int = 0,
               schedule: str = "weighted"):
    self.names = list(iterators)
    self.iterators = dict(iterators)
    w = np.asarray([weights[n] for n in self.names], np.float64)
    self.probs = w / w.sum()
    self.seed, self.step = int(seed), int(step)
    if schedule not in SCHEDULES:
      raise ValueError(f"config.input.mixture_schedule={schedule!r}; expected one of {SCHEDULES}.")
    self.pattern = None
    if schedule == "cycle":
      if any(v != int(v) for v in w):
        raise ValueError(f"config.input.mixture_schedule='cycle' takes integer weights (batches per cycle); got "
                         f"{dict(zip(self.names, w.tolist()))}.")
      self.pattern = np.repeat(np.arange(len(self.names)), w.astype(int))

  def choice(self, step: int) -> int:
    """Index of the dataset of global batch `step` (the same on every host)."""
    if self.pattern is not None:
      return int(self.pattern[step % len(self.pattern)])
    return int(np.random.default_rng([self.seed, 7919, step]).choice(len(self.names), p=self.probs))

  def __iter__(self) -> "MixtureIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    i = self.choice(self.step)
    batch = dict(next(self.iterators[self.names[i]]))
    rows = len(next(iter(batch.values())))
    batch["dataset"] = np.full((rows,), i, np.int32)
    self.step += 1
    return batch

  @property
  def skipped(self) -> dict[str, int]:
    total: dict[str, int] = {}
    for it in self.iterators.values():
      for k, v in getattr(it, "skipped", {}).items():
        total[k] = total.get(k, 0) + int(v)
    return total

  def get_state(self) -> dict[str, Any]:
    return {"step": self.step, "datasets": {n: it.get_state() for n, it in self.iterators.items()}}


def make_mixture_iterator(config, *, process_index: int, process_count: int,
                          state: Mapping[str, Any] | None = None) -> MixtureIterator:
  """The mixture of config.input.mixture (see the module docstring), resumed at `state`."""
  entries = _entries(config)
  state = dict(state or {})
  sub_states = dict(state.get("datasets") or {})
  iterators = {name: pipeline.make_train_iterator(dataset_config(config, name), process_index=process_index,
                                                  process_count=process_count, state=sub_states.get(name))
               for name, _ in entries}
  return MixtureIterator(iterators, {n: e["weight"] for n, e in entries}, seed=int(config.get("seed", 0)),
                         step=int(state.get("step", 0)),
                         schedule=str(config.input.get("mixture_schedule", None) or "weighted"))
