"""Entry point: `python -m s2d_jax.main --config configs/toy_arith.py --workdir runs/toy`.

Flags, optional multi-host initialisation, global JAX flags, then `pipeline.run`. Nothing else.
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from s2d_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, exports).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (TPU pod slices, multi-host GPU)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if _DISTRIBUTED.value:
        jax.distributed.initialize()  # reads the coordinator from the TPU/cluster environment
    # Random bits that do not depend on how an array is sharded: results match across meshes.
    jax.config.update("jax_threefry_partitionable", True)
    pipeline.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
