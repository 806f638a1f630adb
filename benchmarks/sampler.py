"""Rollout throughput: s2d_jax's sampler beside transformers `generate` on the same weights.

Default (CPU, float32): a Qwen3-shaped random model of ~30.5M parameters (d_model 512, 6 layers,
8 heads / 4 kv heads of 64, mlp 1024, vocab 32000, tied embeddings), batch 16, prompt 64, 128 new
tokens, no EOS (so both sides generate exactly 128 tokens), greedy and sampled (temperature 1).
s2d_jax's compile time is printed apart and excluded; each figure is the best of --reps runs,
the two libraries' runs interleaved so that both see the same machine load. s2d_jax's time is
that of all of the static engine's generate(engine="static"): unstacking the layer weights,
prefill, decode loop, rollout (benchmarks/rollout_engine.py compares it with the continuous
engine on RL-like lengths).
Target: >= 5x transformers.

    .venv/bin/python benchmarks/sampler.py                          # CPU, ~3-5 min on 2 cores
    .venv/bin/python benchmarks/sampler.py --hf_path ~/.cache/s2d_jax/smollm2-135m-instruct \
        --batch 8 --prompt_len 64 --new_tokens 64                   # a real checkpoint, float32
    python benchmarks/sampler.py --preset qwen3_1.7b --batch 64 --prompt_len 256 --new_tokens 512

--hf_path loads a Hugging Face checkpoint (`hf_io.load_hf`, float32) for both libraries instead
of random weights. With --preset (an accelerator; bfloat16, random weights, no transformers run)
it also prints the fraction of the memory-bandwidth bound: (bytes of params + KV cache read per
decode step) / step time / --bandwidth_gbs. A decode step's attention reads every allocated cache
slot (see `cached_forward.forward_cached` for why), so the whole cache counts; the fraction for
the bytes a step needs at the least (params + the K/V of the filled slots, averaged over the
steps) is printed beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from s2d_jax.model import decoder, hf_io
from s2d_jax.rollout import sampler

GB = 1e9


def s2d_runner(cfg, params, prompts, new_tokens, temperature):
    """A function running sampler.generate once; returns its seconds (prefill, decode, total)."""
    settings = sampler.make_settings(
        cfg, temperature=temperature, top_p=1.0, top_k=0, eos_id=(), pad_id=0
    )

    def run():
        # The same phases as generate(), timed one by one.
        t0 = time.perf_counter()
        layer_params = sampler.sampling_weights(cfg, params)
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


def hf_runner(cfg, params, prompts, new_tokens, temperature, hf_path=None):
    """A function(threads) running transformers `generate` (torch, float32, CPU) once; seconds.

    The checkpoint at hf_path, or (None) `params` saved to a temporary HF directory.
    """
    import torch
    import transformers

    def load(path):
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    if hf_path:
        hf = load(hf_path)
    else:
        with tempfile.TemporaryDirectory() as path:
            hf_io.save_hf(path, cfg, params)
            hf = load(path)
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


def step_bytes(cfg, params, batch: int, prompt_len: int, new_tokens: int) -> tuple[int, int, int]:
    """(param bytes, K/V bytes of all cache slots, K/V bytes of the filled slots on average over
    the new_tokens steps) of a decode step. The attention reads all slots."""
    P, gen_bucket = sampler.bucket(prompt_len), sampler.bucket(new_tokens)
    per_slot = sampler.cache_bytes(cfg, batch, 1)
    # Step i feeds slot P - 1 + i: P + i slots are filled (the prompt bucket's padding included).
    filled = sum(P + i for i in range(new_tokens)) / new_tokens
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    return param_bytes, per_slot * (P + gen_bucket), int(per_slot * filled)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a decoder.ModelConfig preset (accelerator)")
    parser.add_argument("--hf_path", default=None, help="an HF checkpoint directory (float32)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="greedy,sampled", help="comma list: greedy, sampled")
    parser.add_argument("--bandwidth_gbs", type=float, default=3350.0, help="H100 SXM: 3350")
    parser.add_argument("--no_hf", action="store_true", help="skip transformers (no preset)")
    args = parser.parse_args()
    if args.preset and args.hf_path:
        parser.error("--preset (random bfloat16 weights) and --hf_path exclude each other")

    if args.hf_path:
        cfg, params = hf_io.load_hf(args.hf_path)
        name = f"{args.hf_path} ({cfg.family})"
    else:
        if args.preset:
            cfg = decoder.ModelConfig.preset(
                args.preset, param_dtype="bfloat16", compute_dtype="bfloat16"
            )
        else:
            cfg = decoder.ModelConfig.preset("bench_30m")
        init = jax.jit(decoder.init_params, static_argnames="cfg")
        params = jax.block_until_ready(init(cfg, jax.random.key(0)))
        name = args.preset or "qwen3-shaped CPU model"
    rng = np.random.default_rng(0)
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    prompts = rng.integers(1, cfg.vocab_size, (B, P)).tolist()
    slots = sampler.bucket(P) + sampler.bucket(N)
    param_bytes, kv_bytes, filled_kv = step_bytes(cfg, params, B, P, N)
    print(
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {name}: "
        f"{decoder.count_params(params) / 1e6:.1f}M params, {cfg.compute_dtype}; batch {B}, "
        f"prompt {P}, {N} new tokens; params {param_bytes / GB:.3f} GB, KV cache "
        f"{kv_bytes / GB:.3f} GB ({slots} slots, {filled_kv / GB:.3f} GB filled on average)"
    )
    run_hf = not args.preset and not args.no_hf
    # torch's default (one thread per core) stalls badly when other processes share the cores,
    # so transformers is timed with that and with a single thread; the fairer figure is the best.
    torch_threads = sorted({1, _torch_default_threads()} if run_hf else {1}, reverse=True)
    for mode in args.modes.split(","):
        temperature = {"greedy": 0.0, "sampled": 1.0}[mode]
        ours = s2d_runner(cfg, params, prompts, N, temperature)
        first = ours()[2]  # compiles
        theirs = None
        if run_hf:
            theirs = hf_runner(cfg, params, prompts, N, temperature, args.hf_path)
        ours_runs, hf_runs = [], {n: [] for n in torch_threads}
        for _ in range(args.reps):  # interleaved, so both see the same machine load
            ours_runs.append(ours())
            for n in hf_runs if theirs else ():
                hf_runs[n].append(theirs(n))
        prefill_s, decode_s, total_s = min(ours_runs, key=lambda r: r[2])
        tps = B * N / total_s
        step_s = decode_s / N
        read_gbs = (param_bytes + kv_bytes) / step_s / GB
        need_gbs = (param_bytes + filled_kv) / step_s / GB
        line = (
            f"{mode:>7}: s2d_jax {tps:8.1f} tok/s (prefill {prefill_s * 1e3:.0f} ms, "
            f"{step_s * 1e3:.2f} ms/step, compile {first - total_s:.1f} s excluded); "
            f"params+KV read {read_gbs:.1f} GB/s"
        )
        if args.preset:
            bw = args.bandwidth_gbs
            line += (
                f" = {read_gbs / bw:.1%} of {bw:.0f} GB/s (params+filled KV: {need_gbs / bw:.1%})"
            )
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
