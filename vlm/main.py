r"""Command line: train or evaluate one config.

  python -m vlm.main --config=configs/vatt/pretrain.py:tiny --workdir=/tmp/vatt [--config.total_steps=10]
  python -m vlm.main --config=... --workdir=... --mode=eval
  python launch/local.py --num_processes=2 -- --config=... --workdir=...     # adds --distributed

Deliberately thin (flax-examples rule): parse flags, start the distributed runtime, keep TensorFlow off the
accelerators, then hand over to `vlm.train.trainer`, which tests and colabs import directly.

`--config.a.b=value` overrides are type-checked and an unknown key is an error (the config is locked).
`--distributed` calls `jax.distributed.initialize`, with --coordinator_address / --num_processes /
--process_id when given (else the VLM_COORDINATOR_ADDRESS / VLM_NUM_PROCESSES / VLM_PROCESS_ID environment
variables, else JAX's cluster auto-detection, which covers TPU VM pods).

The console shows vlm's own lines (progress, metrics, evaluation results) and every library's warnings; the
libraries' INFO lines (orbax's per checkpoint, TensorFlow's and CUDA's start-up) appear with `--verbosity=0`
(absl's flag; `--verbosity=1` for DEBUG). See vlm/logging_setup.py.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vlm import logging_setup

config_flags.DEFINE_config_file("config", None, "Config file, FILE:ARG.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train: train_and_evaluate; eval: evaluate the latest "
                  "checkpoint.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-process runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.mark_flags_as_required(["config", "workdir"])

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  verbose = logging_setup.verbose_requested()
  logging_setup.setup_console(verbose)
  from vlm import config_lib  # pylint: disable=g-import-not-at-top
  config_lib.check_ranges(FLAGS.config)  # value ranges (rates, sizes, steps) before JAX and TensorFlow start
  # Imported here so that flag errors (a misspelt --config.x) fail fast, before the heavy imports.
  import jax  # pylint: disable=g-import-not-at-top
  # Random bits computed shard-by-shard, identical for any mesh: needed for sharded dropout/DropToken keys.
  jax.config.update("jax_threefry_partitionable", True)
  from vlm import registry  # pylint: disable=g-import-not-at-top
  from vlm.parallel import multihost  # pylint: disable=g-import-not-at-top

  # Must come before anything starts a JAX backend.
  if FLAGS.distributed:
    multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  # The task and its model are built once here, before TensorFlow and the data pipeline are imported, so a bad
  # variant, an unknown model key or a task / model protocol mismatch is reported in seconds.
  registry.build_task(FLAGS.config)
  with logging_setup.native_stderr_swallowed(not verbose):  # TF's C++ start-up lines (oneDNN, CUDA stubs)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # tf.data runs on the host; without this TF may grab accelerator memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
  from vlm.train import trainer  # pylint: disable=g-import-not-at-top

  logging.info("JAX process %d/%d, local devices %s.", jax.process_index(), jax.process_count(),
               jax.local_devices())

  if FLAGS.mode == "train":
    try:
      results = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except trainer.Interrupted as stop:  # a signal or a preemption notice: checkpoint saved, not finished
      logging.warning("%s", stop)
      print(f"\n== Interrupted: {stop}", flush=True)
      sys.exit(trainer.Interrupted.EXIT_CODE)
  else:
    results = trainer.evaluate(FLAGS.config, FLAGS.workdir)
  if multihost.is_main_process() and results:
    # A plain summary on stdout, after the logs: the figures a user launched the job for.
    print(f"\n== Results ({FLAGS.mode}, workdir {FLAGS.workdir})")
    for name in sorted(results):
      print(f"  {name:<40s} {results[name]:.4g}")


if __name__ == "__main__":
  from vlm import allocator  # pylint: disable=g-import-not-at-top
  allocator.reexec_with_fast_malloc()
  app.run(main)
