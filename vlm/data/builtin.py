"""The built-in learnable dataset: moving shapes with sound, captions, labels, QA, episodes and events.

Every family needs data that trains on a CPU in minutes and still tests what the family is about, and no real
video-text data ships in any package installable here. This module draws such data from
a seed and writes it in the same DMVR SequenceExample layout as real data (`vlm.data.records`), so tests and tiny
configs exercise the real reader path (JPEG frames, waveform feature lists, caption strings) end to end.

What a clip holds (default 32 frames at 10 fps = 3.2 s, 64x64, 48 kHz mono audio = 153,600 samples):

* Video: a big object (circle, square or triangle; red, green, blue, yellow or purple) moving left, right, up or
  down at a slow or fast speed, and in half the clips a small second object moving its own way. Positions live on a
  torus (objects leaving one side re-enter on the other) with a uniform start, so the position in ANY single frame
  is uniform whatever the direction: one frame cannot tell the motion, two frames can. This is what makes the
  temporal modelling of every video family (tubelets, sparse tubes, temporal attention, frame selection) matter.
* Single label (`clip/label/index`, `class_names`): shape x direction of the big object, 12 classes (index
  `shape * 4 + direction`). Used by classification fine-tuning and linear probes (VATT, TubeViT), where a model that
  ignores time stays at 1/4 of the achievable accuracy.
* Multi-label (`attribute/index`, `attribute/text`, `attribute_names`): every shape, colour, direction and speed
  present (both objects), 14 attributes; for multi-label heads (AudioSet-style mAP in VATT).
* Audio (`WAVEFORM/feature/floats`), synchronised with the frames: each object sings a tone whose base pitch is set
  by its shape (220 / 440 / 880 Hz, an octave apart), whose pitch glides with its height (+-1/4 octave, higher near
  the top), whose loudness follows its horizontal position (louder on the right), and whose tremolo rate is set by
  its colour; the small object is 6 dB quieter; plus faint noise. Shape, colour, position and direction are thus
  all audible, so audio-video contrastive learning (VATT NCE) has a real correspondence to find and an audio
  encoder can classify shape from sound alone.
* Captions (`caption/string`, 5 per clip): templates with synonyms ("a red circle moves to the left", "leftward
  motion of a big crimson disc", ...), naming the second object and an event's brevity in some of them. The
  candidates for MIL-NCE (VATT) and the text side of every contrastive/retrieval family (SViTT, HierVL, TW-BERT).
* Video QA (`qa/question`, `qa/answer`, `qa/answer/index`, 4 pairs per clip): direction, shape, colour, count,
  speed and yes/no questions with answers from a closed set of 18 (`answer_names`); for SViTT/TW-BERT QA heads.
  Each question's kind is `qa/kind/index` into `QUESTION_KINDS` (for accuracy per kind, as AGQA's question types).
* Colour changes (option `colour_change`, the fraction of clips; 0 by default, and then the clips, texts and
  questions are exactly those drawn before the option existed): the big object turns from one colour to another
  at a random frame in the middle half of the clip, so every sparse sample of T >= 4 segments sees the first
  colour first and the second last. Its captions say so ("... then turns blue") and the clip's first question
  asks for the colour after the change ("what colour does the circle turn"): a temporal-order question, like
  AGQA's "after" questions, that one frame answers at chance between the two colours and so do shuffled frames;
  a signal of frame order simpler than the sign of the motion (SViTT table A8's probe needs one). The tremolo of
  its sound switches with the colour. Event clips never change colour; later clips of the episode keep the
  second colour.
* Routines (option `routines` = R, 0 by default, and then the data is exactly that drawn before the option
  existed): every episode follows the routine of its object's colour (routine `colour % R`), a fixed sequence of
  directions, one per clip, drawn once from the seed and shared by all splits; speeds, positions and everything
  else stay random. An episode's later clips then follow from its first ones: a future that can be anticipated
  (Ego4D long-term anticipation: configs/hiervl/ego4d_lta.py).
* Events (`event/start_frame`, `event/end_frame`): in a quarter of the clips the big object is visible only in
  frames [start, end) (its sound too); the captions describe it, so only those frames match the text. For the
  TW-BERT frame selector (and a check that selection picks frames inside the event). Otherwise [0, F).
* Episodes (`episode/id`, `episode/index`, `episode/length`, `episode/narration`, `episode/noun/index`,
  `episode/verb/index`, `episode/summary`): consecutive
  clips in groups of `episode_len` follow one object (same shape and colour, continuous trajectory, new direction
  and speed per clip). Each clip has one narration ("the red circle moves left") and the episode one summary
  ("a red circle moves left then up then right"); the narration's noun is the shape (index into `SHAPES`) and
  its verb the direction (index into `DIRECTIONS`), for EgoNCE's positives; `clip/start/timestamp` counts from
  the episode's start. For
  HierVL's clip- and summary-level losses (an aggregator over the clips must find the summary). Episodes never
  straddle shards, and records keep episode order inside a shard.
* Images (splits `train_images`, `test_images`): one-frame records of static objects, labelled with the colour and
  shape of the big object (15 classes, `image_class_names`), with captions and attributes and no audio; for
  TubeViT's joint image+video training and image-side tests.

Splits: 'train' (num_train clips), 'test' (num_test clips), 'train_images' (num_images), 'test_images'
(max(1, num_images // 4)); each split draws from its own random stream, so the splits never share a clip.

`vocab.txt` (in the dataset directory): `[PAD]` (id 0), `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, then every word the
templates can produce, lower-cased and sorted. The texts carry no punctuation, so the file works both as a BERT
WordPiece vocab (tensorflow_text.BertTokenizer: every word is a whole-word piece) and as a whole-word vocab.

Caching: the directory is `<base>/<version>-<hash of the options>`, base = `data_dir` argument, else
`$VLM_DATA_DIR/builtin`, else `~/.cache/vlm/builtin`. The hashed options include `FORMAT_VERSION` and, for each
option that is on, its entry of `OPTION_VERSIONS`: a change to the generator that alters the default data bumps
the first, one that alters only an option's data bumps the option's version, so that no run reads a cache
written by older code (tests pin a digest of the texts for both). Generation writes into a temporary sibling
directory and renames it at the end, so an interrupted run never leaves a half-written cache, and concurrent runs
(several hosts or test workers) are safe: the first rename wins and the others use it.

Usage: `python -m vlm.data.builtin [--data_dir=DIR] [--num_train=2048 ...]` prints the time taken and the size.
The bytes are deterministic for a given seed and options on a given machine (numpy's sin may differ in the last
bit across CPU instruction sets).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

FORMAT_VERSION = 2  # 2: episode noun / verb tags added (the same clips and texts as 1)
# The random streams are seeded with this, not FORMAT_VERSION, so that a format change that only adds features
# keeps every clip, caption and label (and so every result measured on the data) as it was.
_STREAM_VERSION = 1
# Generator version of each option's data, hashed into the cache directory while the option is on (version 2 of
# colour_change: one "what colour does it turn" question per changing clip; version 1 asked "at the start" / "at
# the end").
OPTION_VERSIONS = {"colour_change": 2, "routines": 1}
DEFAULT_JPEG_QUALITY = 90

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slow", "fast")
_RGB = np.array([[220, 45, 45], [45, 185, 65], [55, 90, 235], [235, 210, 45], [165, 70, 205]], np.float32)
_STEP = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.float32)  # (dx, dy) per direction; y grows downwards.
_SPEED_RANGE = ((0.10, 0.20), (0.30, 0.45))  # Frame widths per second, per speed class.
_BASE_HZ = np.array([220.0, 440.0, 880.0], np.float32)  # Tone per shape.
_TREMOLO_HZ = np.array([0.0, 2.0, 3.5, 5.0, 7.0], np.float32)  # Per colour.
_EVENT_FRACTION = 0.25
_TWO_OBJECT_FRACTION = 0.5
NUM_CAPTIONS = 5
NUM_QA = 4

# Extra context keys (besides those in vlm.data.records).
ATTRIBUTE_INDEX = "attribute/index"
ATTRIBUTE_TEXT = "attribute/text"
QA_QUESTION = "qa/question"
QA_ANSWER = "qa/answer"
QA_ANSWER_INDEX = "qa/answer/index"
QA_KIND_INDEX = "qa/kind/index"
EPISODE_ID = "episode/id"
EPISODE_INDEX = "episode/index"
EPISODE_LENGTH = "episode/length"
EPISODE_NARRATION = "episode/narration"
EPISODE_NOUNS = "episode/noun/index"
EPISODE_VERBS = "episode/verb/index"
EPISODE_SUMMARY = "episode/summary"
EVENT_START = "event/start_frame"
EVENT_END = "event/end_frame"

SPLITS = ("train", "test", "train_images", "test_images")
CLASS_NAMES = [f"{s} moving {d}" for s in SHAPES for d in DIRECTIONS]
IMAGE_CLASS_NAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
ATTRIBUTE_NAMES = list(SHAPES) + list(COLOURS) + list(DIRECTIONS) + list(SPEEDS)
ANSWER_NAMES = list(SHAPES) + list(COLOURS) + list(DIRECTIONS) + list(SPEEDS) + ["one", "two", "yes", "no"]
# Question kinds (`qa/kind/index`): QA accuracy per kind. 'direction' and 'colour order' need the frame order.
QUESTION_KINDS = ("direction", "speed", "shape", "colour", "count", "yes/no", "colour order")
# The same grouping by true answer, for evaluators without kinds (an order question's answer is a colour).
ANSWER_GROUPS = {"direction": list(DIRECTIONS), "speed": list(SPEEDS), "shape": list(SHAPES),
                 "colour": list(COLOURS), "count": ["one", "two"], "yes/no": ["yes", "no"]}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass(frozen=True)
class BuiltinDataset:
  """A generated dataset on disk.

  Attributes:
    root: the dataset directory.
    files: split name -> TFRecord shard paths; splits 'train', 'test', 'train_images', 'test_images'.
    vocab_file: `root/vocab.txt`.
    class_names: the 12 single-label video classes ('circle moving left', ...), index = shape * 4 + direction.
    attribute_names: the 14 multi-label attributes (shapes, colours, directions, speeds).
    answer_names: the 18 QA answers.
    num_frames, fps, size, sample_rate: clip geometry (frames are size x size; audio num_frames / fps seconds).
    image_class_names: the 15 image classes ('red circle', ...), index = colour * 3 + shape.
    num_examples: split name -> number of records.
  """
  root: str
  files: dict[str, list[str]]
  vocab_file: str
  class_names: list[str]
  attribute_names: list[str]
  answer_names: list[str]
  num_frames: int
  fps: float
  size: int
  sample_rate: int
  image_class_names: list[str] = dataclasses.field(default_factory=lambda: list(IMAGE_CLASS_NAMES))
  num_examples: dict[str, int] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Language.

_SHAPE_WORDS = (("circle", "disc", "ball", "dot", "round shape"),
                ("square", "box", "block", "tile", "square shape"),
                ("triangle", "wedge", "triangular shape", "pyramid"))
_COLOUR_WORDS = (("red", "crimson", "scarlet"), ("green", "emerald", "lime"), ("blue", "azure", "navy"),
                 ("yellow", "golden", "lemon"), ("purple", "violet", "lilac"))
_DIR_PHRASES = (("left", "to the left", "leftward", "leftwards", "from right to left", "towards the left side"),
                ("right", "to the right", "rightward", "rightwards", "from left to right",
                 "towards the right side"),
                ("up", "upward", "upwards", "from bottom to top", "towards the top"),
                ("down", "downward", "downwards", "from top to bottom", "towards the bottom"))
_DIR_ADJ = (("leftward", "left"), ("rightward", "right"), ("upward", "rising"), ("downward", "falling"))
_VERBS = ("moves", "slides", "travels", "glides", "drifts", "goes", "shifts")
_GERUNDS = ("moving", "sliding", "travelling", "gliding", "drifting", "heading")
_SPEED_WORDS = (("slowly", "gently", "at a slow pace", "leisurely"),
                ("quickly", "rapidly", "fast", "at high speed", "swiftly"))
_BIG = ("", "big ", "large ")
_SMALL = ("small", "little", "tiny")
_CAPTION_TEMPLATES = (
    "{a_big} {big}{colour} {shape} {verb} {dir}",
    "{dadj} motion of {a_big} {big}{colour} {shape}",
    "the {colour} {shape} {verb} {speed} {dir}",
    "{a_shape} {shape} in {colour} {verb} {dir}",
    "{a} {colour} {shape} {gerund} {dir}",
    "we see {a} {colour} {shape} {gerund} {dir} across the screen",
    "{a} {colour} {shape} {verb} {dir} {speed}",
    "there is {a} {colour} {shape} {gerund} {dir}",
)
_SECOND_TEMPLATES = (
    " while {a2} {small} {colour2} {shape2} {verb2} {dir2}",
    " and {a2} {small} {colour2} {shape2} {gerund2} {dir2}",
    " next to {a2} {small} {colour2} {shape2}",
)
_EVENT_TEMPLATES = ("briefly {c}", "for a moment {c}", "{c} for a short time", "{c} for part of the clip")
_EVENT_APPEAR = "{a} {colour} {shape} appears and {verb} {dir}"
_SUMMARY_TEMPLATES = ("{a} {colour} {shape} moves {path}", "the {colour} {shape} travels {path}",
                      "over the episode the {colour} {shape} goes {path}")
_QUESTIONS = {
    "direction": ("which way does the {colour} {shape} move", "in which direction is the {colour} {shape} moving",
                  "where is the {colour} {shape} heading"),
    "shape": ("what shape is the {colour} object", "what is the shape of the {colour} object"),
    "colour": ("what colour is the large object", "what is the colour of the big shape"),
    "count": ("how many objects are there", "how many shapes can you see"),
    "speed": ("is the {colour} {shape} moving fast or slow", "how fast does the {colour} {shape} move"),
    "has_colour": ("is there {a_q} {qcolour} object", "can you see {a_q} {qcolour} shape"),
    "has_shape": ("is there {a_q} {qshape}", "can you see {a_q} {qshape}"),
}
_KIND_OF = {"direction": "direction", "shape": "shape", "colour": "colour", "count": "count", "speed": "speed",
            "has_colour": "yes/no", "has_shape": "yes/no"}
# Colour changes: a phrase appended to every caption, and the order question (the colour after the change).
_CHANGE_TEMPLATES = (" then turns {cb}", " and then turns {cb}", " and changes colour to {cb}",
                     " and finally turns {cb}")
# One order question, the colour after the change: "before" questions as well would make the answer hinge on one
# question word, which the tiny SViTT never learnt to use (README, table-A8 rows); this one needs the order alone.
_ORDER_QUESTIONS = ("what colour does the {shape} turn", "what colour is the {shape} at the end",
                    "what colour is the {shape} finally")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _a(word: str) -> str:
  return "an" if word[:1] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def tokenize_words(text: str) -> list[str]:
  """Lower-cased words split on anything that is not a letter or a digit (how the vocab was collected)."""
  return re.findall(r"[a-z0-9]+", text.lower())


def vocabulary() -> list[str]:
  """Every token the generated texts can contain, specials first ([PAD] = 0); deterministic."""
  texts = []
  for group in (_SHAPE_WORDS, _COLOUR_WORDS, _DIR_PHRASES, _DIR_ADJ, _SPEED_WORDS):
    for options in group:
      texts.extend(options)
  texts += list(_VERBS) + list(_GERUNDS) + list(_BIG) + list(_SMALL) + list(_NUMBER_WORDS)
  texts += list(_CAPTION_TEMPLATES) + list(_SECOND_TEMPLATES) + list(_EVENT_TEMPLATES) + [_EVENT_APPEAR]
  texts += list(_SUMMARY_TEMPLATES) + [q for qs in _QUESTIONS.values() for q in qs]
  texts += ANSWER_NAMES + CLASS_NAMES + IMAGE_CLASS_NAMES + ATTRIBUTE_NAMES
  texts += ["a", "an", "then", "and finally", "keeps moving", "never changes direction", "changes direction",
            "time times", "of", "picture photo image", "on", "background", "with", "alone", "shown", "dark"]
  words = set()
  for t in texts:
    words.update(tokenize_words(re.sub(r"\{[a-z_0-9]+\}", " ", t)))
  # Words of texts added later (colour changes) go after the sorted list, so that every earlier word keeps its
  # id: datasets, vocab files and checkpoints made before stay consistent with the new ones.
  later = set()
  for t in _CHANGE_TEMPLATES + _ORDER_QUESTIONS:
    later.update(tokenize_words(re.sub(r"\{[a-z_0-9]+\}", " ", t)))
  return list(SPECIAL_TOKENS) + sorted(words) + sorted(later - words)


def _describe(rng, shape: int, colour: int) -> dict[str, str]:
  s, c = _pick(rng, _SHAPE_WORDS[shape]), _pick(rng, _COLOUR_WORDS[colour])
  return {"shape": s, "colour": c}


def _captions(rng, clip: dict[str, Any], num: int = NUM_CAPTIONS) -> list[str]:
  """`num` distinct captions of a clip (primary object; the second one and the event in some)."""
  out: list[str] = []
  tries = 0
  while len(out) < num and tries < 50 * num:
    tries += 1
    d = _describe(rng, clip["shape"], clip["colour"])
    big = _pick(rng, _BIG)
    fields = dict(
        d, big=big, a_big=_a(big or d["colour"]), a=_a(d["colour"]), a_shape=_a(d["shape"]), verb=_pick(rng, _VERBS),
        gerund=_pick(rng, _GERUNDS), dir=_pick(rng, _DIR_PHRASES[clip["direction"]]),
        dadj=_pick(rng, _DIR_ADJ[clip["direction"]]), speed=_pick(rng, _SPEED_WORDS[clip["speed"]]))
    if fields["gerund"] == "heading":
      fields["dir"] = DIRECTIONS[clip["direction"]]  # "heading left", not "heading from right to left".
    if clip["event"] and rng.random() < 0.5:
      text = _EVENT_APPEAR.format(**fields)
    else:
      text = _pick(rng, _CAPTION_TEMPLATES).format(**fields)
      if clip["event"] and rng.random() < 0.5:
        text = _pick(rng, _EVENT_TEMPLATES).format(c=text)
    if clip.get("colour_after") is not None:
      text += _pick(rng, _CHANGE_TEMPLATES).format(cb=_pick(rng, _COLOUR_WORDS[clip["colour_after"]]))
    if clip["second"] is not None and rng.random() < 0.6:
      s2 = clip["second"]
      d2 = _describe(rng, s2["shape"], s2["colour"])
      small = _pick(rng, _SMALL)
      gerund2 = _pick(rng, _GERUNDS)
      dir2 = DIRECTIONS[s2["direction"]] if gerund2 == "heading" else _pick(rng, _DIR_PHRASES[s2["direction"]])
      text += _pick(rng, _SECOND_TEMPLATES).format(
          a2=_a(small), small=small, colour2=d2["colour"], shape2=d2["shape"], verb2=_pick(rng, _VERBS),
          gerund2=gerund2, dir2=dir2)
    text = " ".join(text.split())
    if text not in out:
      out.append(text)
  while len(out) < num:  # Only when the templates are exhausted (never with the lists above).
    out.append(out[len(out) % max(1, len(out))])
  return out


def _qa(rng, clip: dict[str, Any], num: int = NUM_QA) -> tuple[list[str], list[str], list[int]]:
  """`num` (question, answer, kind) triples about a clip: answers from ANSWER_NAMES, kinds index QUESTION_KINDS.

  A clip that changes colour asks an order question first (the one evaluation reads: `sample_qa(random=False)`):
  the colour after the change; and no plain colour question (which colour would be ambiguous). "The red circle"
  names its first colour.
  """
  objs = [clip] + ([clip["second"]] if clip["second"] is not None else [])
  after = clip.get("colour_after")
  d = _describe(rng, clip["shape"], clip["colour"])
  kinds = [k for k in _QUESTIONS if not (after is not None and k == "colour")]
  questions, answers, kind_ids = [], [], []
  if after is not None:
    questions.append(_pick(rng, _ORDER_QUESTIONS).format(shape=d["shape"]))
    answers.append(COLOURS[after])
    kind_ids.append(QUESTION_KINDS.index("colour order"))
  order = rng.permutation(len(kinds))[:num - len(questions)]
  for i in order:
    kind = kinds[int(i)]
    fields = dict(d)
    if kind == "direction":
      ans = DIRECTIONS[clip["direction"]]
    elif kind == "shape":
      ans = SHAPES[clip["shape"]]
    elif kind == "colour":
      ans = COLOURS[clip["colour"]]
    elif kind == "count":
      ans = ("one", "two")[len(objs) - 1]
    elif kind == "speed":
      ans = SPEEDS[clip["speed"]]
    elif kind == "has_colour":
      q = int(rng.integers(len(COLOURS)))
      fields.update(qcolour=_pick(rng, _COLOUR_WORDS[q]))
      fields["a_q"] = _a(fields["qcolour"])
      ans = "yes" if any(q in (o["colour"], o.get("colour_after")) for o in objs) else "no"
    else:  # has_shape
      q = int(rng.integers(len(SHAPES)))
      fields.update(qshape=_pick(rng, _SHAPE_WORDS[q]))
      fields["a_q"] = _a(fields["qshape"])
      ans = "yes" if any(o["shape"] == q for o in objs) else "no"
    questions.append(_pick(rng, _QUESTIONS[kind]).format(**fields))
    answers.append(ans)
    kind_ids.append(QUESTION_KINDS.index(_KIND_OF[kind]))
  return questions, answers, kind_ids


def _narration(clip: dict[str, Any]) -> str:
  text = f"the {COLOURS[clip['colour']]} {SHAPES[clip['shape']]} moves {DIRECTIONS[clip['direction']]}"
  if clip.get("colour_after") is not None:
    text += f" and then turns {COLOURS[clip['colour_after']]}"
  return text


def _summary(rng, clips: Sequence[dict[str, Any]]) -> str:
  """One sentence for an episode: the object and its path of directions (repeats merged)."""
  path: list[str] = []
  for c in clips:
    d = DIRECTIONS[c["direction"]]
    if not path or path[-1] != d:
      path.append(d)
  if len(path) == 1:
    text = "keeps moving " + path[0]
  elif len(path) == 2:
    text = f"{path[0]} then {path[1]}"
  else:
    text = " then ".join(path[:-1]) + " and finally " + path[-1]
  first = clips[0]
  d = _describe(rng, first["shape"], first["colour"])
  template = _pick(rng, _SUMMARY_TEMPLATES)
  if len(path) == 1:
    return f"the {d['colour']} {d['shape']} {text}"
  return template.format(a=_a(d["colour"]), path=text, **d)


# ----------------------------------------------------------------------------------------------------------------
# Drawing and sound.


def _sample_object(rng, size: int, big: bool, shape: int | None = None, colour: int | None = None,
                   avoid_colour: int | None = None) -> dict[str, Any]:
  if shape is None:
    shape = int(rng.integers(len(SHAPES)))
  if colour is None:
    choices = [c for c in range(len(COLOURS)) if c != avoid_colour]
    colour = int(choices[int(rng.integers(len(choices)))])
  radius = size * (rng.uniform(0.12, 0.18) if big else rng.uniform(0.07, 0.10))
  rgb = np.clip(_RGB[colour] + rng.uniform(-15, 15, 3), 0, 255).astype(np.float32)
  return {"shape": shape, "colour": colour, "radius": float(radius), "rgb": rgb}


def _sample_motion(rng, obj: dict[str, Any], size: int, fps: float, start_xy: np.ndarray | None) -> None:
  obj["direction"] = int(rng.integers(len(DIRECTIONS)))
  obj["speed"] = int(rng.integers(len(SPEEDS)))
  lo, hi = _SPEED_RANGE[obj["speed"]]
  obj["pixels_per_frame"] = float(rng.uniform(lo, hi) * size / fps)
  obj["xy0"] = rng.uniform(0, size, 2).astype(np.float32) if start_xy is None else start_xy.astype(np.float32)


def _trajectory(obj: dict[str, Any], t: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions (x, y) in pixels on the torus at (fractional) frame indices t [T]."""
  v = _STEP[obj["direction"]] * obj["pixels_per_frame"]
  return np.mod(obj["xy0"][0] + v[0] * t, size), np.mod(obj["xy0"][1] + v[1] * t, size)


def _coverage(shape: int, radius: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of a shape at offsets (dx, dy) (pixels, broadcastable) from its centre."""
  if shape == 0:  # Circle: signed distance to the rim.
    sd = radius - np.sqrt(dx * dx + dy * dy)
  elif shape == 1:  # Square of half-side 0.85 r (about the circle's area).
    sd = 0.85 * radius - np.maximum(np.abs(dx), np.abs(dy))
  else:  # Triangle, apex up: inside the base line and both slanted edges.
    sd = np.minimum(0.5 * radius - dy, (dy + radius - np.sqrt(np.float32(3)) * np.abs(dx)) * 0.5)
  return np.clip(sd + 0.5, 0.0, 1.0).astype(np.float32)


def _render(objects: Sequence[dict[str, Any]], visible: Sequence[np.ndarray], background: np.ndarray,
            num_frames: int, size: int) -> np.ndarray:
  """uint8 [F, H, W, 4] RGBX frames (X = 0, ignored by `media.encode_jpeg`); objects drawn in order (later on top),
  each only in its visible frames [F].

  Each object is drawn in a small window around it, gathered and scattered back with wrapped indices (objects
  crossing an edge reappear on the other side), so the cost follows the objects' area, not the frame's. Pixels
  are 4 bytes so that the gather/scatter moves one uint32 per pixel (5x faster than rows of 3 bytes); together
  this makes 224x224 clips affordable.
  """
  bg = np.append(np.round(background).astype(np.uint8), np.uint8(0)).view(np.uint32)[0]  # Packed RGBX pixel.
  flat = np.full(num_frames * size * size, bg, np.uint32)  # One uint32 per pixel (a strided fill is 30x slower).
  frames = flat.view(np.uint8).reshape(num_frames, size, size, 4)
  t_all = np.arange(num_frames, dtype=np.float32)
  for obj, vis in zip(objects, visible):
    fidx = np.flatnonzero(vis)
    if not fidx.size:
      continue
    x, y = _trajectory(obj, t_all[fidx], size)
    half = int(np.ceil(obj["radius"])) + 3  # The shape plus its anti-aliased rim fits in the window.
    win = 2 * half
    offsets = np.arange(win)
    cols = np.floor(x).astype(np.int64)[:, None] - half + offsets  # [F', win] unwrapped pixel indices.
    rows = np.floor(y).astype(np.int64)[:, None] - half + offsets
    dx = (cols + 0.5 - x[:, None]).astype(np.float32)[:, None, :]
    dy = (rows + 0.5 - y[:, None]).astype(np.float32)[:, :, None]
    alpha = _coverage(obj["shape"], obj["radius"], dx, dy)[..., None]  # [F', win, win, 1]
    index = (fidx[:, None, None] * size + (rows % size)[:, :, None]) * size + (cols % size)[:, None, :]
    patch = flat[index].view(np.uint8).reshape(len(fidx), win, win, 4).astype(np.float32)
    rgbx = np.append(obj["rgb"], np.float32(0)).astype(np.float32)
    patch += alpha * (rgbx - patch)
    flat[index] = (patch + 0.5).astype(np.uint8).view(np.uint32).reshape(len(fidx), win, win)
  return frames


def _noise(seed: int, n: int) -> np.ndarray:
  """A fixed buffer of 4n standard-normal float32 samples; clips take random slices (fast, still random)."""
  key = (seed, n)
  if key not in _NOISE:
    _NOISE.clear()
    _NOISE[key] = np.random.default_rng([seed, 7919]).standard_normal(4 * n, dtype=np.float32)
  return _NOISE[key]


_NOISE: dict[tuple[int, int], np.ndarray] = {}


def _sound(objects: Sequence[dict[str, Any]], gains: Sequence[np.ndarray | None], rng, num_frames: int,
           fps: float, size: int, sample_rate: int, noise_seed: int = 0,
           volumes: Sequence[float] | None = None) -> np.ndarray:
  """float32 [round(num_frames / fps * sample_rate)] waveform in [-1, 1], in sync with `_render`.

  Sample i sounds at time i / sample_rate, i.e. at fractional frame index i * fps / sample_rate. Pitch, loudness
  and tremolo are computed at a 1 kHz control rate and held over each block of ~1 ms (phase stays continuous):
  computing them per sample made audio 2/3 of the generation time.

  Args:
    objects: the sounding objects (the big one first; later ones are 6 dB quieter).
    gains: per object, None or a float32 [K] gain per control block (events).
    volumes: per object (default 1 for the first, 0.5 for the others).
  """
  n = int(round(num_frames / fps * sample_rate))
  block = max(1, int(round(sample_rate / 1000)))
  k = -(-n // block)  # Control blocks.
  tc = np.arange(k, dtype=np.float32) * np.float32(block / sample_rate)  # Block start times [K].
  uc = tc * np.float32(fps)  # Fractional frame index [K].
  within = np.arange(block, dtype=np.float32)[None, :]  # [1, B]
  # Keep the tones under Nyquist for low test rates (the top tone reaches 880 * 2^0.25 = 1047 Hz).
  scale = np.float32(min(1.0, 0.4 * sample_rate / 1047.0))
  wave = np.zeros((k, block), np.float32)
  for j, (obj, gain) in enumerate(zip(objects, gains)):
    x, y = _trajectory(obj, uc, size)
    cycles_per_sample = _BASE_HZ[obj["shape"]] * np.exp2(0.5 * (0.5 - y / size)) * scale / np.float32(sample_rate)
    # Phase (in cycles) at each block start: the running sum of the previous blocks' increments.
    phase0 = np.concatenate([[0.0], np.cumsum(cycles_per_sample[:-1] * block, dtype=np.float64)])
    phase0 = np.mod(phase0, 1.0).astype(np.float32)
    loud = 0.2 + 0.5 * x / size
    trem = _TREMOLO_HZ[obj["colour"]]
    if trem > 0:
      loud = loud * (1.0 - 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * trem * tc)))
    amp = loud * np.float32(volumes[j] if volumes is not None else 1.0 if j == 0 else 0.5)
    if gain is not None:
      amp = amp * gain
    phase = phase0[:, None] + cycles_per_sample[:, None] * within  # [K, B]
    wave += amp[:, None] * np.sin(np.float32(2 * np.pi) * phase)
  wave = wave.reshape(-1)[:n]
  noise = _noise(noise_seed, n)
  offset = int(rng.integers(3 * n))
  wave += np.float32(0.01) * noise[offset:offset + n]
  return np.clip(np.float32(0.8) * wave, -1.0, 1.0)


def _event_gain(start: int, end: int, num_frames: int, fps: float, sample_rate: int) -> np.ndarray:
  """float32 [K] gain per ~1 ms control block of `_sound`: 1 during frames [start, end) with 5 ms ramps, else 0."""
  n = int(round(num_frames / fps * sample_rate))
  block = max(1, int(round(sample_rate / 1000)))
  t = np.arange(-(-n // block), dtype=np.float32) * np.float32(block / sample_rate)
  ramp = 0.005
  t0, t1 = start / fps, end / fps
  return np.clip(np.minimum((t - t0) / ramp + 1, (t1 - t) / ramp), 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Records.


def _attributes(objs: Sequence[dict[str, Any]], motion: bool) -> list[int]:
  idx = set()
  for o in objs:
    idx.add(o["shape"])
    idx.add(len(SHAPES) + o["colour"])
    if o.get("colour_after") is not None:
      idx.add(len(SHAPES) + o["colour_after"])
    if motion:
      idx.add(len(SHAPES) + len(COLOURS) + o["direction"])
      idx.add(len(SHAPES) + len(COLOURS) + len(DIRECTIONS) + o["speed"])
  return sorted(idx)


def _background(rng) -> np.ndarray:
  return (rng.uniform(25, 75) + rng.uniform(-8, 8, 3)).astype(np.float32)


def routine_table(seed: int, routines: int, episode_len: int) -> np.ndarray:
  """[len(COLOURS), episode_len] directions of the `routines` option: colour c follows routine c % routines, the
  routines drawn from their own stream of `seed` (so the clips' random stream is untouched)."""
  table = np.random.default_rng([seed, 1_000 + routines]).integers(len(DIRECTIONS), size=(routines, episode_len))
  return table[np.arange(len(COLOURS)) % routines]


def _clip_records(rng, split_index: int, episode: int, length: int, first_clip: int, *, num_frames: int,
                  fps: float, size: int, sample_rate: int, jpeg_quality: int, seed: int = 0,
                  colour_change: float = 0.0, routine: Sequence[int] | None = None) -> list[bytes]:
  """Serialized records of one episode of `length` consecutive clips (`routine`: {colour: directions} of the
  `routines` option, or None)."""
  from vlm.data import media, records  # pylint: disable=g-import-not-at-top

  main = _sample_object(rng, size, big=True)
  xy = None
  clips = []
  for i in range(length):
    clip = dict(main)
    _sample_motion(rng, clip, size, fps, xy)
    if routine is not None:  # after the draws, so the random stream is the one without the option
      clip["direction"] = int(routine[main["colour"]][i])
    # The next clip starts where this one would be one frame after its end: a continuous trajectory.
    xy = np.array(_trajectory(clip, np.array([num_frames], np.float32), size), np.float32)[:, 0]
    second = None
    if rng.random() < _TWO_OBJECT_FRACTION:
      second = _sample_object(rng, size, big=False, avoid_colour=clip["colour"])
      _sample_motion(rng, second, size, fps, None)
    clip["second"] = second
    clip["event"] = num_frames >= 8 and rng.random() < _EVENT_FRACTION
    if clip["event"]:
      ev_len = int(rng.integers(max(4, num_frames // 4), max(5, (3 * num_frames) // 4) + 1))
      ev_start = int(rng.integers(0, num_frames - ev_len + 1))
      clip["event_range"] = (ev_start, ev_start + ev_len)
    else:
      clip["event_range"] = (0, num_frames)
    # No random draw unless the option is on: with colour_change = 0 the random stream is the one of before.
    if colour_change and num_frames >= 4 and not clip["event"] and rng.random() < colour_change:
      taken = (clip["colour"], second["colour"] if second else None)
      choices = [c for c in range(len(COLOURS)) if c not in taken]
      after = int(choices[int(rng.integers(len(choices)))])
      # The change frame lies in [F/4, 3F/4]: the first of T >= 4 segments is before it, the last after it.
      clip["colour_after"] = after
      clip["change_frame"] = int(rng.integers(-(-num_frames // 4), (3 * num_frames) // 4 + 1))
      clip["rgb_after"] = np.clip(_RGB[after] + rng.uniform(-15, 15, 3), 0, 255).astype(np.float32)
      main = dict(main, colour=after, rgb=clip["rgb_after"])  # Later clips of the episode keep the new colour.
    clips.append(clip)
  summary = _summary(rng, clips)

  out = []
  duration_us = int(round(num_frames / fps * 1e6))
  for i, clip in enumerate(clips):
    s, e = clip["event_range"]
    frame_idx = np.arange(num_frames)
    objs = ([clip["second"]] if clip["second"] else []) + [clip]  # The big object is drawn on top.
    vis = ([np.ones(num_frames, bool)] if clip["second"] else []) + [(frame_idx >= s) & (frame_idx < e)]
    gains = [None if not clip["event"] else _event_gain(s, e, num_frames, fps, sample_rate)]
    sound_objs = [clip] + ([clip["second"]] if clip["second"] else [])
    volumes = [1.0] + [0.5] * (len(sound_objs) - 1)
    if clip.get("colour_after") is not None:
      # The big object as two: its first colour before the change frame, the second from it on (sound: the
      # tremolo of each colour, cross-faded over 5 ms).
      c = clip["change_frame"]
      late = dict(clip, colour=clip["colour_after"], rgb=clip["rgb_after"])
      objs, vis = objs[:-1] + [clip, late], vis[:-1] + [frame_idx < c, frame_idx >= c]
      sound_objs, volumes = [clip, late] + sound_objs[1:], [1.0] + volumes
      gains = [_event_gain(0, c, num_frames, fps, sample_rate), _event_gain(c, num_frames, num_frames, fps,
                                                                            sample_rate)]
    gains += [None] * (len(sound_objs) - len(gains))
    frames = _render(objs, vis, _background(rng), num_frames, size)
    audio = _sound(sound_objs, gains, rng, num_frames, fps, size, sample_rate, noise_seed=seed, volumes=volumes)
    questions, answers, kinds = _qa(rng, clip)
    present = [clip] + ([clip["second"]] if clip["second"] else [])
    attrs = _attributes(present, motion=True)
    label = clip["shape"] * len(DIRECTIONS) + clip["direction"]
    extra = {
        ATTRIBUTE_INDEX: attrs, ATTRIBUTE_TEXT: [ATTRIBUTE_NAMES[a] for a in attrs],
        QA_QUESTION: questions, QA_ANSWER: answers, QA_ANSWER_INDEX: [ANSWER_NAMES.index(a) for a in answers],
        QA_KIND_INDEX: kinds,
        EPISODE_ID: episode, EPISODE_INDEX: i, EPISODE_LENGTH: length,
        EPISODE_NARRATION: _narration(clip), EPISODE_SUMMARY: summary,
        EPISODE_NOUNS: [clip["shape"]], EPISODE_VERBS: [clip["direction"]],
        EVENT_START: s, EVENT_END: e,
    }
    ex = records.make_sequence_example(
        jpeg_frames=media.encode_jpegs(frames, jpeg_quality), fps=fps, audio=audio, sample_rate=sample_rate,
        captions=_captions(rng, clip), label_index=[label], label_text=[CLASS_NAMES[label]],
        filename=f"builtin/{SPLITS[split_index]}/{first_clip + i:07d}", start_us=i * duration_us,
        end_us=(i + 1) * duration_us, extra_context=records.context_features(extra))
    out.append(ex.SerializeToString())
  return out


def _image_record(rng, split_index: int, index: int, *, fps: float, size: int, jpeg_quality: int) -> bytes:
  from vlm.data import media, records  # pylint: disable=g-import-not-at-top

  main = _sample_object(rng, size, big=True)
  _sample_motion(rng, main, size, fps, None)
  objs = [main]
  if rng.random() < _TWO_OBJECT_FRACTION:
    second = _sample_object(rng, size, big=False, avoid_colour=main["colour"])
    _sample_motion(rng, second, size, fps, None)
    objs = [second, main]
  frame = _render(objs, [np.ones(1, bool)] * len(objs), _background(rng), 1, size)
  label = main["colour"] * len(SHAPES) + main["shape"]
  captions = []
  for _ in range(50):
    d = _describe(rng, main["shape"], main["colour"])
    big = _pick(rng, _BIG)
    text = _pick(rng, ("{a_big} {big}{colour} {shape}", "a picture of {a_big} {big}{colour} {shape}",
                       "{a} {colour} {shape} on a dark background", "an image with {a} {colour} {shape}",
                       "{a} {colour} {shape} shown alone")).format(a_big=_a(big or d["colour"]), a=_a(d["colour"]),
                                                                    big=big, **d)
    if len(objs) == 2:
      if "alone" in text:
        continue
      s = objs[0]
      d2 = _describe(rng, s["shape"], s["colour"])
      small = _pick(rng, _SMALL)
      text += f" and {_a(small)} {small} {d2['colour']} {d2['shape']}"
    if text not in captions:
      captions.append(text)
    if len(captions) == NUM_CAPTIONS:
      break
  attrs = _attributes(objs, motion=False)
  extra = {ATTRIBUTE_INDEX: attrs, ATTRIBUTE_TEXT: [ATTRIBUTE_NAMES[a] for a in attrs]}
  ex = records.make_sequence_example(
      jpeg_frames=media.encode_jpegs(frame, jpeg_quality), fps=fps, audio=None, captions=captions,
      label_index=[label], label_text=[IMAGE_CLASS_NAMES[label]],
      filename=f"builtin/{SPLITS[split_index]}/{index:07d}", extra_context=records.context_features(extra))
  return ex.SerializeToString()


# ----------------------------------------------------------------------------------------------------------------
# Generation and caching.


def _options(**kw) -> dict[str, Any]:
  return dict(kw, format_version=FORMAT_VERSION, jpeg_quality=DEFAULT_JPEG_QUALITY)


def cache_dir(data_dir: str | None, options: dict[str, Any]) -> str:
  """The dataset directory for these options (see the module docstring)."""
  if data_dir is None:
    env = os.environ.get("VLM_DATA_DIR")
    data_dir = os.path.join(env, "builtin") if env else os.path.join(os.path.expanduser("~"), ".cache", "vlm",
                                                                     "builtin")
  digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(data_dir, f"v{FORMAT_VERSION}-{digest}")


def _log(msg: str) -> None:
  print(f"[vlm.data.builtin] {msg}", file=sys.stderr, flush=True)


class _ShardWriter:
  """Streams groups of records (an episode, or one image) into `num_shards` files, never splitting a group.

  Group g of `num_groups` goes to shard floor(g * n / num_groups): contiguous, near-equal runs, so records keep
  their order and episodes stay whole. Nothing is held in memory (the default train split is over 1 GB).
  """

  def __init__(self, directory: str, split: str, num_groups: int, num_shards: int):
    self.n = max(1, min(num_shards, num_groups))
    self.num_groups = num_groups
    self.paths = [os.path.join(directory, f"{split}-{i:05d}-of-{self.n:05d}.tfrecord") for i in range(self.n)]
    self.group = 0
    self.shard = -1
    self.writer = None

  def write_group(self, records: Sequence[bytes]) -> None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    shard = self.group * self.n // max(1, self.num_groups)
    while self.shard < shard:  # Open the next shard (creating empty ones is impossible: n <= num_groups).
      self._close()
      self.shard += 1
      self.writer = tf.io.TFRecordWriter(self.paths[self.shard])
    for r in records:
      self.writer.write(r)
    self.group += 1

  def _close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None

  def close(self) -> list[str]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    self._close()
    for p in self.paths[self.shard + 1:]:  # Only when a split is empty.
      tf.io.TFRecordWriter(p).close()
    return self.paths


def _load(root: str) -> BuiltinDataset:
  with open(os.path.join(root, "dataset_info.json"), encoding="utf-8") as f:
    info = json.load(f)
  files = {k: [os.path.join(root, p) for p in v] for k, v in info["files"].items()}
  o = info["options"]
  return BuiltinDataset(
      root=root, files=files, vocab_file=os.path.join(root, "vocab.txt"), class_names=info["class_names"],
      attribute_names=info["attribute_names"], answer_names=info["answer_names"], num_frames=o["num_frames"],
      fps=o["fps"], size=o["size"], sample_rate=o["sample_rate"], image_class_names=info["image_class_names"],
      num_examples=info["num_examples"])


def generate(directory: str, *, num_train: int, num_test: int, num_images: int, num_frames: int, fps: float,
             size: int, sample_rate: int, episode_len: int, num_shards: int, seed: int,
             colour_change: float = 0.0, routines: int = 0) -> dict[str, Any]:
  """Writes the dataset into `directory` (which must exist and be empty); returns the info dict."""
  from vlm.data import records  # pylint: disable=g-import-not-at-top,unused-import
  # TensorFlow is imported above (seconds, once per process), outside the reported generation time.
  t0 = time.time()
  counts = {"train": num_train, "test": num_test, "train_images": num_images,
            "test_images": max(1, num_images // 4) if num_images else 0}
  files, stats = {}, {}
  routine = routine_table(seed, routines, episode_len) if routines else None
  for split_index, split in enumerate(SPLITS):
    ts = time.time()
    # One independent random stream per split: the splits never share a clip.
    rng = np.random.default_rng([seed, split_index, _STREAM_VERSION])
    total = counts[split]
    is_images = split.endswith("images")
    num_groups = total if is_images else -(-total // episode_len)
    writer = _ShardWriter(directory, split, num_groups, num_shards)
    done, next_report = 0, 0.25
    if is_images:
      for i in range(total):
        writer.write_group([_image_record(rng, split_index, i, fps=fps, size=size,
                                          jpeg_quality=DEFAULT_JPEG_QUALITY)])
    else:
      episode = 0
      while done < total:
        length = min(episode_len, total - done)
        writer.write_group(_clip_records(rng, split_index, episode, length, done, num_frames=num_frames, fps=fps,
                                         size=size, sample_rate=sample_rate, jpeg_quality=DEFAULT_JPEG_QUALITY,
                                         seed=seed, colour_change=colour_change, routine=routine))
        done += length
        episode += 1
        if total >= 256 and done >= next_report * total:
          _log(f"{split}: {done}/{total} clips, {time.time() - ts:.1f} s")
          next_report += 0.25
    files[split] = writer.close()
    nbytes = sum(os.path.getsize(p) for p in files[split])
    stats[split] = {"seconds": round(time.time() - ts, 3), "bytes": nbytes}
    _log(f"{split}: {total} records, {nbytes / 2**20:.1f} MiB, {time.time() - ts:.1f} s")
  with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(vocabulary()) + "\n")
  return {
      "files": {k: [os.path.basename(p) for p in v] for k, v in files.items()},
      "num_examples": counts,
      "class_names": CLASS_NAMES,
      "image_class_names": IMAGE_CLASS_NAMES,
      "attribute_names": ATTRIBUTE_NAMES,
      "answer_names": ANSWER_NAMES,
      "question_kinds": list(QUESTION_KINDS),
      "routines": routine.tolist() if routine is not None else None,
      "stats": stats,
      "seconds": round(time.time() - t0, 3),
      "bytes": sum(s["bytes"] for s in stats.values()),
  }


def ensure_builtin(data_dir: str | None = None, *, num_train: int = 2048, num_test: int = 512,
                   num_images: int = 1024, num_frames: int = 32, fps: float = 10.0, size: int = 64,
                   sample_rate: int = 48000, episode_len: int = 4, num_shards: int = 8,
                   seed: int = 0, colour_change: float = 0.0, routines: int = 0) -> BuiltinDataset:
  """Returns the built-in dataset for these options, generating it first if it is not cached.

  Args:
    data_dir: base cache directory (default `$VLM_DATA_DIR/builtin` or `~/.cache/vlm/builtin`); the dataset lives
      in a subdirectory named by a hash of the options.
    num_train, num_test: video clips in 'train' and 'test'.
    num_images: one-frame records in 'train_images' ('test_images' gets a quarter, at least 1; 0 for none).
    num_frames, fps: clip length (default 32 frames at 10 fps = 3.2 s, as VATT).
    size: frame height and width (64 by default; 224 works, about 12x slower).
    sample_rate: audio rate (48 kHz as VATT; lower it for small tests: the audio dominates the size).
    episode_len: clips per episode (HierVL).
    num_shards: TFRecord shards per split (fewer when a split has fewer episodes).
    seed: the random seed.
    colour_change: the fraction of clips whose big object changes colour (see the module docstring); 0 leaves
      the data (and its cache directory) as it was before the option existed.
    routines: R > 0: every episode's directions follow its colour's routine (module docstring); 0 leaves the data
      (and its cache directory) as it was.

  Returns:
    The `BuiltinDataset`.
  """
  if size < 16:
    raise ValueError(f"size must be >= 16, got {size}.")
  if num_frames < 1 or fps <= 0 or sample_rate < 1000 or episode_len < 1 or num_shards < 1:
    raise ValueError("num_frames, fps, episode_len and num_shards must be positive and sample_rate >= 1000.")
  if not 0.0 <= colour_change <= 1.0:
    raise ValueError(f"colour_change is a fraction of clips in [0, 1], got {colour_change}.")
  if not 0 <= int(routines) <= len(COLOURS):
    raise ValueError(f"routines is a number of routines in [0, {len(COLOURS)}] (one per colour at most), got "
                     f"{routines}.")
  opts = _options(num_train=int(num_train), num_test=int(num_test), num_images=int(num_images),
                  num_frames=int(num_frames), fps=float(fps), size=int(size), sample_rate=int(sample_rate),
                  episode_len=int(episode_len), num_shards=int(num_shards), seed=int(seed))
  if colour_change:  # Named only when on, so that the default datasets keep their cache directories.
    opts["colour_change"] = float(colour_change)
  if routines:
    opts["routines"] = int(routines)
  opts.update({f"{name}_version": version for name, version in OPTION_VERSIONS.items() if name in opts})
  root = cache_dir(data_dir, opts)
  if os.path.exists(os.path.join(root, "dataset_info.json")):
    return _load(root)
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  _log(f"generating {root} ...")
  tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp-", dir=parent)
  try:
    info = generate(tmp, **{k: v for k, v in opts.items() if k != "jpeg_quality" and not k.endswith("_version")})
    info["options"] = opts
    # dataset_info.json is written last: its presence marks a complete dataset.
    with open(os.path.join(tmp, "dataset_info.json"), "w", encoding="utf-8") as f:
      json.dump(info, f, indent=1)
    try:
      os.rename(tmp, root)
    except OSError:
      if not os.path.exists(os.path.join(root, "dataset_info.json")):
        raise
      # Another process finished first; use its copy (identical bytes for the same options).
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  ds = _load(root)
  _log(f"done in {info['seconds']:.1f} s, {info['bytes'] / 2**20:.1f} MiB in {root}")
  return ds


def dataset_bytes(ds: BuiltinDataset) -> int:
  """Total size of the dataset's shard files."""
  return sum(os.path.getsize(p) for paths in ds.files.values() for p in paths)


def main(argv: Sequence[str] | None = None) -> BuiltinDataset:
  parser = argparse.ArgumentParser(prog="python -m vlm.data.builtin", description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None)
  defaults = dict(num_train=2048, num_test=512, num_images=1024, num_frames=32, fps=10.0, size=64,
                  sample_rate=48000, episode_len=4, num_shards=8, seed=0, colour_change=0.0, routines=0)
  for k, v in defaults.items():
    parser.add_argument(f"--{k}", type=type(v), default=v)
  args = vars(parser.parse_args(argv))
  t0 = time.time()
  ds = ensure_builtin(**args)
  total = dataset_bytes(ds)
  print(f"{ds.root}: {sum(ds.num_examples.values())} records "
        f"({', '.join(f'{k} {v}' for k, v in ds.num_examples.items())}), {total / 2**20:.1f} MiB, "
        f"ready in {time.time() - t0:.1f} s")
  return ds


if __name__ == "__main__":
  main()
