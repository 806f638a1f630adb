"""Sampler slots per row on a task's real prompts: `sampler.bucket` vs power-of-two buckets.

The sampler left-pads a batch's prompts to `bucket(longest prompt)` and holds
`bucket(max_new_tokens)` more cache slots; every slot costs prefill compute, attention reads
and cache memory. This samples random batches of prompts (tokenized exactly as the pipeline
does) and prints the mean slots per row under `sampler.bucket` and under the power-of-two grid it
replaced (the baseline), beside the unpadded need (longest prompt + max_new_tokens).

    PYTHONPATH=. .venv/bin/python benchmarks/bucket_padding.py          # SmolLM2 GSM8K config
    PYTHONPATH=. .venv/bin/python benchmarks/bucket_padding.py --config configs/toy_arith.py \\
        --split test --batches 4,32 --max_new_tokens 48
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from s2d_jax import pipeline, sampler, tasks


def power_of_two(n: int, minimum: int = sampler.MIN_BUCKET) -> int:
    """The baseline: the smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << (n - 1).bit_length())


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/smollm2_gsm8k.py")
    parser.add_argument("--split", default="test", help="a prompt pool of the config's task")
    parser.add_argument("--batches", default="2,8,64", help="prompts per sampler call")
    parser.add_argument("--max_new_tokens", type=int, default=192)
    parser.add_argument("--problems", type=int, default=500, help="prompts to tokenize")
    parser.add_argument("--draws", type=int, default=1000, help="random batches per size")
    args = parser.parse_args()

    plan = pipeline.validate(load_config(args.config))
    hf_path = next((m.hf_path for m in plan.models.values() if m.hf_path), "")
    with tempfile.TemporaryDirectory() as workdir:
        task = tasks.Task(
            plan.task_cfg, tasks.build_tokenizer(plan.task_cfg, Path(workdir), hf_path)
        )
        pool = task.pool(args.split)[: args.problems]
        lengths = np.array([len(task.prompt_ids(example)) for example in pool])
    print(
        f"{args.config} {args.split}: {len(lengths)} prompts of {lengths.min()}-{lengths.max()} "
        f"tokens (median {np.median(lengths):.0f}), max_new_tokens {args.max_new_tokens}"
    )
    rng = np.random.default_rng(0)
    N = args.max_new_tokens
    for size in map(int, args.batches.split(",")):
        longest = [int(lengths[rng.choice(len(lengths), size)].max()) for _ in range(args.draws)]
        need = np.mean([p + N for p in longest])
        base = np.mean([power_of_two(p) + power_of_two(N) for p in longest])
        new = np.mean([sampler.bucket(p) + sampler.bucket(N) for p in longest])
        print(
            f"  batch {size:3d}: slots per row {new:6.0f} (sampler.bucket) vs {base:6.0f} "
            f"(powers of two, baseline): {1 - new / base:5.1%} fewer; unpadded need {need:.0f}"
        )


if __name__ == "__main__":
    main()
