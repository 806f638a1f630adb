"""Achieved FLOP/s of a GRPO step and of a forward-KL distillation step, against matmul throughput.

Default (CPU, float32): the ~30.5M-parameter Qwen3-shaped student of benchmarks/sampler.py
(d_model 512, 6 layers, 8/4 heads of 64, mlp 1024, vocab 32000, tied embeddings) and a ~54M
teacher of the same family (d_model 640, 8 layers); batch 8 x 256 tokens. FLOPs are counted
analytically, matmuls only: 6 * N * tokens for a training step (N = matmul parameters: the layers
plus the unembedding, not the embedding lookup) + 3x the forward attention 4 * L * T^2 * H * Dh per
sequence (full T x T, as computed); the teacher's forward is 2 * N_T * tokens + its forward
attention. Recomputation (the chunked loss recomputes logits in its backward pass) and
elementwise work are not counted, so they show up as lost efficiency. The reference is a jitted
2048 x 2048 float32 `jnp.dot` timed in the same run, alternating with the steps so both see the
same load (the CPU may be shared). Target: the steps reach >= 50% of the matmul throughput.

    .venv/bin/python benchmarks/train_step.py              # CPU, ~2-4 min on 2 cores
    .venv/bin/python benchmarks/train_step.py --batch 4 --seq 512 --reps 5
    python benchmarks/train_step.py --preset qwen3_1.7b --teacher_preset qwen3_8b --seq 1024

With --preset (an accelerator) the student and teacher are real-size random-weight presets with
float32 master weights and bfloat16 compute (the teacher's weights in bfloat16), the reference is
an 8192^3 bfloat16 matmul, and the device's peak memory after each step is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from s2d_jax.learn import steps
from s2d_jax.model import decoder
from s2d_jax.tools import fixed_records


def teacher_config() -> decoder.ModelConfig:
    return dataclasses.replace(
        decoder.ModelConfig.preset("bench_30m"),
        d_model=640,
        n_layers=8,
        n_heads=10,
        n_kv_heads=5,
        mlp_dim=1536,
    )


def matmul_params(cfg: decoder.ModelConfig) -> int:
    """Parameters that take part in a matmul per token: every layer matrix and the unembedding."""
    D, H, K, Dh, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    per_layer = D * H * Dh * 2 + D * K * Dh * 2 + 3 * D * F
    return cfg.n_layers * per_layer + D * cfg.vocab_size


def forward_flops(cfg: decoder.ModelConfig, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward pass over [batch, seq] tokens (full T x T attention)."""
    dense = 2 * matmul_params(cfg) * batch * seq
    attention = 4 * cfg.n_layers * seq * seq * cfg.n_heads * cfg.head_dim * batch
    return dense + attention


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - w0, time.process_time() - c0


def make_matmul(size: int = 2048, dtype=jnp.float32):
    """A jitted size x size matmul; returns () -> (FLOP per wall s, FLOP per CPU s) of
    3 runs (wall: the best run; CPU: all three)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    flops = 2 * size**3

    def rates():
        runs = [timed(lambda: dot(a, b)) for _ in range(3)]
        return flops / min(w for w, _ in runs), 3 * flops / sum(c for _, c in runs)

    return rates


def make_batch(cfg, batch: int, seq: int, params) -> dict:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(batch, seq)).astype(np.int32)
    attention = np.ones((batch, seq), bool)
    loss_mask = np.zeros((batch, seq - 1), np.float32)
    loss_mask[:, seq // 4 :] = 1.0  # a prompt quarter, a completion of three quarters
    lp = np.asarray(steps.score_tokens(cfg, params, tokens, attention, chunk_size=512))
    return {
        "tokens": tokens,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "old_logprobs": lp,
        "ref_logprobs": lp,
        "advantages": rng.normal(size=batch).astype(np.float32),
    }


def bench_step(name, step, state, args, flops, reps, matmul):
    """Alternate matmul and step timings, so both see the same load on a shared CPU."""
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(step(state, *args))  # the state is donated: rebind it
    compile_s = time.perf_counter() - t0
    walls, wall_fracs, cpu_fracs, rates = [], [], [], []
    for _ in range(reps):
        wall_rate, cpu_rate = matmul()
        w0, c0 = time.perf_counter(), time.process_time()
        state, metrics = jax.block_until_ready(step(state, *args))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        walls.append(wall)
        rates.append(wall_rate)
        wall_fracs.append(flops / wall / wall_rate)
        cpu_fracs.append(flops / cpu / cpu_rate)
    print(
        f"{name:<11} {compile_s:8.1f} {min(walls):7.3f} {statistics.median(walls):7.3f} "
        f"{flops / 1e9:7.1f} {flops / min(walls) / 1e9:8.1f} {statistics.median(rates) / 1e9:8.1f} "
        f"{statistics.median(wall_fracs):6.1%} {max(wall_fracs):6.1%} "
        f"{statistics.median(cpu_fracs):6.1%}{peak_memory()}"
    )
    return state


def peak_memory() -> str:
    """The device's peak allocated bytes so far, where the backend reports it (not on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")  # an optional key of a backend's report
    return "" if peak is None else f"  peak {peak / 2**30:.1f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--chunk_size", type=int, default=512)
    parser.add_argument("--preset", default=None, help="student preset (accelerator, bfloat16)")
    parser.add_argument("--teacher_preset", default=None, help="teacher preset (with --preset)")
    args = parser.parse_args()

    if args.preset:
        cfg = decoder.ModelConfig.preset(args.preset, compute_dtype="bfloat16")
        teacher_cfg = decoder.ModelConfig.preset(
            args.teacher_preset or args.preset, param_dtype="bfloat16", compute_dtype="bfloat16"
        )
        matmul_size, matmul_dtype = 8192, jnp.bfloat16
    else:
        cfg, teacher_cfg = decoder.ModelConfig.preset("bench_30m"), teacher_config()
        matmul_size, matmul_dtype = 2048, jnp.float32
    init = jax.jit(decoder.init_params, static_argnames="cfg")
    params = init(cfg, jax.random.key(0))
    teacher = init(teacher_cfg, jax.random.key(1))
    B, T = args.batch, args.seq
    batch = make_batch(cfg, B, T, params)
    opt = fixed_records.optimizer_config(1e-6, weight_decay=0.1)
    print(
        f"backend {jax.default_backend()} ({jax.device_count()} devices, {jax.devices()[0]}); "
        f"student {decoder.count_params(params) / 1e6:.1f}M params "
        f"({matmul_params(cfg) / 1e6:.1f}M in matmuls), teacher "
        f"{decoder.count_params(teacher) / 1e6:.1f}M ({matmul_params(teacher_cfg) / 1e6:.1f}M); "
        f"batch {B} x {T} tokens; compute {cfg.compute_dtype}"
    )
    matmul = make_matmul(matmul_size, matmul_dtype)
    print(
        "fractions = step FLOP/s / matmul FLOP/s, per pair of alternating runs: by wall time "
        "(median, best) and by process CPU time (median; robust to time-slicing on a shared CPU)"
    )
    print(
        f"{'step':<11} {'compile':>8} {'best s':>7} {'med. s':>7} {'GFLOP':>7} {'GFLOP/s':>8} "
        f"{'matmul':>8} {'wall':>6} {'best':>6} {'cpu':>6}"
    )
    train_flops = 3 * forward_flops(cfg, B, T)
    grpo = steps.StepConfig(
        "grpo",
        opt,
        1,
        args.chunk_size,
        vocab_chunk=8192,
        grpo=fixed_records.grpo_config(5e-4),
    )
    state = steps.init_train_state(cfg, opt, params)
    step = steps.jit_train_step(grpo, cfg)
    bench_step("grpo", step, state, (batch,), train_flops, args.reps, matmul)
    fkl = steps.StepConfig("forward_kl", opt, 1, args.chunk_size, vocab_chunk=8192)
    state = steps.init_train_state(cfg, opt, params)
    step = steps.jit_train_step(fkl, cfg, teacher_cfg)
    flops = train_flops + forward_flops(teacher_cfg, B, T)
    bench_step("forward_kl", step, state, (teacher, batch), flops, args.reps, matmul)


if __name__ == "__main__":
    main()
