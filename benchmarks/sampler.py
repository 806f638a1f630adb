"""Rollout throughput: s2d_jax's sampler beside transformers `generate` on the same weights.

Default (CPU, float32): a Qwen3-shaped random model of ~30.5M parameters (d_model 512, 6 layers,
8 heads / 4 kv heads of 64, mlp 1024, vocab 32000, tied embeddings), batch 16, prompt 64, 128 new
tokens, no EOS (so both sides generate exactly 128 tokens), greedy and sampled (temperature 1).
s2d_jax's compile time is printed apart and excluded; each figure is the best of --reps runs,
the two libraries' runs interleaved so that both see the same machine load. s2d_jax's time is
that of all of generate() (unstacking the layer weights, prefill, decode loop, rollout).
Target: >= 5x transformers.

    .venv/bin/python benchmarks/sampler.py                          # CPU, ~3-5 min on 2 cores
    python benchmarks/sampler.py --preset qwen3_1.7b --batch 64 --prompt_len 256 --new_tokens 512

With --preset (an accelerator; bfloat16, random weights, no transformers run) it also prints the
fraction of the memory-bandwidth bound: (bytes of params + KV cache read per decode step) /
step time / --bandwidth_gbs. The attention reads all cache slots every step, so the whole
allocated cache counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import jax
import numpy as np

from s2d_jax import hf_io, model, sampler

GB = 1e9


def cpu_config() -> model.ModelConfig:
    return dataclasses.replace(
        model.ModelConfig.preset("qwen3_0.6b"),
        d_model=512,
        n_layers=6,
        n_heads=8,
        n_kv_heads=4,
        head_dim=64,
        mlp_dim=1024,
        vocab_size=32_000,
    )


def s2d_runner(cfg, params, prompts, new_tokens, temperature):
    """A function running sampler.generate once; returns its seconds (prefill, decode, total)."""
    settings = sampler.make_settings(
        cfg, temperature=temperature, top_p=1.0, top_k=0, eos_id=(), pad_id=0
    )
    unstack = jax.jit(sampler.unstack_layers)

    def run():
        # The same phases as generate(), timed one by one.
        t0 = time.perf_counter()
        layer_params = unstack(params)
        state = jax.block_until_ready(
            sampler.prefill(cfg, layer_params, prompts, settings, max_new_tokens=new_tokens)
        )
        t1 = time.perf_counter()
        state = jax.block_until_ready(sampler.decode(cfg, layer_params, state))
        t2 = time.perf_counter()
        rollout = jax.block_until_ready(sampler.to_rollout(state, len(prompts), new_tokens))
        t3 = time.perf_counter()
        assert (np.asarray(rollout.lengths) == new_tokens).all() and int(state.step) == new_tokens
        return t1 - t0, t2 - t1, t3 - t0

    return run


def hf_runner(cfg, params, prompts, new_tokens, temperature):
    """A function(threads) running transformers `generate` (torch, float32, CPU) once; seconds."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as path:
        hf_io.save_hf(path, cfg, params)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(np.asarray(prompts))
    kw = dict(
        attention_mask=torch.ones_like(ids),
        pad_token_id=0,
        eos_token_id=None,
        do_sample=temperature > 0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
    )
    if temperature > 0:
        kw.update(temperature=temperature, top_k=0, top_p=1.0)

    def run(threads):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, **kw)
        assert out.shape[1] == ids.shape[1] + new_tokens
        return time.perf_counter() - t0

    return run


def _torch_default_threads() -> int:
    import torch

    return torch.get_num_threads()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a model.ModelConfig preset (accelerator)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="greedy,sampled", help="comma list: greedy, sampled")
    parser.add_argument("--bandwidth_gbs", type=float, default=3350.0, help="H100 SXM: 3350")
    parser.add_argument("--no_hf", action="store_true", help="skip transformers (no preset)")
    args = parser.parse_args()

    if args.preset:
        cfg = model.ModelConfig.preset(
            args.preset, param_dtype="bfloat16", compute_dtype="bfloat16"
        )
    else:
        cfg = cpu_config()
    init = jax.jit(model.init_params, static_argnames="cfg")
    params = jax.block_until_ready(init(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    prompts = rng.integers(1, cfg.vocab_size, (B, P)).tolist()
    slots = sampler.bucket(P) + sampler.bucket(N)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    kv_bytes = sampler.cache_bytes(cfg, B, slots)
    print(
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{args.preset or 'qwen3-shaped CPU model'}: {model.count_params(params) / 1e6:.1f}M "
        f"params, {cfg.compute_dtype}; batch {B}, prompt {P}, {N} new tokens; "
        f"params {param_bytes / GB:.3f} GB, KV cache {kv_bytes / GB:.3f} GB ({slots} slots)"
    )
    run_hf = not args.preset and not args.no_hf
    # torch's default (one thread per core) stalls badly when other processes share the cores,
    # so transformers is timed with that and with a single thread; the fairer figure is the best.
    torch_threads = sorted({1, _torch_default_threads()} if run_hf else {1}, reverse=True)
    for mode in args.modes.split(","):
        temperature = {"greedy": 0.0, "sampled": 1.0}[mode]
        ours = s2d_runner(cfg, params, prompts, N, temperature)
        first = ours()[2]  # compiles
        theirs = hf_runner(cfg, params, prompts, N, temperature) if run_hf else None
        ours_runs, hf_runs = [], {n: [] for n in torch_threads}
        for _ in range(args.reps):  # interleaved, so both see the same machine load
            ours_runs.append(ours())
            for n in hf_runs if theirs else ():
                hf_runs[n].append(theirs(n))
        prefill_s, decode_s, total_s = min(ours_runs, key=lambda r: r[2])
        tps = B * N / total_s
        step_s = decode_s / N
        read_gbs = (param_bytes + kv_bytes) / step_s / GB
        line = (
            f"{mode:>7}: s2d_jax {tps:8.1f} tok/s (prefill {prefill_s * 1e3:.0f} ms, "
            f"{step_s * 1e3:.2f} ms/step, compile {first - total_s:.1f} s excluded); "
            f"params+KV read {read_gbs:.1f} GB/s"
        )
        if args.preset:
            line += f" = {read_gbs / args.bandwidth_gbs:.1%} of {args.bandwidth_gbs:.0f} GB/s"
        print(line, flush=True)
        for n, runs in hf_runs.items() if theirs else ():
            hf_tps = B * N / min(runs)
            print(
                f"{'':>9}transformers {hf_tps:8.1f} tok/s with {n} torch thread(s); "
                f"s2d_jax / transformers = {tps / hf_tps:.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
