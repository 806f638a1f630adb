"""The CPU floor of a decode step of benchmarks/sampler.py: matmul rates of JAX and torch.

The 30.5M `bench_30m` sampler step at batch 16 is ~0.98 GFLOP of matmuls, dominated by products
with 16 rows. This times the [16, 512] x [512, 32000] output-layer product and a 2048^3 product
in JAX and in torch with 1 and 2 threads (float32, best of several runs, interleaved), so the
sampler's ms/step can be set against what either library reaches at that shape.

    PYTHONPATH=. .venv/bin/python benchmarks/matmul_floor.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import torch


def best_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    key = jax.random.key(0)
    x, w = jax.random.normal(key, (16, 512)), jax.random.normal(key, (512, 32000))
    a = jax.random.normal(key, (2048, 2048))
    product = jax.jit(jnp.matmul)
    jax.block_until_ready((product(x, w), product(a, a)))
    tx, tw, ta = torch.randn(16, 512), torch.randn(512, 32000), torch.randn(2048, 2048)
    flops = {"16-row output layer": 2 * 16 * 512 * 32000, "2048^3": 2 * 2048**3}
    cases = {
        ("16-row output layer", "jax"): lambda: jax.block_until_ready(product(x, w)),
        ("2048^3", "jax"): lambda: jax.block_until_ready(product(a, a)),
        ("16-row output layer", "torch"): lambda: tx @ tw,
        ("2048^3", "torch"): lambda: ta @ ta,
    }
    best = {}
    for _ in range(5):  # interleaved rounds, so every case sees the same machine load
        for (shape, lib), fn in cases.items():
            threads = (1, 2) if lib == "torch" else (None,)
            for n in threads:
                if n:
                    torch.set_num_threads(n)
                name = (shape, lib if n is None else f"torch {n} thread(s)")
                runs = 10 if shape.startswith("16") else 2
                best[name] = min(best.get(name, float("inf")), best_seconds(fn, runs))
    for (shape, lib), seconds in best.items():
        print(
            f"{shape:>20} {lib:>18}: {seconds * 1e3:8.2f} ms {flops[shape] / seconds / 1e9:7.1f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
