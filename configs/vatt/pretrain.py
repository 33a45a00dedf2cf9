r"""VATT pre-training: video-audio NCE + video-text MIL-NCE (VATT appendix B.1-B.4).

Full run (TPU pod; HowTo100M + AudioSet written as DMVR records with `python -m vlm.data.write`):

  python -m vlm.main --config=configs/vatt/pretrain.py:BBS --workdir=gs://BUCKET/vatt_bbs \
    --config.input.data.name=records --config.input.data.files='gs://BUCKET/howto100m/train-*.tfrecord' \
    --distributed

Tiny run on one CPU (the README's main job; built-in dataset, ~3 min on 2 cores):

  python -m vlm.main --config=configs/vatt/pretrain.py:tiny --workdir=/tmp/vatt_tiny

Arguments (`FILE:ARG`, comma separated):
  variant  'BBS' | 'MBS' | 'LBS' (video-audio-text tower sizes from table 1) or 'MA' (modality-agnostic Medium).
  tiny     CPU-sized everything: 2-layer width-64 towers, 8 frames of 32x32, 0.8 s of audio, batch 32, the
           built-in dataset, retrieval on its test split at the end.
  batch    global batch size (default 2048, B.4; 512 in the paper's exploration runs).
  steps    total training steps (default 500k, B.4).

Paper settings (B.1-B.4) kept by the full config: 32 frames at 10 fps, 224 crops with Inception-style random
resized crop (area [0.08, 1], aspect [0.5, 2]), flip, colour jitter, [-1, 1] normalisation; 4x16x16 tubelets;
raw 48 kHz waveform, 128-sample patches; 2^16-word vocabulary, 16 words; DropToken 0.5; d_va 512, d_vt 256,
tau 0.07, lambda 1; Adam 1e-4, 10k warmup, 500k steps, quarter-period cosine from 1e-4 to 5e-5, batch 2048.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from vlm import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="BBS", tiny=False, batch=2048, steps=500_000)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = a.steps if not a.tiny else 1200
  c.log_every_steps = 100 if not a.tiny else 50
  c.checkpoint_every_steps = 5000 if not a.tiny else 400
  c.keep_checkpoints = 3
  c.init = config_lib.init_block()  # config.init.path: a workdir / checkpoint (or weights file) to start from

  # --- Input (B.1). The audio window is the clip's time span: num_frames / fps seconds at 48 kHz.
  c.input = ml_collections.ConfigDict()
  # The tiny run reads a lighter built-in dataset: 16-frame clips with 16 kHz audio (~100 KB per clip instead of
  # ~630 KB for 32 frames at 48 kHz), generated once (~10 s) and cached under ~/.cache/vlm/builtin.
  builtin = (dict(num_train=2048, num_test=512, num_images=64, num_frames=16, sample_rate=16_000) if a.tiny
             else dict())
  c.input.data = dict(name="builtin", split="train", options=builtin)
  c.input.batch_size = a.batch if not a.tiny else 32
  c.input.shuffle_buffer = 4096 if not a.tiny else 512
  c.input.num_frames = 32 if not a.tiny else 8
  c.input.fps = 10.0
  c.input.crop_size = 224 if not a.tiny else 32
  c.input.audio_sample_rate = 48_000 if not a.tiny else 16_000
  c.input.audio_samples = int(round(c.input.num_frames / c.input.fps * c.input.audio_sample_rate))
  c.input.num_captions = 4 if not a.tiny else 2  # MIL-NCE candidates per clip (caption + neighbours).
  c.input.max_text_len = 16
  c.input.tokenizer = dict(kind="words", vocab_file=None)  # None: the source's vocabulary (built-in dataset).
  c.input.cache = False
  # The tiny dataset is small and local: every host reads all of it, so a 2-process run sees exactly the global
  # batches of a 1-process run. Pod-scale data splits shards across hosts instead ('files').
  c.input.host_split = "examples" if a.tiny else "files"
  # None: vlm.data.pipeline.default_pp (crop, flip, colour jitter, [-1, 1], tokenize).
  c.input.pp = config_dict.placeholder(str)
  if a.tiny:
    # The built-in dataset's captions name colours and left/right motion, so hue jitter and horizontal flips
    # would contradict them; its 64x64 clips are small, so crops keep at least half the frame.
    c.input.pp = (f"sample_clip({c.input.num_frames}, fps={c.input.fps}, audio_samples={c.input.audio_samples})"
                  f"|random_resized_crop({c.input.crop_size}, area=(0.5, 1.0), aspect=(0.75, 1.33))"
                  "|normalize(-1, 1)|audio_noise(0.01)"
                  f"|sample_captions({c.input.num_captions})|tokenize({c.input.max_text_len})"
                  "|keep('video', 'audio', 'audio_mask', 'text', 'text_mask')")

  # --- Model (table 1, B.2, B.3). Every field is documented in vlm/tasks/contrastive.py.
  c.model = ml_collections.ConfigDict()
  c.model.name = "vatt"
  c.model.variant = a.variant
  c.model.tiny = a.tiny
  c.model.video_patch_size = (4, 16, 16) if not a.tiny else (2, 8, 8)
  # 128 samples per token at 48 kHz (B.1); the tiny run (0.8 s at 16 kHz) uses 256: 50 audio tokens.
  c.model.audio_patch_size = 128 if not a.tiny else 256
  c.model.spectrogram = False
  # 2^16 words as word2vec (B.1); the built-in dataset's vocabulary has ~150 words.
  c.model.text_vocab_size = 2 ** 16 if not a.tiny else 1024
  c.model.text_embed_dim = 300
  # Frozen word2vec in the paper; nothing pre-trained is loaded here, so the tiny run trains its table.
  c.model.trainable_embeddings = bool(a.tiny)
  c.model.droptoken_rate = 0.5
  c.model.dropout_rate = 0.1 if not a.tiny else 0.0
  c.model.attention_dropout_rate = 0.1 if not a.tiny else 0.0
  c.model.va_dim = 512
  c.model.vat_dim = 256
  c.model.remat = False
  c.model.dtype = "float32"

  # --- Objective (B.3).
  c.task = ml_collections.ConfigDict()
  c.task.name = "contrastive"
  c.task.va_weight = 1.0
  c.task.vt_weight = 1.0
  c.task.temperature = 0.07

  # --- Optimisation (B.4): Adam 1e-4, 10k warmup, quarter-period cosine to 5e-5 at the last step.
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 1e-4 if not a.tiny else 1e-3
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = config_dict.placeholder(float)
  c.optim.schedule = dict(kind="warmup_cosine", warmup_steps=10_000 if not a.tiny else 100,
                          end_lr=5e-5 if not a.tiny else 5e-4, period="quarter")

  # --- Parallelism: pure data parallelism over every device by default; 'fsdp' shards weights too.
  c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
  c.sharding = "dp"
  c.sharding_rules = None

  # --- Zero-shot text-to-video retrieval (B.9): 4 uniformly spaced clips, centre crop, embeddings averaged.
  c.evals = ml_collections.ConfigDict()
  num_clips = 4
  # B.9 samples 32 frames with stride 2 at 25 fps (12.5 fps); the tiny run keeps its training rate.
  eval_fps = c.input.fps if a.tiny else 12.5
  c.evals.retrieval = dict(
      type="retrieval",
      every_steps=None if a.tiny else 50_000,
      max_examples=0,
      input=dict(
          data=dict(split="test"),
          batch_size=64 if a.tiny else 256,
          num_captions=1,
          pp=(f"sample_multiclip({num_clips}, {c.input.num_frames}, fps={eval_fps})"
              # tiny: the whole 64x64 frame resized to 32, as in training (a 32-pixel crop would see a quarter)
              f"|center_crop({c.input.crop_size}, resize_smallest={c.input.crop_size if a.tiny else None})"
              "|normalize(-1, 1)"
              f"|sample_captions(1, random=False)|tokenize({c.input.max_text_len})"
              "|keep('video', 'text', 'text_mask')"),
      ),
  )
  if not a.tiny:
    # MSR-VTT 1k-A written with the record writer (B.9: 32 frames, stride 2 at 25 fps, 224 centre crops).
    c.evals.retrieval.input.data = dict(name="records", split="test", files="MSRVTT_1KA/test-*.tfrecord")
  # What the user set in the config arg wins over the tiny defaults above (e.g. `tiny,steps=500000`).
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  return c
