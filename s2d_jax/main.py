"""Entry point: `python -m s2d_jax.main --config configs/toy_arith.py --workdir runs/toy`.

Flags, optional multi-host initialisation, global JAX flags, then `pipeline.run`. Nothing else.
"""

import functools
import gc
import os
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from s2d_jax.workflow import pipeline, plan, sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, exports).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (TPU pod slices, multi-host GPU)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: host:port of process 0 (default: detected)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: process count (default: detected)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index (default: detected)."
)
_ACCEPT_CHANGES = flags.DEFINE_bool(
    "accept_config_changes",
    False,
    "On a rerun, run stages not yet started with a changed config (finished ones never change).",
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Check everything and print the plan; load no weights, compile nothing."
)
_SEEDS = flags.DEFINE_list(
    "seeds", [], "Run once per seed into <workdir>/seed_<n>/ and summarise across seeds."
)
_SHARED_STAGES = flags.DEFINE_list(
    "shared_stages", [], "With --seeds: stages trained once (first seed) and read by every seed."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if _DISTRIBUTED.value:
        # Without the three flags jax reads them from the TPU / cluster environment.
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    # orbax logs every checkpoint at INFO; progress bars and stage summaries are the run's output.
    logging.set_verbosity(logging.WARNING)
    # Stages re-jit the same step functions; a persistent cache turns repeat compiles (10-20 s
    # each on CPU) into loads, across stages and across runs.
    cache_root = os.environ.get("S2D_JAX_CACHE") or os.path.expanduser("~/.cache/s2d_jax")
    jax.config.update("jax_compilation_cache_dir", os.path.join(cache_root, "jax_compile"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # Random bits that do not depend on how an array is sharded: results match across meshes.
    jax.config.update("jax_threefry_partitionable", True)
    if _DRY_RUN.value:
        run_reporting_errors(
            lambda *args: print(plan.describe(*args)), _CONFIG.value, _WORKDIR.value
        )
        return
    run = functools.partial(pipeline.run, accept_config_changes=_ACCEPT_CHANGES.value)
    if _SEEDS.value:
        seeds = [int(seed) for seed in _SEEDS.value]
        run = functools.partial(
            sweep.run,
            seeds=seeds,
            shared_stages=_SHARED_STAGES.value,
            accept_config_changes=_ACCEPT_CHANGES.value,
        )
    run_reporting_errors(run, _CONFIG.value, _WORKDIR.value)


def run_reporting_errors(fn, *args) -> None:
    """Call `fn(*args)`; on an exception print its traceback as the last output and exit 1.

    What the failure left behind lives as long as its traceback's frames, which is until
    interpreter exit if the exception propagates: orbax's coroutines of a failed restore, for
    one, are then finalized after the traceback ("Event loop is closed", "sys.meta_path is
    None"). Freeing them first puts their noise before the error instead of after it.
    """
    try:
        fn(*args)
        return
    except Exception:
        error = traceback.format_exc()
    gc.collect()  # outside the handler: the exception and its frames are released by now
    sys.stderr.write(error)
    sys.stderr.flush()
    sys.exit(1)


if __name__ == "__main__":
    app.run(main)
