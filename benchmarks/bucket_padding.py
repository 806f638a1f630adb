"""Sampler slots per row on a task's real prompts: `sampler.bucket` vs power-of-two buckets.

The sampler left-pads a batch's prompts to `bucket(longest prompt)` and holds
`bucket(max_new_tokens)` more cache slots; every slot costs prefill compute, attention reads
and cache memory. This samples random batches of prompts (tokenized exactly as the pipeline
does) and prints the mean slots per row under `sampler.bucket` and under the power-of-two grid it
replaced (the baseline), beside the unpadded need (longest prompt + max_new_tokens).

    PYTHONPATH=. .venv/bin/python benchmarks/bucket_padding.py          # SmolLM2 GSM8K config
    PYTHONPATH=. .venv/bin/python benchmarks/bucket_padding.py --config configs/toy_arith.py \\
        --split test --batches 4,32 --max_new_tokens 48

`--config` is read as by `s2d_jax.main` (a config file, `:args` allowed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from s2d_jax.data.task import Task, build_tokenizer
from s2d_jax.rollout import sampler
from s2d_jax.workflow import pipeline


def power_of_two(n: int, minimum: int = sampler.MIN_BUCKET) -> int:
    """The baseline: the smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << (n - 1).bit_length())


_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/smollm2_gsm8k.py", "Experiment config."
)
_SPLIT = flags.DEFINE_string("split", "test", "A prompt pool of the config's task.")
_BATCHES = flags.DEFINE_string("batches", "2,8,64", "Prompts per sampler call.")
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 192, "Tokens generated per row.")
_PROBLEMS = flags.DEFINE_integer("problems", 500, "Prompts to tokenize.")
_DRAWS = flags.DEFINE_integer("draws", 1000, "Random batches per size.")


def main(argv):
    del argv
    plan = pipeline.validate(_CONFIG.value)
    hf_path = next((m.hf_path for m in plan.models.values() if m.hf_path), "")
    with tempfile.TemporaryDirectory() as workdir:
        task = Task(plan.task, build_tokenizer(plan.task, Path(workdir), hf_path))
        pool = task.pool(_SPLIT.value)[: _PROBLEMS.value]
        lengths = np.array([len(task.prompt_ids(example)) for example in pool])
    print(
        f"{_SPLIT.value}: {len(lengths)} prompts of {lengths.min()}-{lengths.max()} "
        f"tokens (median {np.median(lengths):.0f}), max_new_tokens {_NEW_TOKENS.value}"
    )
    rng = np.random.default_rng(0)
    N = _NEW_TOKENS.value
    for size in map(int, _BATCHES.value.split(",")):
        longest = [int(lengths[rng.choice(len(lengths), size)].max()) for _ in range(_DRAWS.value)]
        need = np.mean([p + N for p in longest])
        base = np.mean([power_of_two(p) + power_of_two(N) for p in longest])
        new = np.mean([sampler.bucket(p) + sampler.bucket(N) for p in longest])
        print(
            f"  batch {size:3d}: slots per row {new:6.0f} (sampler.bucket) vs {base:6.0f} "
            f"(powers of two, baseline): {1 - new / base:5.1%} fewer; unpadded need {need:.0f}"
        )


if __name__ == "__main__":
    app.run(main)
