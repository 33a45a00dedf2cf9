"""The entry points' allocator (vlm/allocator.py): re-execution with it preloaded, the opt-out, a user's own."""
import os
import subprocess
import sys

import pytest

from vlm import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = ("from vlm import allocator; allocator.reexec_with_fast_malloc(); "
          "print('tbbmalloc_proxy' in open('/proc/self/maps').read())")

pytestmark = pytest.mark.skipif(allocator.library_paths() is None, reason="tbb's allocator is not installed")


def _probe(**env_changes):
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VLM_MALLOC")}
  env.update(env_changes)
  proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.strip()


def test_entry_point_reexecutes_once_with_the_allocator_loaded():
  assert _probe() == "True"


def test_opt_out_keeps_the_system_malloc():
  assert _probe(VLM_MALLOC="system") == "False"


def test_a_users_own_allocator_is_kept():
  # LD_PRELOAD naming another allocator (here a file that does not exist: the loader warns and goes on).
  assert _probe(LD_PRELOAD="/nonexistent/libtcmalloc_minimal.so.4") == "False"


@pytest.mark.skipif("PYTEST_XDIST_WORKER" not in os.environ, reason="only pytest-xdist workers start after conftest")
def test_the_suite_itself_runs_with_it():
  assert "tbbmalloc_proxy" in open("/proc/self/maps").read()
