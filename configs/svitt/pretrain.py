r"""SViTT pre-training on video-text pairs: VTC + VTM + MLM (SViTT supplement A.3, tables A1 and A4).

Full run, stage 1 (TPU pod; WebVid-2M written as DMVR records with `python -m vlm.data.write`; BEiT-B/16 and
BERT-base as HF transformers `save_pretrained` directories):

  python -m vlm.main --config=configs/svitt/pretrain.py:frames=4 --workdir=gs://BUCKET/svitt_t4 \
    --config.input.data.files='gs://BUCKET/webvid2m/train-*.tfrecord' --distributed \
    --config.init.options.beit=/weights/beit-base-patch16-224-pt22k-ft22k/model.safetensors \
    --config.init.options.bert=/weights/bert-base-uncased/model.safetensors

Temporal expansion (A.1): each stage restarts from the previous stage's checkpoint with more frames; the 3-D
relative tables are expanded by nearest temporal offset (eq. 7):

  python -m vlm.main --config=configs/svitt/pretrain.py:frames=8 --workdir=gs://BUCKET/svitt_t8 \
    --config.init.path=gs://BUCKET/svitt_t4 --config.init.options.frames_from=4 --distributed

Tiny run on one CPU (built-in dataset; ~6 min on 2 cores), then zero-shot retrieval with VTM re-ranking and the
shuffled-frame probe on its test split:

  python -m vlm.main --config=configs/svitt/pretrain.py:tiny --workdir=/tmp/svitt_tiny

Arguments (`FILE:ARG`, comma separated):
  frames  T = 4 | 8 | 16 (table A4 column; default 4). The tiny run takes any T (default 4; 1 = a single-frame
          baseline).
  dense   the dense baseline: full attention and no token pruning (SViTT "Dense" rows of tables A3 / A5);
          default is the hybrid-sparse model of table A1.
  tiny    CPU-sized model and data (see vlm/tasks/matching.py SIZES['tiny']).
  steps   total steps (default: 10 epochs of WebVid-2M's 2.5M pairs at the table's batch size; tiny 1200).

Table A4 (pre-training): T 4 / 8 / 16 -> batch 512 / 336 / 192, lr 3e-5 / 1e-5 / 5e-6, keep rates (q_v, q_m)
(0.7, 0.1) / (0.6, 0.1) / (0.5, 0.1); 10 epochs, 1 warm-up epoch, weight decay 0.02, text length 32, blocks
(K_l, K_r, G) = (1, 3, 56); AdamW (0.9, 0.999), cosine schedule. Frames: sparse sampling (one random frame from
each of T equal chunks in training, the middle one in evaluation), random resized crops of 224 (A.3).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vlm import config_lib

TABLE_A4 = {4: dict(batch=512, lr=3e-5, keep=(0.7, 0.1)),
            8: dict(batch=336, lr=1e-5, keep=(0.6, 0.1)),
            16: dict(batch=192, lr=5e-6, keep=(0.5, 0.1))}
WEBVID_PAIRS = 2_500_000
# The built-in dataset's vocabulary: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then 149 words.
BUILTIN_TEXT = dict(mask_id=4, special_ids=(0, 1, 2, 3, 4), first_regular_id=5)
BERT_TEXT = dict(mask_id=103, special_ids=(0, 100, 101, 102, 103), first_regular_id=999)


def _retrieval_pp(frames: int, view: str, text_len: int) -> str:
  """Evaluation views: the middle frame of each of `frames` chunks, `view` (crop / resize), the first caption."""
  return (f"sample_segments({frames}, random=False)|{view}|normalize(-1, 1)|sample_captions(1, random=False)"
          f"|tokenize({text_len}, bos=True, eos=True)|keep('video', 'text', 'text_mask')")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, frames=4, dense=False, tiny=False, steps=0)
  if not a.tiny and a.frames not in TABLE_A4:
    raise ValueError(f"frames={a.frames}: table A4 has 4, 8 and 16 (the tiny config takes any).")
  row = TABLE_A4.get(a.frames, TABLE_A4[4])
  steps_per_epoch = WEBVID_PAIRS // row["batch"]
  c = config_lib.experiment(total_steps=a.steps or 10 * steps_per_epoch)  # config.init: see the model block

  # --- Input: sparse frame sampling (A.3), one caption per clip, [CLS] caption [SEP] of 32 tokens.
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="records", split="train", files="WEBVID2M/train-*.tfrecord")
  c.input.batch_size = row["batch"]
  c.input.shuffle_buffer = 4096
  c.input.num_frames = a.frames
  c.input.crop_size = 224
  c.input.max_text_len = 32
  c.input.tokenizer = dict(kind="wordpiece", vocab_file="BERT_BASE_UNCASED/vocab.txt")  # BERT's vocabulary
  c.input.host_split = "files"
  augment = f"random_resized_crop({c.input.crop_size}, area=(0.5, 1.0))|flip()"

  # --- Model (A.1). Every field is documented in vlm/tasks/matching.py.
  c.model = ml_collections.ConfigDict()
  c.model.name = "svitt"
  c.model.size = "base"
  c.model.vocab_size = config_dict.placeholder(int)  # None: the size's (BERT 30522; tiny 160)
  c.model.vision_layers = config_dict.placeholder(int)  # None: the size's (12 / tiny 4)
  c.model.patch_size = config_dict.placeholder(int)  # None: the size's (16 / tiny 8)
  c.model.text_layers = config_dict.placeholder(int)  # None: 9 / tiny 2
  c.model.fusion_layers = config_dict.placeholder(int)  # None: 3 / tiny 2
  c.model.attention = "dense" if a.dense else "block_sparse"
  c.model.block_size = 56
  c.model.local_blocks = 1
  c.model.random_blocks = 3
  c.model.block_eval_seed = 0
  c.model.token_order = "raster"
  c.model.visual_keep_rate, c.model.multimodal_keep_rate = (1.0, 1.0) if a.dense else row["keep"]
  c.model.visual_prune_after = (4, 7, 10)
  c.model.multimodal_prune_after = (1,)
  c.model.absolute_positions = False  # BEiT-B/16 has relative biases only
  c.model.drop_path_rate = 0.1
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  c.model.embed_dim = 256
  c.model.decoder_layers = 0
  # config.init.options (read by vlm/models/svitt.py `load`): the checkpoint's frame count for temporal
  # expansion; stage 1 starts from image BEiT-B/16 and BERT-base (A.1): HF .safetensors, config.json beside each.
  c.init.options.frames_from = config_dict.placeholder(int)
  c.init.options.beit = config_dict.placeholder(str)
  c.init.options.bert = config_dict.placeholder(str)
  c.model.dtype = "float32"

  # --- Objective (A.3): equal weights.
  c.task = ml_collections.ConfigDict()
  c.task.name = "matching"
  c.task.vtc_weight = 1.0
  c.task.vtm_weight = 1.0
  c.task.mlm_weight = 1.0
  c.task.temperature = 0.07
  c.task.learn_temperature = True
  c.task.hard_negatives = True
  c.task.mlm_probability = 0.5
  c.task.update(BERT_TEXT)

  # --- Optimisation (table A4): AdamW (0.9, 0.999), 1 warm-up epoch, cosine, weight decay 0.02.
  c.optim = config_lib.optimizer("adamw", row["lr"], weight_decay=0.02, warmup_steps=steps_per_epoch, end_lr=0.0,
                                 b1=0.9, b2=0.999)
  config_lib.parallelism(c)

  # --- Zero-shot retrieval on MSR-VTT 1k-A: VTC ranking, VTM re-ranking of the top k (A.3, k_test 128),
  # shuffled-frame probe.
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = dict(
      type="retrieval", every_steps=20_000, rerank_k=128, rerank_batch=256, shuffle_frames=True, max_examples=0,
      input=dict(data=dict(name="records", split="test", files="MSRVTT_1KA/test-*.tfrecord"), batch_size=64,
                 pp=_retrieval_pp(a.frames, f"center_crop({c.input.crop_size}, resize_smallest={c.input.crop_size})",
                                  c.input.max_text_len)))

  if a.tiny:  # CPU-sized model and data (vlm/tasks/matching.py SIZES['tiny']), ~6 min on 2 cores
    if not a.steps:
      c.total_steps = 1200
    c.log_every_steps, c.checkpoint_every_steps = 50, 400
    # 16 frames at `fps` (10: 1.6 s clips; configs/svitt/README.md's table-A8 rows also try 5), 2048 train / 512
    # test clips; the table-A8 rows also add colour changes (`--config.input.data.options.colour_change=0.5`: a
    # frame-order signal simpler than the motion's sign; vlm/data/builtin.py).
    c.input.data = dict(name="builtin", split="train",
                        options=dict(num_train=2048, num_test=512, num_images=64, num_frames=16, fps=10.0,
                                     sample_rate=16_000, colour_change=0.0))
    c.input.batch_size, c.input.shuffle_buffer, c.input.host_split = 32, 512, "examples"
    c.input.crop_size, c.input.max_text_len = 32, 16
    c.input.tokenizer = dict(kind="words", vocab_file=None)  # the built-in dataset's vocab.txt (whole words)
    augment = f"decode()|resize({c.input.crop_size})"  # whole 64x64 frames (crops cut the moving object out)
    c.model.size = "tiny"
    c.model.block_size = 8  # 16 tokens per frame: half-frame blocks keep 1 local + 3 random blocks meaningful
    if not a.dense:
      c.model.visual_keep_rate, c.model.multimodal_keep_rate = 0.7, 0.5  # 64 tokens at T=4; 0.1 would leave 2
    c.model.visual_prune_after = (2, 3)
    # Trained from scratch, the model read the frame order better with a learned absolute table as well (tiny QA
    # 59.8% vs 54.1%, retrieval shuffled-frame drop 1.1 vs 0 R_mean).
    c.model.absolute_positions = True
    c.model.drop_path_rate = c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    if a.frames * (c.input.crop_size // 8) ** 2 < 4 * c.model.block_size:
      c.model.attention = "dense"  # fewer than K_l + K_r blocks (e.g. the 1-frame baseline): nothing to sparsify
    # Uniform negatives (eq. 14 as written): the built-in captions repeat across clips (60 shape x colour x
    # direction combinations), so the hardest in-batch negative is often a true match: with hard negatives the
    # tiny VTM stayed at its prior (accuracy 0.667), with uniform ones it reached 0.89.
    c.task.hard_negatives = False
    c.task.mlm_probability = 0.3
    c.task.update(BUILTIN_TEXT)
    c.optim.lr, c.optim.schedule.warmup_steps = 5e-4, 100
    c.evals.retrieval.update(every_steps=None, rerank_k=16)
    c.evals.retrieval.input.data = dict(split="test")
    c.evals.retrieval.input.pp = _retrieval_pp(a.frames, f"decode()|resize({c.input.crop_size})",
                                               c.input.max_text_len)

  text = f"sample_captions(1)|tokenize({c.input.max_text_len}, bos=True, eos=True)"
  c.input.pp = (f"sample_segments({a.frames})|{augment}|normalize(-1, 1)|{text}"
                "|keep('video', 'text', 'text_mask')")
  return config_lib.own_data_overridable(c)
