"""Objective kinds: each module's `Task` holds one objective and builds its model with `Model.from_config`."""
from __future__ import annotations

import dataclasses
from typing import Any


def objective_options(cls: type, task: Any, *, kind: str) -> dict[str, Any]:
  """config.task (its `name` aside) as keyword arguments of the dataclass `cls`; an unknown key is an error."""
  options = {k: v for k, v in dict(task or {}).items() if k != "name"}
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(options) - set(fields))
  if unknown:
    raise ValueError(f"config.task.{unknown[0]}: not an option of the {kind} task; options: {', '.join(fields)}.")
  return options
