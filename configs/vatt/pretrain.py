r"""VATT pre-training: video-audio NCE + video-text MIL-NCE (VATT appendix B.1-B.4).

Full run (TPU pod; HowTo100M + AudioSet written as DMVR records with `python -m vlm.data.write`):

  python -m vlm.main --config=configs/vatt/pretrain.py:BBS --workdir=gs://BUCKET/vatt_bbs \
    --config.input.data.name=records --config.input.data.files='gs://BUCKET/howto100m/train-*.tfrecord' \
    --distributed

Tiny run on one CPU (the README's main job; built-in dataset, ~3 min on 2 cores):

  python -m vlm.main --config=configs/vatt/pretrain.py:tiny --workdir=/tmp/vatt_tiny

Arguments (`FILE:ARG`, comma separated):
  variant  'BBS' | 'MBS' | 'LBS' (video-audio-text tower sizes from table 1) or 'MA' (modality-agnostic Medium):
           config.model.variant, a key of vlm/models/vatt.py SIZES.
  tiny     CPU-sized everything: the variant's tiny form (model.variant 'tiny', or 'MA-tiny' for 'MA': 2-layer
           width-64 towers), 8 frames of 32x32, 0.8 s of audio, batch 32, the built-in dataset, retrieval on its
           test split at the end. Arguments given explicitly (steps, batch) keep their values.
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


def _audio_samples(inp: ml_collections.ConfigDict) -> int:
  """The clip's time span (num_frames / fps seconds) at the audio sample rate (B.1)."""
  return int(round(inp.num_frames / inp.fps * inp.audio_sample_rate))


def _retrieval_pp(inp: ml_collections.ConfigDict, *, clips: int, fps: float, resize_smallest: int | None) -> str:
  """Zero-shot retrieval views (B.9): `clips` uniformly spaced clips, one centre crop, the first caption."""
  return (f"sample_multiclip({clips}, {inp.num_frames}, fps={fps})"
          f"|center_crop({inp.crop_size}, resize_smallest={resize_smallest})|normalize(-1, 1)"
          f"|sample_captions(1, random=False)|tokenize({inp.max_text_len})|keep('video', 'text', 'text_mask')")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="BBS", tiny=False, batch=2048, steps=500_000)
  c = config_lib.experiment(total_steps=a.steps)  # config.init.path: a workdir / checkpoint to start from

  # --- Input (B.1). The audio window is the clip's time span: num_frames / fps seconds at 48 kHz.
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="builtin", split="train", options=dict())
  c.input.batch_size = a.batch
  c.input.shuffle_buffer = 4096
  c.input.num_frames = 32
  c.input.fps = 10.0
  c.input.crop_size = 224
  c.input.audio_sample_rate = 48_000
  c.input.audio_samples = _audio_samples(c.input)
  c.input.num_captions = 4  # MIL-NCE candidates per clip (caption + neighbours).
  c.input.max_text_len = 16
  c.input.tokenizer = dict(kind="words", vocab_file=None)  # None: the source's vocabulary (built-in dataset).
  c.input.cache = False
  c.input.host_split = "files"  # pod-scale data: hosts read disjoint shards
  # None: vlm.data.pipeline.default_pp (crop, flip, colour jitter, [-1, 1], tokenize).
  c.input.pp = config_dict.placeholder(str)

  # --- Model (table 1, B.2, B.3). Every key is a field of vlm.models.vatt.Model (documented there).
  c.model = ml_collections.ConfigDict()
  c.model.name = "vatt"
  c.model.variant = a.variant
  c.model.video_patch_size = (4, 16, 16)
  c.model.audio_patch_size = 128  # samples per token at 48 kHz (B.1)
  c.model.spectrogram = False
  c.model.text_vocab_size = 2 ** 16  # word2vec's vocabulary (B.1)
  c.model.text_embed_dim = 300
  c.model.trainable_embeddings = False  # frozen word2vec
  c.model.droptoken_rate = 0.5
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
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
  c.optim = config_lib.optimizer("adam", 1e-4, warmup_steps=10_000, end_lr=5e-5,
                                 schedule_options=dict(period="quarter"))

  # --- Parallelism: pure data parallelism over every device by default; 'fsdp' shards weights too.
  config_lib.parallelism(c)

  # --- Zero-shot text-to-video retrieval (B.9) on MSR-VTT 1k-A written with the record writer: 4 uniformly
  # spaced clips of 32 frames with stride 2 at 25 fps (12.5 fps), 224 centre crops, embeddings averaged.
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = dict(
      type="retrieval", every_steps=50_000, max_examples=0,
      input=dict(data=dict(name="records", split="test", files="MSRVTT_1KA/test-*.tfrecord"), batch_size=256,
                 num_captions=1, pp=_retrieval_pp(c.input, clips=4, fps=12.5, resize_smallest=None)))

  if a.tiny:  # CPU-sized everything (the README's main job): ~3 min on 2 cores.
    c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 1200, 50, 400
    # A lighter built-in dataset: 16-frame clips with 16 kHz audio (~100 KB per clip instead of ~630 KB for 32
    # frames at 48 kHz), generated once (~10 s) and cached under ~/.cache/vlm/builtin.
    c.input.data.options = dict(num_train=2048, num_test=512, num_images=64, num_frames=16, sample_rate=16_000)
    c.input.batch_size, c.input.shuffle_buffer = 32, 512
    c.input.num_frames, c.input.crop_size, c.input.audio_sample_rate = 8, 32, 16_000
    c.input.audio_samples = _audio_samples(c.input)
    c.input.num_captions = 2
    # The dataset is small and local: every host reads all of it, so a 2-process run sees exactly the global
    # batches of a 1-process run.
    c.input.host_split = "examples"
    # The built-in dataset's captions name colours and left/right motion, so hue jitter and horizontal flips
    # would contradict them; its 64x64 clips are small, so crops keep at least half the frame.
    c.input.pp = (f"sample_clip({c.input.num_frames}, fps={c.input.fps}, audio_samples={c.input.audio_samples})"
                  f"|random_resized_crop({c.input.crop_size}, area=(0.5, 1.0), aspect=(0.75, 1.33))"
                  "|normalize(-1, 1)|audio_noise(0.01)"
                  f"|sample_captions({c.input.num_captions})|tokenize({c.input.max_text_len})"
                  "|keep('video', 'audio', 'audio_mask', 'text', 'text_mask')")
    # Every tower tiny, modality-agnostic if the variant is ('MA,tiny').
    c.model.variant = "MA-tiny" if a.variant.startswith("MA") else "tiny"
    c.model.video_patch_size = (2, 8, 8)
    c.model.audio_patch_size = 256  # 0.8 s at 16 kHz: 50 audio tokens
    c.model.text_vocab_size = 1024  # the built-in dataset's vocabulary has ~150 words
    c.model.trainable_embeddings = True  # nothing pre-trained is loaded here, so the run trains its table
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.optim.lr, c.optim.schedule.warmup_steps, c.optim.schedule.end_lr = 1e-3, 100, 5e-4
    # Retrieval on the built-in test split at the end, at the training frame rate; the whole 64x64 frame resized
    # to 32, as in training (a 32-pixel crop would see a quarter).
    c.evals.retrieval.every_steps = None
    c.evals.retrieval.input.data = dict(split="test")
    c.evals.retrieval.input.batch_size = 64
    c.evals.retrieval.input.pp = _retrieval_pp(c.input, clips=4, fps=c.input.fps, resize_smallest=c.input.crop_size)

  # What the user set in the config arg wins over the tiny values above (e.g. `tiny,steps=500000`).
  config_lib.apply_args(c, a, steps="total_steps", batch="input.batch_size")
  return c
