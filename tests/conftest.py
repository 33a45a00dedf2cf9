"""pytest set-up shared by every test: 8 fake CPU devices, faster XLA compiles, the repository root importable.

XLA reads XLA_FLAGS when its backend starts, so this must run before anything touches a jax device; a
conftest is imported before test modules. Nothing model-specific belongs here.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# The tests run with the allocator the entry points use (vlm/allocator.py): the pytest-xdist workers, started
# after this, and every process a test starts inherit LD_PRELOAD.
from vlm import allocator  # pylint: disable=g-import-not-at-top,wrong-import-position
allocator.preload_for_children()

# 8 fake CPU devices; and LLVM's cheap path: the tiny test programs spend most of their time in XLA:CPU's
# compile, which these two flags shorten by about a quarter (two of the heaviest tests: 162 -> 119 s on the 2-core
# machine) while the HLO, and so what the tests check, stays the same. Real runs keep full optimisation.
_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
          "--xla_llvm_disable_expensive_passes=true")
for _flag in _FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# One persistent XLA compilation cache for the whole session (the pytest-xdist workers and the multi-process
# launcher's children inherit the variable): the tiny configs compile the same programs in several tests
# (trainer runs, resumes, evaluators), and a cache hit skips XLA's compile. A fresh directory per session, so
# nothing stale from another jax version is ever read.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vlm_test_xla_cache_")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# `tests.toy_task` (and other test helpers) are imported by dotted name, as configs name them (_ROOT above).
