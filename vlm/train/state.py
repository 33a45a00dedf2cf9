"""The training state: one pytree that is sharded, donated, checkpointed and restored as a whole."""
from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a train step reads and writes.

  Attributes:
    step: int32 scalar, the number of updates applied so far (the step about to run has this index; logs and
      checkpoints after it carry `step + 1`).
    params: the model's `params` collection, unboxed (plain arrays).
    opt_state: the optax state for `params`.
    model_state: every other variable collection (e.g. `{'batch_stats': ...}`); `{}` when there is none.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any

  def variables(self) -> dict[str, Any]:
    """`{'params': ..., **model_state}`, the form `model.apply` and evaluators take."""
    return {"params": self.params, **self.model_state}


def split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  """`init_variables` output -> (params, model_state)."""
  variables = dict(variables)
  if "params" not in variables:
    raise ValueError(f"task.init_variables must return a 'params' collection, got {sorted(variables)}.")
  params = variables.pop("params")
  return params, variables
