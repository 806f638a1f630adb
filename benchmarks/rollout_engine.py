"""Rollout engines on RL-like lengths: continuous vs static vs transformers, tokens/s, peak RSS.

Workload: a random Qwen3-shaped model (preset bench_30m by default, float32, CPU), --prompts
random prompts of --prompt_len tokens, --samples samples each, temperature 1. A set E of
--eos_count token ids counts as EOS: a random model's next-token distribution is close to
uniform, so a row ends with probability about |E| / V per step and lengths are roughly
geometric with mean V / |E|, cut at max_new_tokens, as RL rollouts are (most short, a few long).

For each --max_new_tokens (default 256 and 4096: cost should follow the tokens generated, not
the allocation) it times, in the same run: the continuous engine (`generate`, the default), the
static engine (`engine="static"`), and transformers' static `generate` on the same weights
(`hf_io.save_hf`; eos_token_id = E; skipped with --no_hf or when transformers is missing).
Each engine runs once first (s2d_jax compiles; transformers warms up; that run's excess over the
timed one is printed), then --reps timed runs (best). Generated tokens = the rows' lengths summed, EOS
included; transformers' are counted the same way from its output. transformers runs with
--torch_threads (default 1): torch's default, a thread per core, stalls badly when other
processes share the cores (benchmarks/sampler.py times both). After each engine the
process's peak resident memory over that engine's runs is printed (Linux: the peak is reset
before each, /proc/self/clear_refs).

    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --prompts 8 --samples 4
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --sweep_slots 1,2,4,8,16,32,64
    PYTHONPATH=. .venv/bin/python benchmarks/rollout_engine.py --engines continuous \
        --max_new_tokens 4096 --kv_budget_gb 0.4 --prompts 16   # then --prompts 32: same RSS

--sweep_slots instead prints the time of one decode step of the continuous engine's window per
pool size (the figure behind engine.MIN_COMPACT_SLOTS).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import jax
import numpy as np

from s2d_jax.model import cached_forward, decoder, hf_io
from s2d_jax.rollout import engine, sampler, slots


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


def s2d_run(cfg, weights, prompts, args, new_tokens, eos, engine_name):
    """A function running generate once: (seconds, generated tokens)."""
    kw = dict(
        max_new_tokens=new_tokens, temperature=1.0, eos_id=eos, pad_id=0, seed=0,
        num_samples=args.samples, engine=engine_name,
        kv_budget_bytes=int(args.kv_budget_gb * 2**30),
    )  # fmt: skip

    def run():
        t0 = time.perf_counter()
        out = jax.block_until_ready(sampler.generate(cfg, weights, prompts, **kw))
        return time.perf_counter() - t0, int(np.asarray(out.lengths).sum())

    return run


def hf_run(cfg, params, prompts, args, new_tokens, eos):
    """A function running transformers' generate once (sampling, temperature 1): (seconds,
    generated tokens up to and including each row's first EOS)."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as path:
        hf_io.save_hf(path, cfg, params)
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
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


def timed(name, run, reps):
    """Run once (compiles; warms transformers up), then `reps` timed runs; print the best."""
    reset_peak_rss()
    first = run()[0]
    seconds, tokens = min(run() for _ in range(reps))
    compile_note = f", first run {first - seconds:+.1f} s more, excluded"
    print(
        f"  {name:<13} {tokens / seconds:8.1f} tok/s ({tokens} tokens in {seconds:6.1f} s"
        f"{compile_note}); peak RSS {peak_rss_gb():.2f} GB",
        flush=True,
    )


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
        window = dict(cfg=cfg, read_length=read_length, steps=16)
        pool, tokens, _ = jax.block_until_ready(slots.window_jit(pool, weights, **window))
        t0 = time.perf_counter()
        pool, tokens, _ = jax.block_until_ready(slots.window_jit(pool, weights, **window))
        step_s = (time.perf_counter() - t0) / 16
        print(f"  pool {B:4d}: {step_s * 1e3:7.2f} ms/step, {B / step_s:8.0f} tok/s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench_30m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--max_new_tokens", default="256,4096", help="comma list")
    parser.add_argument("--eos_count", type=int, default=250, help="|E|: mean length ~ V / |E|")
    parser.add_argument("--kv_budget_gb", type=float, default=2.0, help="continuous engine's")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--engines", default="continuous,static,transformers", help="comma list")
    parser.add_argument("--no_hf", action="store_true")
    parser.add_argument("--torch_threads", type=int, default=1, help="see the module docstring")
    parser.add_argument("--sweep_slots", default="", help="comma list of pool sizes")
    args = parser.parse_args()

    cfg = decoder.ModelConfig.preset(args.preset)
    params = jax.jit(decoder.init_params, static_argnames="cfg")(cfg, jax.random.key(0))
    weights = cached_forward.unstack_layers(params, dtype=cfg.compute_dtype)
    print(
        f"{jax.default_backend()}, {args.preset}: {decoder.count_params(params) / 1e6:.1f}M "
        f"params, {cfg.compute_dtype}; {args.prompts} prompts x {args.samples} samples, prompt "
        f"{args.prompt_len}, |E| = {args.eos_count} of V = {cfg.vocab_size}",
        flush=True,
    )
    if args.sweep_slots:
        sizes = [int(n) for n in args.sweep_slots.split(",")]
        return sweep_slots(cfg, weights, sizes, args.prompt_len, 2 * args.prompt_len)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()
    eos = tuple(int(e) for e in rng.choice(np.arange(1, cfg.vocab_size), args.eos_count, False))
    run_hf = not args.no_hf
    if run_hf:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            run_hf = False
    for N in (int(n) for n in args.max_new_tokens.split(",")):
        length = engine.cache_length(prompts, N)
        rows = args.prompts * args.samples
        pool = engine.pool_slots(cfg, rows, length, int(args.kv_budget_gb * 2**30))
        print(f"max_new_tokens {N}: continuous pool {pool} slots x {length} cache slots; "
              f"static batch {rows} x {sampler.bucket(args.prompt_len) + sampler.bucket(N)}")  # fmt: skip
        for name in ("continuous", "static"):
            if name in args.engines:
                timed(name, s2d_run(cfg, weights, prompts, args, N, eos, name), args.reps)
        if run_hf and "transformers" in args.engines:
            timed("transformers", hf_run(cfg, params, prompts, args, N, eos), args.reps)


if __name__ == "__main__":
    main()
