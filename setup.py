"""Package metadata for s2d_jax (sparse-to-dense post-training in JAX)."""

from setuptools import find_packages, setup

setup(
    name="s2d_jax",
    version="0.1.0",
    description="Sparse-to-dense post-training (teacher GRPO -> forward KL -> on-policy distillation) in JAX",
    python_requires=">=3.10",
    packages=find_packages(include=["s2d_jax", "s2d_jax.*"]),
    package_data={"s2d_jax.data": ["files/*.jsonl", "files/*.md"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "transformers>=4.51",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.9",
        "ml-collections>=1.0",
        "sympy>=1.13",
        "absl-py>=2.0",
        "math-verify>=0.7",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy>=1.26",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "chex>=0.1.88",
            "hypothesis>=6",
            "torch==2.13.0",
            "nbclient>=0.10",
            "ipykernel>=6",
            "nbformat>=5",
            "jupytext>=1.16",
            "ruff>=0.6",
        ],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
)
