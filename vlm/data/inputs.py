"""The data layer's entry point: the iterators the trainer, the evaluators and the tools build.

  from vlm.data import inputs
  it = inputs.make_train_iterator(config, process_index=0, process_count=1, state=None)   # infinite, resumable
  batch = next(it); state = it.get_state(); it.skipped                                     # {name: count}
  ev = inputs.make_eval_iterator(config, config.evals.x.input, process_index=0, process_count=1)  # finite

`make_train_iterator` reads one dataset (vlm/data/pipeline.py: sources, pp, shuffle, exact resume, the grouping
stage of `config.input.group`) or, with `config.input.mixture`, several datasets mixed one per global batch
(vlm/data/mixture.py), each built by the pipeline; `make_eval_iterator` reads one eval split, padded so every
host runs the same number of batches. `input_config` is config.input with the defaults and eval overrides
applied; `mixture_names` the order of the `dataset` index that mixture batches carry.
"""
from __future__ import annotations

from typing import Any, Mapping

from vlm.data import mixture
from vlm.data import pipeline
from vlm.data.mixture import mixture_names
from vlm.data.pipeline import DataIterator, EvalIterable, input_config, make_eval_iterator

__all__ = ["make_train_iterator", "make_eval_iterator", "input_config", "mixture_names", "DataIterator",
           "EvalIterable"]


def make_train_iterator(config, *, process_index: int, process_count: int,
                        state: Mapping[str, Any] | None = None) -> DataIterator | mixture.MixtureIterator:
  """Per-host training batches of `config.input` (one dataset, or its mixture), resumed after `state`.

  Args:
    config: the full config (`config.seed`, `config.input`).
    process_index, process_count: this host and the number of hosts.
    state: a previous iterator's `get_state()`; the iterator continues with the batch that would have come next.

  Returns:
    An iterator of dicts of numpy arrays with `get_state()` and `skipped`.
  """
  if config.input.get("mixture", None) is not None:
    return mixture.make_mixture_iterator(config, process_index=process_index, process_count=process_count,
                                         state=state)
  return pipeline.make_train_iterator(config, process_index=process_index, process_count=process_count,
                                      state=state)
