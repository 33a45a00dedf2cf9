"""A fast malloc for the entry points, without a step of the user's: oneTBB's scalable allocator, preloaded.

XLA:CPU allocates and frees many short-lived buffers per step; glibc's malloc returns freed pages to the kernel
and takes them back again, which costs a large share of a CPU train step (docs/performance.md). A thread-caching
allocator removes that cost. `tbb` (Intel's oneTBB wheel, a dependency of this package on Linux) ships one,
`libtbbmalloc_proxy`, which replaces malloc / free when preloaded.

`reexec_with_fast_malloc()` is the first call of every command-line entry point (`vlm.main`, `vlm.tools.*`):
when the allocator is not loaded yet, it sets LD_PRELOAD and re-executes the same command once (the dynamic
loader reads LD_PRELOAD only at process start); child processes inherit it. The test suite's conftest calls
`preload_for_children()` instead (pytest has redirected its output by then, so it cannot re-execute itself):
the pytest-xdist workers, where the tests run, and every process a test starts get the allocator.

  VLM_MALLOC=system   opt out (glibc's malloc); also kept when LD_PRELOAD already names another allocator
                      (tcmalloc, jemalloc, mimalloc), so a user's own choice wins.
When the library is missing (not Linux, or `tbb` not installed) one line says so and the run goes on.
"""
from __future__ import annotations

import os
import sys

_OPT_OUT = "VLM_MALLOC"
_OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc", "tbbmalloc")
# libtbbmalloc_proxy needs libtbbmalloc (its DT_NEEDED entry has no path): preloading both by path satisfies it.
_LIBS = ("libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2")


def library_paths() -> list[str] | None:
  """The allocator's shared objects in this interpreter's environment, or None when they are not installed."""
  if not sys.platform.startswith("linux"):
    return None
  for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
    paths = [os.path.join(prefix, "lib", name) for name in _LIBS]
    if all(os.path.exists(p) for p in paths):
      return paths
  return None


def active() -> bool:
  """Whether this process was started with a thread-caching allocator preloaded."""
  return any(name in os.environ.get("LD_PRELOAD", "") for name in _OTHER_ALLOCATORS)


def preload_for_children() -> bool:
  """Puts the allocator into LD_PRELOAD for the processes this one starts; True if it was added just now."""
  if os.environ.get(_OPT_OUT, "").lower() == "system" or active():
    return False
  paths = library_paths()
  if paths is None:
    if not os.environ.get("VLM_MALLOC_NOTE_SHOWN"):
      os.environ["VLM_MALLOC_NOTE_SHOWN"] = "1"
      print("[vlm] using the system malloc: oneTBB's allocator is not installed (`pip install tbb` speeds up "
            "CPU steps; VLM_MALLOC=system silences this).", file=sys.stderr, flush=True)
    return False
  preload = os.environ.get("LD_PRELOAD", "")
  os.environ["LD_PRELOAD"] = ":".join(paths + ([preload] if preload else []))
  return True


def reexec_with_fast_malloc() -> None:
  """Re-executes this command with the allocator preloaded, unless it already is, is opted out or is missing."""
  if not preload_for_children():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # sys.orig_argv is the interpreter's own command line (`python -m vlm.main ...`, `python -m pytest ...`).
  os.execv(sys.executable, [sys.executable] + sys.orig_argv[1:])
