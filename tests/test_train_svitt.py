"""The tiny SViTT configs end to end through the trainer: pre-training with the retrieval evaluator (VTC ranking,
VTM re-ranking, shuffled-frame probe), then QA fine-tuning started from that checkpoint with the QA evaluator."""
import os

from vlm import config_lib
from vlm.data import builtin
from vlm.train import metrics as metrics_lib
from vlm.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train=64, num_test=32, num_images=64, num_frames=16, sample_rate=16_000)  # as the TubeViT test


def _config(name, **overrides):
  config = config_lib.load_config(os.path.join(ROOT, "configs/svitt", name))
  config.total_steps = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.optim.schedule.warmup_steps = 1
  config.input.batch_size = 8
  config.input.shuffle_buffer = 16
  config.input.data.options = dict(SMALL, colour_change=0.5)  # as the tiny configs: order questions too
  # A shallower model compiles faster; every stage (pruning in both encoders, the decoder) is still there.
  config.model.vision_layers, config.model.text_layers, config.model.fusion_layers = 2, 1, 1
  config.model.visual_prune_after = (1,)
  for ev in config.evals.values():
    ev.input.batch_size = 16
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_pretrain_retrieval_then_qa_from_the_checkpoint(tmp_path):
  pre = str(tmp_path / "pretrain")
  results = trainer.train_and_evaluate(_config("pretrain.py:tiny", **{"evals.retrieval.rerank_k": 4}), pre)
  assert results["eval/retrieval/num_pairs"] == 32
  for key in ("t2v_R@1", "vtc_t2v_R@1", "v2t_R@5", "t2v_R_mean", "t2v_R@1_shuffled", "t2v_R@1_shuffle_drop"):
    assert 0.0 <= results[f"eval/retrieval/{key}"] + (100 if "drop" in key else 0) <= 200, key
  for key in ("t2v_R_mean_shuffle_drop_se", "v2t_R@1_shuffle_drop_se"):  # paired SE over 32 queries
    assert 0.0 <= results[f"eval/retrieval/{key}"] <= 100.0 / 31 ** 0.5, key
  # Re-ranking only reorders the top 4: recall at 10 and 5 (beyond k) equals the first stage's at k >= 4.
  assert results["eval/retrieval/t2v_R@5"] == results["eval/retrieval/vtc_t2v_R@5"]
  rows = metrics_lib.read_jsonl(os.path.join(pre, "metrics.jsonl"))
  assert {"train/vtc", "train/vtm", "train/mlm", "train/temperature"} <= set(rows[2])

  qa = str(tmp_path / "qa")
  results = trainer.train_and_evaluate(_config("qa.py:tiny", **{"init.path": pre, "model.decoder_layers": 1}), qa)
  assert results["eval/qa/num_examples"] == 32
  for key in ("accuracy", "accuracy_shuffled", "majority_accuracy"):
    assert 0.0 <= results[f"eval/qa/{key}"] <= 100.0
  assert results["eval/qa/majority_accuracy"] >= 100.0 / 18
  assert 0.0 <= results["eval/qa/accuracy_shuffle_drop_se"] <= 100.0 / 31 ** 0.5
  groups = [k[len("eval/qa/accuracy/"):] for k in results if k.startswith("eval/qa/accuracy/")]
  assert "colour order" in groups and set(groups) <= set(builtin.QUESTION_KINDS), groups  # grouped by kind
  assert "eval/qa/accuracy_shuffle_drop/colour order" in results
