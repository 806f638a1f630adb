"""Test set-up shared by every test: 8 fake CPU devices, float32 matmuls, helpers."""

import os

# Must happen before jax is imported anywhere: the fake device count is read at backend start.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare against float32 torch; the default CPU matmul precision is already exact,
# this makes it explicit so an accelerator run of the tests is not silently looser.
jax.config.update("jax_default_matmul_precision", "highest")
