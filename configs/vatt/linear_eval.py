r"""Linear evaluation of a frozen VATT video tower (B.8 low-rank classifier and appendix C's linear SVM).

The model is the pre-training config's (same variant); only `evals` changes. Run it in `--mode=eval` on a
pre-training workdir (its latest checkpoint) or with `--config.init.path=DIR` in a new one:

  python -m vlm.main --config=configs/vatt/linear_eval.py:dataset=ucf101,variant=MBS --mode=eval \
    --workdir=gs://BUCKET/vatt_linear_ucf --config.init.path=gs://BUCKET/vatt_mbs

Tiny run on one CPU (the tiny pre-training run's checkpoint, the built-in dataset's 12 shape x direction
classes; features of its train split, scored on its test split):

  python -m vlm.main --config=configs/vatt/linear_eval.py:tiny --mode=eval --workdir=/tmp/vatt_linear_tiny \
    --config.init.path=/tmp/vlm_vatt_tiny

Arguments (`FILE:ARG`): variant ('BBS' | 'MBS' | 'LBS' | 'MA': the pre-training config's); dataset ('ucf101' |
'hmdb51', split 1 written as records with `python -m vlm.data.write`); tiny.

B.8 settings kept: low-rank classifier C = UV with n = 128 components, 10% of them per step, Adam 5e-4, batch 64,
50k steps. Appendix C: a linear SVM on standardised features beside it. Features: the pooled video-tower output
averaged over 4 uniformly spaced clips of 32 frames (stride 2 at 25 fps) with 224 centre crops (the B.9 views).
ESC-50 (audio) is not wired: only the video tower has a `features` method so far.
"""
from __future__ import annotations

import os

import ml_collections

from vlm import config_lib

NUM_CLASSES = {"ucf101": 101, "hmdb51": 51}


def _views(frames: int, crop: int, classes: int, *, clips: int, stride: str, resize_smallest: int) -> str:
  """Uniformly spaced clips, one centre crop each (the B.9 views), with the class label."""
  return (f"sample_multiclip({clips}, {frames}{stride})|center_crop({crop}, resize_smallest={resize_smallest})"
          f"|normalize(-1, 1)|label(num_classes={classes})|keep('video', 'label')")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="BBS", dataset="ucf101", tiny=False)
  if a.dataset not in NUM_CLASSES:
    raise ValueError(f"dataset={a.dataset!r}; expected one of {sorted(NUM_CLASSES)}.")
  pretrain = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
  c = config_lib.load_config(f"{pretrain}:variant={a.variant}{',tiny' if a.tiny else ''}")
  c.unlock()
  frames, crop = c.input.num_frames, c.input.crop_size
  classes, clips, steps = NUM_CLASSES[a.dataset], 4, 50_000
  # 4 clips of 32 frames, stride 2 at 25 fps, 224 centre crops of the short side resized to 256; split 1 records.
  pp = _views(frames, crop, classes, clips=clips, stride=", stride=2, fps=25.0", resize_smallest=256)
  data = dict(name="records", files=f"{a.dataset.upper()}_SPLIT1/{{split}}-*.tfrecord")
  if a.tiny:  # the tiny pre-training's data: features of its train split, scored on its test split
    classes, clips, steps = 12, 2, 3000
    # Whole frames, as the tiny pre-training's evaluation.
    pp = _views(frames, crop, classes, clips=clips, stride="", resize_smallest=crop)
    data = dict(c.input.data)

  def split_input(split):
    d = dict(data, split=split)
    if d.get("files"):
      d["files"] = d["files"].format(split=split)
    return dict(data=d, batch_size=64, num_frames=frames, num_clips=clips, num_crops=1, pp=pp)

  c.evals = ml_collections.ConfigDict()
  c.evals.linear = dict(
      type="linear",
      every_steps=None,
      classifiers=("low_rank", "svm"),
      num_classes=classes,
      standardize=True,
      train_input=split_input("train"),
      input=split_input("test"),
      low_rank=dict(components=128, keep=0.1, lr=5e-4, batch_size=64, steps=steps, weight_decay=0.0),
      svm=dict(C=1.0, max_iters=500, tol=1e-6),
      seed=0,
      max_examples=0,
  )
  c.lock()
  return config_lib.own_data_overridable(c)
