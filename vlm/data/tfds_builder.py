"""TensorFlow Datasets access: a builder over our CSV manifests, and a loader for existing TFDS video datasets.

1. `VlmVideoManifest`, a `tfds.core.GeneratorBasedBuilder` (registered as 'vlm_video_manifest') that decodes the
   videos listed in manifest CSVs (the format of `vlm.data.write`) with PyAV and stores frames as a
   `tfds.features.Video`, the audio of the same window, captions and labels, so `tfds.load` and `tfds.builder`
   work on user data:

     config = VideoManifestConfig(name='mydata', manifests={'train': 'train.csv', 'test': 'test.csv'},
                                  fps=10, short_side=128)
     ds = tfds.load('vlm_video_manifest', split='train', data_dir=DIR, builder_kwargs={'config': config})

   Without `manifests`, every `<split>.csv` in the manual dir is a split ('default' config):

     tfds.load('vlm_video_manifest', data_dir=DIR, download_and_prepare_kwargs={'download_config':
               tfds.download.DownloadConfig(manual_dir=CSV_DIR)})

   Features: video uint8 [F, H, W, 3] (frames at `fps`, short side `short_side`; JPEG inside by default),
   audio float32 [S] mono at `sample_rate` (S = 0 and has_audio False when the file has none), captions string [K],
   labels int64 [N], label_text string [N], filename, start and end (seconds), fps. Rows that cannot be decoded
   are skipped with a warning, as in the record writer.

2. `load_tfds_video(name, split, ...)` reads any TFDS dataset with a `Video` feature (e.g. 'ucf101') and maps it to
   our example keys: `frames` uint8 [F, H, W, 3], `label` int32 [] (the ClassLabel; for this builder the first
   label, -1 when there is none), plus `audio` (and `sample_rate`), `captions`, `label_index` and `fps` when the
   dataset has them.

The TFDS route is for users who already keep data in TFDS; training pipelines read our TFRecords
(`vlm.data.write`), which carry the same content in the DMVR layout.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vlm.data import media
from vlm.data import write as write_lib

MANUAL_INSTRUCTIONS = """\
Put one CSV manifest per split in the manual dir, named <split>.csv (e.g. train.csv, test.csv), with the columns
of `vlm.data.write` (video, start, end, captions, labels, label_text); relative video paths are resolved from the
CSV's folder. Or give the paths in VideoManifestConfig(manifests={...}).
"""


@dataclasses.dataclass(eq=False)
class VideoManifestConfig(tfds.core.BuilderConfig):
  """What to read and how to decode it.

  Attributes:
    manifests: split name -> CSV path; None reads `<split>.csv` files from the manual dir.
    fps: frame rate of the stored frames (nearest-timestamp resampling); None keeps the source rate.
    short_side: resize so the short side has this many pixels (None keeps the size).
    max_frames: keep at most this many frames per example (None: all in the window).
    sample_rate: audio rate (mono).
    with_audio: decode audio at all.
    encoding_format: how TFDS stores frames inside its records ('jpeg' or 'png').
  """
  manifests: dict[str, str] | None = None
  fps: float | None = 10.0
  short_side: int | None = 256
  max_frames: int | None = None
  sample_rate: int = media.DEFAULT_SAMPLE_RATE
  with_audio: bool = True
  encoding_format: str = "jpeg"


class VlmVideoManifest(tfds.core.GeneratorBasedBuilder):
  """Videos listed in CSV manifests, decoded with PyAV (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [VideoManifestConfig(name="default", description="Manifests <split>.csv in the manual dir.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # TFDS reads `code_path` only to find a checksums file, and we download nothing. Its default implementation
    # also needs the `importlib_resources` backport, which tensorflow-datasets 4.9.10 declares only for
    # Python < 3.9, so on 3.10+ it raises ModuleNotFoundError unless something else installed the backport.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="Videos from CSV manifests (vlm.data.tfds_builder).",
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video(shape=(None, None, None, 3), encoding_format=cfg.encoding_format),
            "audio": tfds.features.Audio(shape=(None,), dtype=np.float32, sample_rate=cfg.sample_rate),
            "has_audio": np.bool_,
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "labels": tfds.features.Sequence(np.int64),
            "label_text": tfds.features.Sequence(tfds.features.Text()),
            "filename": tfds.features.Text(),
            "start": np.float32,
            "end": np.float32,
            "fps": np.float32,
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    manifests = self.builder_config.manifests
    if not manifests:
      manual = os.fspath(dl_manager.manual_dir)
      manifests = {os.path.splitext(os.path.basename(p))[0]: p for p in sorted(glob.glob(os.path.join(manual,
                                                                                                     "*.csv")))}
      if not manifests:
        raise ValueError(f"No <split>.csv manifest in the manual dir {manual}.\n{MANUAL_INSTRUCTIONS}")
    return {split: self._generate_examples(os.fspath(path)) for split, path in manifests.items()}

  def _generate_examples(self, manifest: str) -> Iterator[tuple[str, dict[str, Any]]]:
    cfg = self.builder_config
    media.import_av()  # Fail early and clearly without PyAV, instead of skipping every row.
    base_dir = os.path.dirname(os.path.abspath(manifest))
    skipped = 0
    for i, raw in enumerate(write_lib.read_manifest(manifest)):
      try:
        row = write_lib.parse_row(raw, base_dir)
        clip = media.decode_clip(row["video"], start=row["start"], end=row["end"], fps=cfg.fps,
                                 short_side=cfg.short_side, sample_rate=cfg.sample_rate,
                                 with_audio=cfg.with_audio, max_frames=cfg.max_frames)
        if not len(clip.frames):
          raise ValueError("no frame decoded in the window")
      except Exception as e:  # pylint: disable=broad-except
        skipped += 1
        logging.warning("vlm_video_manifest: skipping row %d of %s (%s): %s: %s", i, manifest,
                        raw.get("video"), type(e).__name__, e)
        continue
      yield f"{i:09d}", {
          "video": clip.frames,
          "audio": clip.audio if clip.audio is not None else np.zeros((0,), np.float32),
          "has_audio": clip.audio is not None,
          "captions": row["captions"],
          "labels": row["labels"],
          "label_text": row["label_text"],
          "filename": row["video"],
          "start": clip.start,
          "end": clip.end,
          "fps": clip.fps,
      }
    if skipped:
      logging.warning("vlm_video_manifest: skipped %d rows of %s.", skipped, manifest)


def _feature_keys(features: tfds.features.FeaturesDict) -> dict[str, str]:
  """Our key -> the dataset's top-level feature name, found by feature type."""
  out: dict[str, str] = {}
  items = list(features.items())
  for name, feat in items:
    if isinstance(feat, tfds.features.Video) and "frames" not in out:
      out["frames"] = name
    elif isinstance(feat, tfds.features.ClassLabel) and ("label" not in out or name == "label"):
      out["label"] = name
    elif isinstance(feat, tfds.features.Audio) and "audio" not in out:
      out["audio"] = name
  names = dict(items)
  if "captions" in names:
    out["captions"] = "captions"
  if "fps" in names:
    out["fps"] = "fps"
  if "labels" in names and "label" not in out:
    out["label_index"] = "labels"
  return out


def load_tfds_video(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    shuffle_files: bool = False,
    download: bool = False,
    builder_kwargs: Mapping[str, Any] | None = None,
    read_config: tfds.ReadConfig | None = None,
    with_info: bool = False,
) -> tf.data.Dataset | tuple[tf.data.Dataset, tfds.core.DatasetInfo]:
  """Loads a TFDS video dataset and maps its features to our example keys.

  Args:
    name: a TFDS name with a `Video` feature, e.g. 'ucf101', 'ucf101/ucf101_1_256', 'vlm_video_manifest/mydata'.
    split: a TFDS split, e.g. 'train' or 'test[:10%]'.
    data_dir: where TFDS keeps its data (default: TFDS's own default).
    shuffle_files: passed to TFDS.
    download: let TFDS download and prepare the data (most video datasets need a manual download; the default
      only reads what is prepared).
    builder_kwargs: passed to `tfds.builder` (e.g. {'config': VideoManifestConfig(...)}).
    read_config: passed to `as_dataset`.
    with_info: also return the `DatasetInfo`.

  Returns:
    A tf.data.Dataset of dicts: 'frames' uint8 [F, H, W, 3]; 'label' int32 [] (-1 when the dataset has no
    label); and, when present, 'audio' [S] in the dataset's dtype (float32 in [-1, 1] for this builder;
    TFDS often stores integer PCM) with 'sample_rate' int32 [] when the feature declares one, 'captions'
    string [K], 'label_index' int64 [N], 'fps' float32 [].

  Raises:
    ValueError: the dataset has no Video feature.
  """
  builder = tfds.builder(name, data_dir=data_dir, **dict(builder_kwargs or {}))
  if download:
    builder.download_and_prepare()
  keys = _feature_keys(builder.info.features)
  if "frames" not in keys:
    raise ValueError(f"{name}: no tfds.features.Video feature among {list(builder.info.features.keys())}.")
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)
  sample_rate = getattr(builder.info.features[keys["audio"]], "sample_rate", None) if "audio" in keys else None

  def convert(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    frames = ex[keys["frames"]]
    if frames.shape.rank == 4 and frames.shape[-1] == 1:
      frames = tf.image.grayscale_to_rgb(frames)
    out = {"frames": tf.cast(frames, tf.uint8)}
    if "label" in keys:
      out["label"] = tf.cast(ex[keys["label"]], tf.int32)
    elif "label_index" in keys:
      idx = tf.cast(ex[keys["label_index"]], tf.int64)
      out["label_index"] = idx
      out["label"] = tf.cond(tf.size(idx) > 0, lambda: tf.cast(idx[0], tf.int32), lambda: tf.constant(-1))
    else:
      out["label"] = tf.constant(-1, tf.int32)
    if "audio" in keys:
      out["audio"] = ex[keys["audio"]]  # The dataset's dtype: the caller knows how its PCM is scaled.
      if sample_rate:
        out["sample_rate"] = tf.constant(sample_rate, tf.int32)
    if "fps" in keys:
      out["fps"] = tf.cast(ex[keys["fps"]], tf.float32)
    if "captions" in keys:
      out["captions"] = ex[keys["captions"]]
    return out

  ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
  return (ds, builder.info) if with_info else ds
