"""Rollout engines on RL-like lengths: continuous vs static vs transformers, tokens/s, peak RSS.

Workload: a random Qwen3-shaped model (preset bench_30m by default, float32, CPU), --prompts
random prompts of --prompt_len tokens, --samples samples each, temperature 1. A set E of
--eos_count token ids counts as EOS: a random model's next-token distribution is close to
uniform, so a row ends with probability about |E| / V per step and lengths are roughly
geometric with mean V / |E|, cut at max_new_tokens, as RL rollouts are (most short, a few long).
--workload sets these together: "small" (8 prompts x 4 samples, |E| = 250: mean ~128, caps 256
and 4096), "cost" (the 64-row case issue 15 measured the cost against the allocation on: 16
prompts x 4 samples, |E| = 500: mean ~64, caps 256 and 4096) or "issue" (issue 15's engine
comparison: 32 prompts x 8 samples = 256 rows, |E| = 320: mean ~100, cap 512); an explicit flag
overrides its field.

For each --max_new_tokens it times, in the same run: the continuous engine (`generate`, the
default), the static engine (`engine="static"`), transformers' static `generate` and its continuous
batching `generate_batch` (paged KV cache, each prompt's samples forked from it by
num_return_sequences) on the same weights (`hf_io.save_hf`; eos_token_id = E; both skipped with
--no_hf or when transformers is missing). s2d_jax engines run once first (they compile; that run's
excess over the timed one is printed), transformers warms up on two short prompts; then --reps
timed runs (best; 0: the first run alone, compiles included). generate_batch gets a paged cache
sized to the workload and held to the continuous engine's --kv_budget_gb (its default sizes it to
most of the host's memory and, on CPU, spends seconds per call allocating it and its attention-mask
buffers) and no warm-up (it only pre-captures CUDA graphs). Generated tokens = the rows' lengths
summed, EOS included; transformers' are counted the same way from its output. transformers runs
with --torch_threads (default 1): torch's default, a thread per core, stalls badly when other
processes share the cores (benchmarks/sampler.py times both). After each engine the process's peak
resident memory over that engine's runs is printed (Linux: the peak is reset before each,
/proc/self/clear_refs), with the load average (other processes sharing the cores slow every
engine).

At the end a table: tok/s per engine and max_new_tokens, the continuous engine's ratio to
transformers' `generate` (issue 15's target: >= 4x) and to `generate_batch` (>= 2x), and per
engine the ratio of its tok/s at the smallest and the largest max_new_tokens (target <= 1.5x:
cost follows the tokens generated, not the allocation).

    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --workload small --reps 2
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --workload cost --reps 2 \
        --engines continuous,static
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --workload issue
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --sweep_slots 1,2,4,8,16,32,64
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --engines continuous \
        --max_new_tokens 4096 --kv_budget_gb 0.4 --prompts 16   # then --prompts 32: same RSS

On an accelerator: --dtype bfloat16, --decode_attention pallas_gpu (the continuous engine's
per-row-length kernel) and --bandwidth_gbs (the HBM's): each continuous run then also prints the
fraction of the bound counting only filled K/V (`filled_bound_seconds`: each token reads its row's
filled slots, each decode step of the pool the weights once; prefill not counted).
benchmarks/gpu_report.sh runs Qwen3-1.7B so.

--sweep_slots instead prints the time of one decode step of the continuous engine's window per
pool size (the figure behind engine.MIN_COMPACT_SLOTS).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import jax
import numpy as np

from s2d_jax.model import cached_forward, decoder, hf_io
from s2d_jax.rollout import engine, sampler, slots
from s2d_jax.rollout.inputs import cache_bytes


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    """The peak resident set since the last reset (VmHWM), else the process's lifetime peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def filled_bound_seconds(cfg, weight_bytes, prompt_len, lengths_R, pool, bandwidth_gbs):
    """Seconds a decode reading only what it must takes at `bandwidth_gbs`: every generated token
    reads its row's filled K/V (prompt + the tokens before it), and each decode step of a `pool`
    of rows reads the weights once (at least total tokens / pool steps). Prefill not counted."""
    lengths_R = np.asarray(lengths_R, np.int64)
    filled_slots = int((prompt_len * lengths_R + lengths_R * (lengths_R - 1) // 2).sum())
    steps = -(-int(lengths_R.sum()) // pool)
    kv_bytes = cache_bytes(cfg, 1, 1) * filled_slots
    return (kv_bytes + steps * weight_bytes) / (bandwidth_gbs * 1e9)


def s2d_run(cfg, weights, prompts, args, new_tokens, eos, engine_name, pool=0):
    """A function running generate once: (seconds, generated tokens[, seconds of the filled-KV
    bandwidth bound, with --bandwidth_gbs and a `pool`])."""
    kw = dict(
        max_new_tokens=new_tokens, temperature=1.0, eos_id=eos, pad_id=0, seed=0,
        num_samples=args.samples, engine=engine_name,
        kv_budget_bytes=int(args.kv_budget_gb * 2**30),
    )  # fmt: skip
    if engine_name == "continuous":
        kw["decode_attention"] = args.decode_attention
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(weights))

    def run():
        t0 = time.perf_counter()
        out = jax.block_until_ready(sampler.generate(cfg, weights, prompts, **kw))
        seconds, lengths_R = time.perf_counter() - t0, np.asarray(out.lengths)
        if not (args.bandwidth_gbs and pool):
            return seconds, int(lengths_R.sum())
        bound = filled_bound_seconds(
            cfg, weight_bytes, args.prompt_len, lengths_R, pool, args.bandwidth_gbs
        )
        return seconds, int(lengths_R.sum()), bound

    return run


def hf_model(cfg, params):
    """transformers' Qwen3 on the same weights, float32, eval mode."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as path:
        hf_io.save_hf(path, cfg, params)
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_run(hf, prompts, args, new_tokens, eos):
    """A function running transformers' generate once (sampling, temperature 1): (seconds,
    generated tokens up to and including each row's first EOS)."""
    import torch

    ids = torch.tensor(np.repeat(np.asarray(prompts), args.samples, axis=0))
    kw = dict(
        attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=list(eos),
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
    )  # fmt: skip

    def run():
        torch.set_num_threads(args.torch_threads)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(ids, **kw).numpy()[:, ids.shape[1] :]
        seconds = time.perf_counter() - t0
        is_eos = np.isin(out, eos)
        ended = is_eos.any(axis=1)
        lengths = np.where(ended, is_eos.argmax(axis=1) + 1, out.shape[1])
        return seconds, int(lengths.sum())

    return run


def hf_batch_run(cfg, hf, prompts, args, new_tokens, eos):
    """A function running transformers' continuous batching (`generate_batch`) once: (seconds,
    generated tokens, EOS included: a request's output stops at its first EOS).

    Its paged cache holds the workload's rows whole (pages of `page_size` tokens), at most the
    continuous engine's KV budget."""
    import torch
    from transformers import ContinuousBatchingConfig, GenerationConfig

    rows = len(prompts) * args.samples
    page = ContinuousBatchingConfig().page_size
    pages_per_row = -(-(max(len(p) for p in prompts) + new_tokens) // page)
    budget_pages = int(args.kv_budget_gb * 2**30) // cache_bytes(cfg, 1, page)
    generation = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
        eos_token_id=list(eos), pad_token_id=0, num_return_sequences=args.samples,
    )  # fmt: skip

    def run():
        torch.set_num_threads(args.torch_threads)
        batching = ContinuousBatchingConfig(
            seed=0, num_blocks=min(rows * pages_per_row, budget_pages),
            max_batch_tokens=args.hf_batch_tokens,
        )  # fmt: skip
        t0 = time.perf_counter()
        out = hf.generate_batch(inputs=prompts, generation_config=generation,
                                continuous_batching_config=batching, warmup=False)  # fmt: skip
        seconds = time.perf_counter() - t0
        if len(out) != rows or any(o.error is not None for o in out.values()):
            raise RuntimeError(f"generate_batch returned {len(out)} of {rows} rows, or errors")
        return seconds, sum(len(o.generated_tokens) for o in out.values())

    return run


def timed(name, run, reps, warmup=None):
    """Run `warmup` (default: `run` itself; s2d_jax compiles), then `reps` timed runs; print
    the best, return its tok/s. reps 0: only `run` once, its compiles included (a long call that
    a time limit cannot hold twice)."""
    reset_peak_rss()
    if reps == 0:
        best = run()
        note = ", compiles included"
    else:
        first = (warmup or run)()[0]
        best = min(run() for _ in range(reps))
        note = f", first run {first - best[0]:+.1f} s more, excluded" if warmup is None else ""
    seconds, tokens = best[:2]
    if len(best) > 2:
        note += f"; {best[2] / seconds:.1%} of the filled-KV bandwidth bound ({best[2]:.1f} s)"
    print(
        f"  {name:<14} {tokens / seconds:8.1f} tok/s ({tokens} tokens in {seconds:6.1f} s"
        f"{note}); peak RSS {peak_rss_gb():.2f} GB; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return tokens / seconds


def sweep_slots(cfg, weights, sizes, prompt_len, read_length):
    """ms per decode step of slots.window_jit per pool size, every slot running."""
    settings = sampler.make_settings(cfg, temperature=1.0, top_p=1.0, top_k=0, eos_id=(), pad_id=0)
    split = dict(mesh=None, data_axis=("data",))
    for B in sizes:
        ones_B, rows_B = np.ones(B, np.int32), np.arange(B, dtype=np.int32)
        pool = slots.new_pool_jit(np.uint32(0), 10**6, cfg=cfg, slots=B, length=read_length,
                                  **split)  # fmt: skip
        pool = slots.admit_jit(pool, 0 * rows_B, rows_B, rows_B, prompt_len * ones_B, ones_B,
                               prompt_width=prompt_len, **split)  # fmt: skip
        pool = pool.replace(settings=settings)
        window = dict(cfg=cfg, read_length=read_length, steps=16, kernel="reference")
        pool, tokens, _ = jax.block_until_ready(slots.window_jit(pool, weights, **window))
        t0 = time.perf_counter()
        pool, tokens, _ = jax.block_until_ready(slots.window_jit(pool, weights, **window))
        step_s = (time.perf_counter() - t0) / 16
        print(f"  pool {B:4d}: {step_s * 1e3:7.2f} ms/step, {B / step_s:8.0f} tok/s", flush=True)


# Workload presets: (prompts, samples, |E|, max_new_tokens); an explicit flag overrides a field.
WORKLOADS = {
    "small": (8, 4, 250, "256,4096"),
    "cost": (16, 4, 500, "256,4096"),  # issue 15's cost-vs-allocation case: 64 rows, mean ~64
    "issue": (32, 8, 320, "512"),  # issue 15: 256 rows, mean length ~100, cap 512
}
ENGINES = ("continuous", "static", "transformers", "generate_batch")
TARGETS = (("transformers", 4.0), ("generate_batch", 2.0))  # continuous / engine >= target
LENGTH_TARGET = 1.5  # tok/s at the smallest max_new_tokens / at the largest <= this


def table(results, caps):
    """tok/s per engine and cap; the continuous engine's ratios against the targets."""
    print(f"\n  {'tok/s':<14}" + "".join(f"{f'N={N}':>10}" for N in caps))
    for name, by_cap in results.items():
        print(f"  {name:<14}" + "".join(f"{by_cap.get(N, float('nan')):10.1f}" for N in caps))
    ours = results.get("continuous", {})
    for name, target in TARGETS:
        for N in caps:
            if N in ours and N in results.get(name, {}):
                ratio = ours[N] / results[name][N]
                verdict = "met" if ratio >= target else "NOT met"
                print(
                    f"  continuous / {name} at N={N}: {ratio:.2f}x (target >= {target}x: {verdict})"
                )
    if len(caps) > 1:
        for name, by_cap in results.items():
            if caps[0] in by_cap and caps[-1] in by_cap:
                ratio = by_cap[caps[0]] / by_cap[caps[-1]]
                verdict = "met" if ratio <= LENGTH_TARGET else "NOT met"
                print(f"  {name} tok/s at N={caps[0]} / at N={caps[-1]}: {ratio:.2f}x "
                      f"(target <= {LENGTH_TARGET}x: {verdict})")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench_30m")
    parser.add_argument("--workload", default="small", choices=sorted(WORKLOADS))
    parser.add_argument("--prompts", type=int, help="default: the workload's")
    parser.add_argument("--samples", type=int, help="default: the workload's")
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--max_new_tokens", help="comma list; default: the workload's")
    parser.add_argument("--eos_count", type=int, help="|E|: mean length ~ V / |E|")
    parser.add_argument("--kv_budget_gb", type=float, default=2.0,
                        help="the continuous engine's; generate_batch's cache is held to it")  # fmt: skip
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list")
    parser.add_argument("--no_hf", action="store_true", help="skip both transformers engines")
    parser.add_argument("--torch_threads", type=int, default=1, help="see the module docstring")
    parser.add_argument("--hf_batch_tokens", type=int, default=1024,
                        help="generate_batch's max_batch_tokens")  # fmt: skip
    parser.add_argument("--sweep_slots", default="", help="comma list of pool sizes")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="weights and compute (bfloat16: the accelerator runs)")  # fmt: skip
    parser.add_argument("--decode_attention", default="reference",
                        help="the continuous engine's (pallas_gpu on a GPU, pallas_tpu on a TPU)")  # fmt: skip
    parser.add_argument("--bandwidth_gbs", type=float, default=0.0,
                        help="HBM GB/s: print the continuous engine's fraction of the filled-KV "
                        "bound (H200: 4800); 0: off")  # fmt: skip
    args = parser.parse_args()
    for field, value in zip(("prompts", "samples", "eos_count", "max_new_tokens"),
                            WORKLOADS[args.workload], strict=True):  # fmt: skip
        if getattr(args, field) is None:
            setattr(args, field, value)
    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engines {sorted(unknown)}; choose from {ENGINES}")

    cfg = decoder.ModelConfig.preset(args.preset, param_dtype=args.dtype, compute_dtype=args.dtype)
    params = jax.jit(decoder.init_params, static_argnames="cfg")(cfg, jax.random.key(0))
    weights = cached_forward.unstack_layers(params, dtype=cfg.compute_dtype)
    print(
        f"{jax.default_backend()}, {args.preset}: {decoder.count_params(params) / 1e6:.1f}M "
        f"params, {cfg.compute_dtype}; {args.prompts} prompts x {args.samples} samples, prompt "
        f"{args.prompt_len}, |E| = {args.eos_count} of V = {cfg.vocab_size}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    if args.sweep_slots:
        sizes = [int(n) for n in args.sweep_slots.split(",")]
        return sweep_slots(cfg, weights, sizes, args.prompt_len, 2 * args.prompt_len)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()
    eos = tuple(int(e) for e in rng.choice(np.arange(1, cfg.vocab_size), args.eos_count, False))
    hf_engines = [e for e in ("transformers", "generate_batch") if e in engines]
    hf = None
    if hf_engines and not args.no_hf:
        try:
            hf = hf_model(cfg, params)
        except ImportError:
            print("transformers or torch missing: its engines skipped")
    caps = [int(n) for n in args.max_new_tokens.split(",")]
    results = {name: {} for name in engines}
    for N in caps:
        length = engine.cache_length(prompts, N, args.decode_attention)
        rows = args.prompts * args.samples
        pool = engine.pool_slots(cfg, rows, length, int(args.kv_budget_gb * 2**30))
        print(f"max_new_tokens {N}: continuous pool {pool} slots x {length} cache slots; "
              f"static batch {rows} x {sampler.bucket(args.prompt_len) + sampler.bucket(N)}")  # fmt: skip
        for name in ("continuous", "static"):
            if name in engines:
                run = s2d_run(
                    cfg, weights, prompts, args, N, eos, name, pool if name == "continuous" else 0
                )
                results[name][N] = timed(name, run, args.reps)
        if hf is None:
            continue
        short = [p[:8] for p in prompts[:2]]
        if "transformers" in engines:
            run, warm = (hf_run(hf, p, args, n, eos) for p, n in ((prompts, N), (short, 8)))
            results["transformers"][N] = timed("transformers", run, args.reps, warm)
        if "generate_batch" in engines:
            run, warm = (
                hf_batch_run(cfg, hf, p, args, n, eos) for p, n in ((prompts, N), (short, 8))
            )
            results["generate_batch"][N] = timed("generate_batch", run, args.reps, warm)
    table({name: by_cap for name, by_cap in results.items() if by_cap}, caps)


if __name__ == "__main__":
    main()
