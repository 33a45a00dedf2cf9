"""The data layer's entry point: the iterators the trainer, the evaluators and the tools build.

  from vlm.data import inputs
  it = inputs.make_train_iterator(config, process_index=0, process_count=1, state=None)   # infinite, resumable
  batch = next(it); state = it.get_state(); it.skipped                                     # {name: count}
  ev = inputs.make_eval_iterator(config, config.evals.x.input, process_index=0, process_count=1)  # finite
  inputs.check_input_config(config)   # cheap, before any model state: record globs match, data fields valid

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
           "EvalIterable", "check_input_config"]


def _record_sources(data: Mapping[str, Any]) -> None:
  """Resolves a 'records' source (globs expanded: a glob matching nothing raises FileNotFoundError)."""
  data = pipeline._to_dict(data)  # pylint: disable=protected-access
  if data.get("name", "builtin") == "records":
    from vlm.data import sources  # pylint: disable=g-import-not-at-top
    sources.get_source(data)


def check_input_config(config, eval_inputs: Mapping[str, Any] | None = None) -> None:
  """Checks the input config before anything expensive is built (call it before the model state).

  Resolves every 'records' source of `config.input` (each mixture dataset's too) and of `eval_inputs`
  ({name: eval input overrides}, e.g. each `config.evals.<name>.input`): a glob that matches nothing, a missing
  file or a missing split fails here (FileNotFoundError / ValueError naming the glob) instead of after the
  state build. Cheap: it lists files and reads nothing (built-in and TFDS sources are not touched).
  """
  if config.input.get("mixture", None) is not None:
    for name, entry in mixture._entries(config):  # pylint: disable=protected-access
      entry = {k: v for k, v in entry.items() if k != "weight"}
      try:
        _record_sources(pipeline.input_config(config, entry)["data"])
      except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"config.input.mixture[{name!r}]: {e}") from None
  else:
    _record_sources(pipeline.input_config(config)["data"])
  for name, over in (eval_inputs or {}).items():
    try:
      _record_sources(pipeline.input_config(config, over)["data"])
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f"evals.{name}.input: {e}") from None


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
