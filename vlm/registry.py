"""Registry = module path: config names resolve to modules, with no registration step.

`config.task.name='matching'` -> `vlm.tasks.matching`, `config.evals.<key>.type='retrieval'` ->
`vlm.evals.retrieval`, `config.model.name='svitt'` -> `vlm.models.svitt`; a dotted name is imported as given
(e.g. `tests.toy_task`). Light on purpose (no TensorFlow, no data pipeline): `vlm.main` builds the task here
before the heavy imports, so a misspelt variant or an unknown model key fails in seconds.
"""
from __future__ import annotations

import importlib
from typing import Any

from vlm import config_lib
from vlm import protocols


def resolve(name: str, package: str) -> Any:
  """'retrieval' -> vlm.<package>.retrieval; a dotted name is imported as given."""
  try:
    return importlib.import_module(name if "." in name else f"vlm.{package}.{name}")
  except ModuleNotFoundError as e:
    if e.name not in (name, f"vlm.{package}.{name}"):
      raise
    raise ValueError(f"{name!r} names no module: expected a module of vlm/{package}/ (e.g. "
                     f"'vlm/{package}/<name>.py') or a dotted module path.") from None


def build_task(config: Any) -> protocols.Task:
  """`vlm.tasks.<config.task.name>.Task(config)`, checked against the task protocol (vlm/protocols.py).

  The config's value ranges (config_lib.RANGE_RULES) are checked first, so a bad rate, size or step count is
  reported before the task or its model is built.
  """
  config_lib.check_ranges(config)
  task = resolve(config.task.name, "tasks").Task(config)
  protocols.require(task, protocols.Task, f"config.task.name={config.task.name!r}")
  return task
