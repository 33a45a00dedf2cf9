"""pytest set-up shared by every test: 8 fake CPU devices, and the repository root importable.

XLA reads XLA_FLAGS when its backend starts, so this must run before anything touches a jax device; a
conftest is imported before test modules. Nothing model-specific belongs here.
"""
import os
import sys

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# `tests.toy_task` (and other test helpers) are imported by dotted name, as configs name them.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
