"""Executes every notebook in colabs/ on the CPU (with fewer training steps) and checks its outputs."""
import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
# Per notebook: training steps in the suite (default 100, the tiny warm-up length; TubeViT's image test accuracy
# is still at chance there and clearly above it at 150) and a string its printed output must hold.
STEPS = {"tubevit_tubes.ipynb": 150, "hiervl_episodes.ipynb": 60}
# Built-in clips per split (VLM_COLAB_CLIPS): smaller than the tiny configs' for faster generation and evaluation;
# TubeViT's image accuracy needs the 256.
CLIPS = {"tubevit_tubes.ipynb": 256}
EXPECTED_TEXT = {"hiervl_episodes.ipynb": "summary-narration gap", "svitt_sparsity.ipynb": "R@1",
                 "vatt_quickstart.ipynb": "R@1", "tubevit_tubes.ipynb": "top-1"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path, monkeypatch):
  name = os.path.basename(path)
  monkeypatch.setenv("VLM_COLAB_STEPS", str(STEPS.get(name, 100)))
  monkeypatch.setenv("VLM_COLAB_CLIPS", str(CLIPS.get(name, 64)))
  # One real CPU device in the kernel, whatever the test session's fake-device flag; the session's cheap-compile
  # flags stay (tests/conftest.py: the notebooks' tiny programs spend most of their time compiling).
  monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                           if not f.startswith("--xla_force_host_platform_device_count")))
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 2, "expected the loss plot and the results figure"
  text = "".join(o.get("text", "") for o in outputs)
  assert EXPECTED_TEXT.get(name, "R@1") in text
