r"""TW-BERT pre-training on video-text pairs: VTC with momentum distillation and a queue, VTM with hard
negatives, MLM (ALBEF / ALPRO objectives; TW-BERT's trajectory-word cross-modal encoder and frame selector).

Full run (TPU pod; WebVid-2M written as DMVR records with `python -m vlm.data.write`; ViT-B/16 and BERT-base as
local files):

  python -m vlm.main --config=configs/twbert/pretrain.py:frames=4 --workdir=gs://BUCKET/twbert_pt \
    --config.input.data.files='gs://BUCKET/webvid2m/train-*.tfrecord' --distributed \
    --config.init.options.video_vit=/weights/vit-base-patch16-224/model.safetensors \
    --config.init.options.bert=/weights/bert-base-uncased/model.safetensors

Tiny run on one CPU (built-in dataset), then zero-shot retrieval (text-free VTC ranking, re-ranked by the full
model) on its test split:

  python -m vlm.main --config=configs/twbert/pretrain.py:tiny --workdir=/tmp/twbert_tiny

Arguments (`FILE:ARG`, comma separated):
  frames  frames sampled per clip (default 4, as released; tiny 8).
  kept    frames kept after each selection layer, '-' separated (default '3-2'; tiny '6-4'); 'none' turns the
          selector off (every frame reaches the cross-modal encoder).
  p2w     the P2W cross-attention baseline (appendix C) instead of W2P + T2W.
  random_selector  the frame scorers keep their random initial weights (frozen): the baseline the learnt
          selector is compared with.
  tiny    CPU-sized model and data (vlm/models/twbert.py SIZES['tiny']).
  steps   total steps (default 10 epochs of WebVid-2M's 2.5M pairs; tiny 1200).

As released (config_release/pretrain_TW-BERT.json, base_model.json, timesformer_divst_8x32_224_k600.json):
batch 128 (8 x 16), AdamW (0.9, 0.98), lr 1e-4 with 5% warm-up then linear decay, weight decay 1e-3, gradient
norm clipped at 20, text length 30, 4 frames, CLIP's pixel mean / std, momentum 0.995, queue 262,144,
distillation alpha 0.4, selection after layers 6 and 12. The release's ratio 0.72 would keep int(4 x 0.72) = 2
and then 1 frame of 4; here the kept counts are given directly (3 then 2), so that the cross-modal encoder sees a
trajectory.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vlm import config_lib

WEBVID_PAIRS = 2_500_000
BATCH = 128  # the release: 8 workers x 16 clips
# The built-in dataset's vocabulary: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then its words.
BUILTIN_TEXT = dict(mask_id=4, special_ids=(0, 1, 2, 3, 4), first_regular_id=5)
BERT_TEXT = dict(mask_id=103, special_ids=(0, 100, 101, 102, 103), first_regular_id=999)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _kept(text: str) -> tuple[int, ...]:
  if text in ("none", ""):
    return ()
  try:
    return tuple(int(v) for v in str(text).split("-"))
  except ValueError:
    raise ValueError(f"kept={text!r}: expected frame counts joined by '-' (e.g. '3-2') or 'none'.") from None


def _eval_pp(frames: int, view: str, norm: str, text_len: int, *extra: str) -> str:
  keys = ", ".join(repr(k) for k in ("video", "text", "text_mask", *extra))
  events = "|first('event/start_frame', 'event/end_frame')" if "event/start_frame" in extra else ""
  return (f"sample_segments({frames}, random=False)|{view}|{norm}|sample_captions(1, random=False)"
          f"|tokenize({text_len}, bos=True, eos=True){events}|keep({keys})")


EVENT_KEYS = ("frame_index", "event/start_frame", "event/end_frame")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, frames=0, kept="", p2w=False, random_selector=False, tiny=False, steps=0)
  frames = a.frames or 4
  kept = _kept(a.kept or "3-2")
  steps_per_epoch = WEBVID_PAIRS // BATCH
  c = config_lib.experiment(total_steps=a.steps or 10 * steps_per_epoch)

  # --- Input: sparse frame sampling, one caption per clip, CLIP's normalisation (as released).
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="records", split="train", files="WEBVID2M/train-*.tfrecord")
  c.input.batch_size = BATCH
  c.input.shuffle_buffer = 4096
  c.input.num_frames = frames
  c.input.crop_size = 224
  c.input.max_text_len = 30
  c.input.tokenizer = dict(kind="wordpiece", vocab_file="BERT_BASE_UNCASED/vocab.txt")
  c.input.host_split = "files"
  augment = f"random_resized_crop({c.input.crop_size}, area=(0.5, 1.0))|flip()"
  norm = f"standardize({CLIP_MEAN}, {CLIP_STD})"

  # --- Model (vlm/models/twbert.py documents every field).
  c.model = ml_collections.ConfigDict()
  c.model.name = "twbert"
  c.model.variant = "base"
  c.model.select_after = (6, 12) if kept else ()
  c.model.select_frames = kept
  c.model.selection_samples = 500
  c.model.selection_sigma = 0.05
  c.model.stochastic_eval = False
  c.model.cross_attention = "p2w" if a.p2w else "t2w"
  c.model.pool_patches = 2
  c.model.embed_dim = 256
  c.model.drop_path_rate = 0.1
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  c.model.dtype = "float32"
  # config.init.options (vlm/models/twbert.py `load`): image ViT-B/16 inflated to the TimeSformer; BERT-base for
  # the text encoder (layers 0-5), the cross-modal encoder (6-11) and the MLM head.
  c.init.options.video_vit = config_dict.placeholder(str)
  c.init.options.bert = config_dict.placeholder(str)

  # --- Objective: ALBEF's VTC (momentum 0.995, queue, alpha 0.4), VTM with hard negatives, MLM; equal weights.
  c.task = ml_collections.ConfigDict()
  c.task.name = "matching"
  c.task.vtc_weight = 1.0
  c.task.vtm_weight = 1.0
  c.task.mlm_weight = 1.0
  c.task.temperature = 0.07
  c.task.learn_temperature = True
  c.task.hard_negatives = True
  c.task.mlm_probability = 0.15
  c.task.momentum = 0.995
  c.task.queue_size = 262_144
  c.task.distill_alpha = 0.4
  c.task.update(BERT_TEXT)

  # --- Optimisation: AdamW (0.9, 0.98), 5% warm-up, linear decay, weight decay 1e-3, clip 20.
  c.optim = config_lib.optimizer("adamw", 1e-4, weight_decay=1e-3, warmup_steps=int(0.05 * c.total_steps),
                                 end_lr=0.0, b1=0.9, b2=0.98, schedule="linear", grad_clip_norm=20.0)
  if a.random_selector:
    c.optim.frozen = (r"video_encoder/frame_selector_.*",)
  config_lib.parallelism(c)

  # --- Zero-shot retrieval on MSR-VTT 1k-A: text-free VTC ranking, the top k re-ranked by VTM.
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = dict(
      type="retrieval", every_steps=20_000, rerank_k=128, rerank_batch=256, max_examples=0,
      input=dict(data=dict(name="records", split="test", files="MSRVTT_1KA/test-*.tfrecord"), batch_size=64,
                 pp=_eval_pp(frames, f"center_crop({c.input.crop_size}, resize_smallest={c.input.crop_size})",
                             norm, c.input.max_text_len)))
  # What the selector keeps (against the events where the data marks them) and the cross-modal attention's
  # entropy over frames (appendix C): vlm/evals/frame_selection.py.
  c.evals.frame_selection = dict(type="frame_selection", every_steps=20_000, max_examples=0,
                                 input=dict(c.evals.retrieval.input))

  if a.tiny:  # CPU-sized model and data: 8 frames kept 8 -> 6 -> 4 by default
    frames = a.frames or 8
    kept = _kept(a.kept or "6-4")
    c.input.num_frames = frames
    c.model.select_frames = kept
    if not a.steps:
      c.total_steps = 1200
      c.optim.schedule.warmup_steps = 60
    c.log_every_steps, c.checkpoint_every_steps = 50, 400
    c.input.data = dict(name="builtin", split="train",
                        options=dict(num_train=2048, num_test=512, num_images=64, num_frames=16, fps=10.0,
                                     sample_rate=16_000, colour_change=0.0))
    c.input.batch_size, c.input.shuffle_buffer, c.input.host_split = 32, 512, "examples"
    c.input.crop_size, c.input.max_text_len = 32, 16
    c.input.tokenizer = dict(kind="words", vocab_file=None)
    augment = f"decode()|resize({c.input.crop_size})"
    norm = "normalize(-1, 1)"
    c.model.variant = "tiny"
    c.model.select_after = (2, 4) if kept else ()
    c.model.drop_path_rate = c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.task.queue_size = 256
    c.task.hard_negatives = False  # the built-in captions repeat across clips (configs/svitt/pretrain.py)
    c.task.mlm_probability = 0.3
    c.task.update(BUILTIN_TEXT)
    c.optim.lr = 5e-4
    c.evals.retrieval.update(every_steps=None, rerank_k=16)
    c.evals.retrieval.input.data = dict(split="test")
    c.evals.retrieval.input.pp = _eval_pp(frames, f"decode()|resize({c.input.crop_size})", norm,
                                          c.input.max_text_len)
    c.evals.frame_selection.update(every_steps=None)
    c.evals.frame_selection.input = dict(
        data=dict(split="test"), batch_size=64, extra_context={"event/start_frame": "int", "event/end_frame": "int"},
        pp=_eval_pp(frames, f"decode()|resize({c.input.crop_size})", norm, c.input.max_text_len, *EVENT_KEYS))

  text = f"sample_captions(1)|tokenize({c.input.max_text_len}, bos=True, eos=True)"
  c.input.pp = f"sample_segments({frames})|{augment}|{norm}|{text}|keep('video', 'text', 'text_mask')"
  return config_lib.own_data_overridable(c)
