r"""HierVL pre-training: clip-level EgoNCE on clip-narration pairs plus summary-level EgoNCE over episodes.

Full run (TPU pod; Ego4D clips written as DMVR records with `python -m vlm.data.write` from a manifest with the
episode, narration, nouns, verbs and summary columns, in episode order; ViT-B/16 and DistilBERT local files):

  python -m vlm.main --config=configs/hiervl/pretrain.py:sa --workdir=gs://BUCKET/hiervl_sa --distributed \
    --config.input.mixture.clips.data.files='gs://BUCKET/ego4d/train-*.tfrecord' \
    --config.input.mixture.episodes.data.files='gs://BUCKET/ego4d/train-*.tfrecord' \
    --config.input.tokenizer.vocab_file=/weights/distilbert-base-uncased/vocab.txt \
    --config.init.options.video_vit=/weights/vit-base-patch16-224-in21k/model.safetensors \
    --config.init.options.text_distilbert=/weights/distilbert-base-uncased/model.safetensors

Tiny run on one CPU (the built-in dataset's episodes of 4 clips; a few minutes on 2 cores), with zero-shot
clip retrieval and EgoMCQ / SummaryMCQ-style multiple choice on its test split:

  python -m vlm.main --config=configs/hiervl/pretrain.py:tiny --workdir=/tmp/hiervl_sa
  python -m vlm.main --config=configs/hiervl/pretrain.py:egovlp,tiny --workdir=/tmp/hiervl_egovlp

Arguments (`FILE:ARG`, comma separated; the first bare word is the variant):
  variant  the paper's rows (table 1) and ablations:
           sa          HierVL-SA: child steps + parent steps, self-attention aggregator (default);
           avg         HierVL-Avg: the aggregator is the mean of the clip / narration embeddings;
           egovlp      the EgoVLP baseline: child steps only (no parent stream); its episodes are embedded by
                       averaging clips at evaluation;
           only_video  parent loss EgoNCE(Agg(clips), summary) alone (the release's
                       only_video_with_summary_baseline);
           no_summary  parent loss EgoNCE(Agg(clips), Agg(narrations)) without the summary (the release's
                       only_sa_no_summary_baseline).
  layers   f_v depth = heads (supplement fig. 1 scales 4, 8, 12; default 12). The tiny model keeps 2 heads.
  clips    N clips per episode in a parent step (Ego4D: 16; tiny: the built-in episode length, 4).
  tiny     CPU-sized model and data (vlm/models/hiervl.py SIZES['tiny']).
  steps    total steps, child and parent steps together (default 90,000: ten passes of the child stream over
           EgoClip's 3.8M pairs at batch 512 is 74,000 child steps, plus one parent step per 5; tiny 1200).
  seed     config.seed (the SummaryMCQ comparison uses two).

Values from the release (peers' notes): temperature 0.05; a parent step after every 5 child steps
(`aggregation_freq`), each parent example an episode of 16 clips x 4 frames with its 16 narrations and one
summary; aggregator 6 layers, width 256, 8 heads, MLP x4, no q/k/v bias, drop-path 0.1, CLS output; heads to a
256-d joint space (text ReLU -> Linear, video Linear); AdamW at 3e-5 (the downstream recipes' rate; the
pre-training rate of the release's JSON is used as is). Frames: 4 per clip, one random frame from each of 4 equal
chunks (Frozen-in-Time's sampling), 224 crops.
"""
from __future__ import annotations

import ml_collections

from vlm import config_lib

VARIANTS = {  # variant -> (aggregator, summary terms or None for no parent stream)
    "sa": ("self_attention", ("text_summary", "video_summary")),
    "avg": ("average", ("text_summary", "video_summary")),
    "egovlp": ("average", None),
    "only_video": ("self_attention", ("video_summary",)),
    "no_summary": ("self_attention", ("text_video",)),
}
EPISODE_KEYS = {"episode/narration": "string", "episode/summary": "string", "episode/noun/index": "int",
                "episode/verb/index": "int"}


def _text_pp(max_len: int, random: bool) -> str:
  """Each clip's narration -> text / text_mask [1, L]; its noun / verb tags -> multi-hot nouns / verbs."""
  return (f"sample_captions(1, random={random}, key='episode/narration')"
          f"|tokenize({max_len}, bos=True, eos=True, inkey='episode/narration')")


def _summary_pp(max_len: int) -> str:
  return (f"sample_captions(1, random=False, key='episode/summary')|tokenize({max_len}, bos=True, eos=True, "
          "inkey='episode/summary', outkey='summary', mask_key='summary_mask')")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_lib.parse_arg(arg, variant="sa", layers=12, clips=16, tiny=False, steps=90_000, seed=0)
  if a.variant not in VARIANTS:
    raise ValueError(f"variant={a.variant!r}: expected one of {', '.join(VARIANTS)}.")
  aggregator, terms = VARIANTS[a.variant]
  c = config_lib.experiment(total_steps=a.steps, log_every_steps=100, checkpoint_every_steps=5000, seed=a.seed)

  # --- Input: two streams of the same records in a fixed cycle (vlm/data/mixture.py 'cycle'): `clips` (one
  # clip and its narration per example) takes 5 consecutive batches, then `episodes` (N consecutive clips of one
  # episode per example, vlm/data/grouping.py) one.
  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="records", split="train", files="EGO4D/train-*.tfrecord")
  c.input.batch_size = 512
  c.input.shuffle_buffer = 4096
  c.input.num_frames = 4
  c.input.crop_size = 224
  c.input.max_text_len = 32
  c.input.tokenizer = dict(kind="wordpiece", vocab_file="DISTILBERT_BASE_UNCASED/vocab.txt")
  c.input.extra_context = dict(EPISODE_KEYS)
  c.input.host_split = "files"
  episodes_per_batch, clips_per_episode = 32, a.clips  # the release: 1 episode per GPU
  num_nouns, num_verbs = 582, 118  # EgoClip's noun / verb classes (EgoNCE's positives)
  augment = f"random_resized_crop({c.input.crop_size}, area=(0.5, 1.0))"
  view = f"center_crop({c.input.crop_size}, resize_smallest={c.input.crop_size})"
  test_data, eval_every = dict(name="records", split="test", files="EGO4D/test-*.tfrecord"), 10_000

  # --- Model (vlm/models/hiervl.py; every field documented there).
  c.model = ml_collections.ConfigDict()
  c.model.name = "hiervl"
  c.model.variant = "base"
  c.model.video_layers = a.layers
  c.model.video_heads = a.layers
  c.model.max_text_len = c.input.max_text_len
  c.model.aggregator = aggregator
  c.model.aggregator_positions = clips_per_episode
  c.model.aggregator_drop_path_rate = 0.1
  c.model.drop_path_rate = 0.1
  c.model.dropout_rate = 0.1
  # config.init.options (read by vlm/models/hiervl.py `load`): f_v from an image ViT (inflated) or an HF
  # TimeSformer, f_n from HF DistilBERT; the temporal table resized by 'zeros' | 'nearest' | 'linear'.
  c.init.options.video_vit = ml_collections.config_dict.placeholder(str)
  c.init.options.video_timesformer = ml_collections.config_dict.placeholder(str)
  c.init.options.text_distilbert = ml_collections.config_dict.placeholder(str)
  c.init.options.time_resize = "zeros"

  # --- Objective (vlm/tasks/hierarchical.py).
  c.task = ml_collections.ConfigDict()
  c.task.name = "hierarchical"
  c.task.temperature = 0.05
  c.task.positives = "noun_and_verb"
  c.task.summary_terms = terms or ("text_summary", "video_summary")  # unused without the parent stream
  c.task.summary_weight = 1.0

  c.optim = config_lib.optimizer("adamw", 3e-5, weight_decay=0.01, warmup_steps=1000, end_lr=0.0, b1=0.9,
                                 b2=0.999)
  config_lib.parallelism(c)

  if a.tiny:  # CPU-sized model and data (vlm/models/hiervl.py SIZES['tiny'])
    c.total_steps = 1200
    c.log_every_steps, c.checkpoint_every_steps = 50, 400
    c.input.data = dict(name="builtin", split="train",
                        options=dict(num_train=2048, num_test=512, num_images=64, num_frames=16, fps=10.0,
                                     sample_rate=16_000, episode_len=4))
    c.input.batch_size, c.input.shuffle_buffer, c.input.host_split = 32, 512, "examples"
    c.input.crop_size, c.input.max_text_len = 32, 24
    c.input.tokenizer = dict(kind="words", vocab_file=None)  # the built-in dataset's vocab.txt (whole words)
    episodes_per_batch, clips_per_episode = 8, 4  # 32 clips per parent batch, as many as a child batch
    if "clips" in a.explicit:
      clips_per_episode = a.clips
    num_nouns, num_verbs = 3, 4  # shapes and directions (vlm/data/builtin.py)
    augment = view = f"decode()|resize({c.input.crop_size})"  # whole frames (crops cut the moving object out)
    c.model.variant = "tiny"
    c.model.video_layers, c.model.video_heads = 2, 2
    if "layers" in a.explicit:
      c.model.video_layers = a.layers
    c.model.max_text_len = c.input.max_text_len
    c.model.aggregator_positions = clips_per_episode
    c.model.aggregator_drop_path_rate = c.model.drop_path_rate = c.model.dropout_rate = 0.0
    c.optim.lr, c.optim.schedule.warmup_steps = 5e-4, 100
    test_data, eval_every = dict(c.input.data, split="test"), None

  frames, text_len = c.input.num_frames, c.input.max_text_len
  tags = (f"|multihot({num_nouns}, inkey='episode/noun/index', outkey='nouns')"
          f"|multihot({num_verbs}, inkey='episode/verb/index', outkey='verbs')")
  child_pp = (f"sample_segments({frames})|{augment}|normalize(-1, 1)|{_text_pp(text_len, True)}{tags}"
              "|keep('video', 'text', 'text_mask', 'nouns', 'verbs')")
  parent_pp = (f"sample_segments({frames})|{augment}|normalize(-1, 1)|{_text_pp(text_len, False)}"
               f"|{_summary_pp(text_len)}|keep('video', 'text', 'text_mask', 'summary', 'summary_mask')")
  group = dict(size=clips_per_episode, key="episode/id", remainder="pad")
  c.input.mixture = ml_collections.ConfigDict()
  c.input.mixture.clips = dict(weight=5, pp=child_pp)
  if terms is not None:
    c.input.mixture.episodes = dict(weight=1, pp=parent_pp, group=group, batch_size=episodes_per_batch)
  c.input.mixture_schedule = "cycle"
  for entry in c.input.mixture.values():
    entry.data = dict(c.input.data)

  # --- Evaluation on the test split: zero-shot clip-narration retrieval, and multiple choice over episodes
  # (vlm/evals/multiple_choice.py: SummaryMCQ, EgoMCQ inter- and intra-episode).
  eval_video = f"sample_segments({frames}, random=False)|{view}|normalize(-1, 1)"
  c.evals = ml_collections.ConfigDict()
  c.evals.retrieval = dict(
      type="retrieval", every_steps=eval_every, max_examples=0,
      input=dict(data=test_data, batch_size=64,
                 pp=f"{eval_video}|{_text_pp(text_len, False)}|keep('video', 'text', 'text_mask')"))
  c.evals.mcq = dict(
      type="multiple_choice", every_steps=eval_every, num_candidates=5, seed=0, max_examples=0,
      questions=("summary", "clip_inter", "clip_intra"),
      input=dict(data=test_data, batch_size=16, group=group,
                 pp=(f"{eval_video}|{_text_pp(text_len, False)}|{_summary_pp(text_len)}"
                     "|keep('video', 'text', 'text_mask', 'summary', 'summary_mask')")))
  return config_lib.apply_args(c, a, steps="total_steps", seed="seed")
