"""Command-line tools that prepare inputs (checkpoints) for s2d_jax; run each with `python -m`."""
