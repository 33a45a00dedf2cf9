"""The tiny TubeViT config end to end: a joint image + video mixture through the trainer, a resume that replays
the dataset sequence, and both evaluators (the video one with the shuffled-frame probe)."""
import os

from vlm import config_lib
from vlm.train import metrics as metrics_lib
from vlm.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train=64, num_test=32, num_images=64, num_frames=16, sample_rate=16_000)


def _config():
  config = config_lib.load_config(os.path.join(ROOT, "configs/tubevit/kinetics.py:tiny"))
  config.total_steps = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = 4
  config.optim.schedule.warmup_steps = 2
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  for entry in config.input.mixture.values():
    entry.data.options = dict(SMALL)
  for ev in config.evals.values():
    ev.input.data.options = dict(SMALL)
    ev.input.batch_size = 16
  return config


def test_joint_training_resume_and_evaluators(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  trainer.train_and_evaluate(_config(), straight)
  trainer.train_and_evaluate(_config(), resumed, stop_after_steps=4)
  trainer.train_and_evaluate(_config(), resumed)
  rows = metrics_lib.read_jsonl(os.path.join(straight, "metrics.jsonl"))
  again = metrics_lib.read_jsonl(os.path.join(resumed, "metrics.jsonl"))
  fractions = [rows[s]["train/fraction/images"] for s in range(1, 9)]
  assert set(fractions) == {0.0, 1.0}  # one dataset per batch, both drawn
  for step in range(5, 9):  # the same dataset and the same batches after the restart
    assert again[step]["train/fraction/images"] == rows[step]["train/fraction/images"]
    assert abs(again[step]["train/loss"] - rows[step]["train/loss"]) < 1e-5 * abs(rows[step]["train/loss"])
  final = rows[8]
  for key in ("eval/videos/top1", "eval/videos/top1_shuffled", "eval/videos/top1_shuffle_drop",
              "eval/videos/top1_shuffle_drop_se", "eval/images/top1", "eval/images/mAP"):
    assert key in final
  assert final["eval/videos/num_examples"] == 32 and final["eval/images/num_examples"] == 16
