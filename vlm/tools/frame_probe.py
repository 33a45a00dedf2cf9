r"""How much frame order a trained SViTT's video tokens carry: a linear probe of each token's frame index.

  python -m vlm.tools.frame_probe --config=configs/svitt/pretrain.py:tiny --workdir=/tmp/svitt_tiny \
    [--batches=4] [--json] [--config.x=y]

A diagnostic for the shuffled-frame probe (SViTT table A8): a model can only answer "what happens at the end" if
its video tokens still say which frame they come from when the multimodal encoder reads them. This runs the video
encoder (after token pruning, through the same layer norm the multimodal encoder sees) on the first evaluator's
split, labels every patch token with its frame from the positions it carries, fits a least-squares one-hot
classifier on the tokens of the first half of the clips and reports its accuracy on the other half, against
chance 1/T. Without a checkpoint in `--workdir` (or `config.init.path`) it probes the initialisation.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from vlm.tools import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir whose latest checkpoint is probed.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Evaluation batches to probe (their clips are split in half).")


def probe_accuracy(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, ridge: float = 1e-2
                   ) -> float:
  """Accuracy of a ridge least-squares one-hot classifier (features [N, D] -> labels [N] in [0, K)) fitted on
  the rows whose group (clip) is in the first half of the groups and tested on the others."""
  if features.shape[0] != labels.shape[0] or labels.shape != groups.shape:
    raise ValueError(f"features {features.shape}, labels {labels.shape} and groups {groups.shape} must agree.")
  ids = np.unique(groups)
  if len(ids) < 2:
    raise ValueError("The probe needs tokens of at least two clips (one to fit, one to test).")
  train = np.isin(groups, ids[:len(ids) // 2])
  x = np.concatenate([features, np.ones((features.shape[0], 1), features.dtype)], axis=1).astype(np.float64)
  y = np.eye(int(labels.max()) + 1)[labels]
  gram = x[train].T @ x[train] + ridge * np.eye(x.shape[1])
  w = np.linalg.solve(gram, x[train].T @ y[train])
  return float(np.mean((x[~train] @ w).argmax(axis=1) == labels[~train]))


def frame_probe(config, workdir: str | None, batches: int = 4) -> dict[str, Any]:
  """Everything the command prints, as a dict."""
  from vlm.data import inputs  # pylint: disable=g-import-not-at-top
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top
  if batches < 1:
    raise ValueError(f"batches={batches}; the probe needs at least one evaluation batch.")
  task = trainer.build_task(config)
  model = getattr(task, "model", None)
  if not hasattr(model, "vision") or config.model.get("name") != "svitt":
    raise ValueError(f"frame_probe reads SViTT's video encoder; model {config.model.get('name')!r} has none.")
  try:
    task, _, state = trainer.load_variables(config, workdir or "/nonexistent", task=task)
    source = f"step {state.step}"
  except FileNotFoundError:  # nothing trained: the initialisation
    setup = trainer.setup_mesh(config)
    state = trainer.build_state_spec(config, task, setup, int(config.get("total_steps", 1) or 1)).init()
    source = "initialisation"
  params = state.variables()["params"]
  if not config.get("evals"):
    raise ValueError("frame_probe reads the first evaluator's input (config.evals is empty).")
  eval_input = next(iter(config.evals.values())).input
  patch = int(dict(model.vision)["patch_size"])

  def tokens_and_positions(m, video):
    tokens, aux = m.video_encoder(video)
    return m.vision_norm(tokens)[:, 1:], aux["positions"][:, 1:] - 1  # patch tokens, their raster index

  encode = jax.jit(lambda p, v: model.apply({"params": p}, v, method=tokens_and_positions))
  feats, frames, clips, num_clips = [], [], [], 0
  it = inputs.make_eval_iterator(config, eval_input, process_index=0, process_count=1)
  for i, batch in enumerate(it):
    if i >= batches:
      break
    video = np.asarray(batch["video"])
    video = video[:, 0] if video.ndim == 6 else video  # first view
    real = np.asarray(batch["_mask"]) > 0 if "_mask" in batch else np.ones(video.shape[0], bool)
    t, h, w = video.shape[1:4]
    tokens, positions = (np.asarray(a) for a in encode(params, jnp.asarray(video)))
    per_frame = (h // patch) * (w // patch)
    feats.append(tokens[real].reshape(-1, tokens.shape[-1]))
    frames.append((positions[real] // per_frame).reshape(-1))
    clips.append(np.repeat(np.arange(real.sum()) + num_clips, tokens.shape[1]))
    num_clips += int(real.sum())
  x, y, g = np.concatenate(feats), np.concatenate(frames), np.concatenate(clips)
  return {"checkpoint": source, "frames": int(t), "tokens": int(x.shape[0]), "width": int(x.shape[1]),
          "clips": num_clips, "frame_probe_accuracy": probe_accuracy(x, y, g), "chance": 1.0 / t}


def main(argv):
  del argv
  r = frame_probe(common.CONFIG.value, _WORKDIR.value, _BATCHES.value)
  if common.JSON.value:
    json.dump(r, sys.stdout, indent=1)
    print()
  else:
    print(f"frame index from the video tokens ({r['checkpoint']}; {r['tokens']} tokens of {r['clips']} clips, "
          f"{r['width']} wide, {r['frames']} frames): linear probe accuracy {r['frame_probe_accuracy']:.3f} "
          f"(chance {r['chance']:.3f})")


if __name__ == "__main__":
  from vlm import allocator  # pylint: disable=g-import-not-at-top
  allocator.reexec_with_fast_malloc()
  flags.mark_flag_as_required("config")
  app.run(main)
