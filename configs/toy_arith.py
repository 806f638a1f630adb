"""Toy arithmetic experiment (placeholder until the pipeline lands): builds a toy model and decodes.

    python -m s2d_jax.main --config configs/toy_arith.py --workdir runs/toy
CPU, seconds.
"""

import ml_collections


def get_config(arg=None):
    del arg
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = "toy_student"
    config.new_tokens = 8
    return config
