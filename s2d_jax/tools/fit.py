"""Will it fit? Per-device memory of the train step and the sampler, compiled ahead of time.

    python -m s2d_jax.tools.fit --preset qwen3_8b --devices 8 --mesh 1,8,1 --batch 8 --seq 4096
    python -m s2d_jax.tools.fit --preset qwen3_1.7b --devices 1 --mesh 1,1,1 --hbm_gib 80 --json f.json

Nothing is allocated: the model, the train state (params + AdamW moments) and the batch are
abstract (`jax.ShapeDtypeStruct` with their shardings), and each function is lowered and
compiled (`jax.jit(...).lower(...).compile()`) for `--devices` fake CPU devices arranged as
`--mesh data,fsdp,tensor`; `compiled.memory_analysis()` then gives the bytes of one device:
arguments, outputs, the part of them aliased (donated train or decode state), temporaries, and
total = arguments + outputs - aliased + temporaries.

The programs: the train step (`steps.jit_train_step`, TRAIN_RULES, state donated: float32
master weights and AdamW moments, compute in `--dtype`; `--objective` picks the loss, the
distillation ones also take `--teacher_preset`'s frozen params, stored in `--dtype`, and run the
teacher's forward inside the step). It accumulates `--batch` rows in `--micro_batches` parts
(a scan), so its temporaries are one micro-batch's. `--attention_block` sets
`ModelConfig.attention_block` for every training and scoring forward (0: the [T, T] scores are
materialised; > 0: `model/attention.py`'s blocked attention). With `--score_batch`, the frozen
scoring pass (`steps.score_tokens`: a GRPO stage's reference log-probs, in `--micro_batches`
parts as `batches.score` runs it) on params in `--dtype`. Then the sampler's prefill and its decode loop (reported as
`decode_step`: every step runs in the same donated buffers), the very jitted functions
`sampler.generate(engine="static")` runs (`phases.prefill_jit`, `phases.decode_loop_jit`), on
per-layer weights under SAMPLE_RULES as the pipeline samples: `--sample_batch` rows of `--seq`
cache slots. The default, continuous engine holds at most its `kv_budget_bytes` of KV cache per
device whatever the rows (rollout/engine.py), so for it the static figure of a batch that fits
the budget is an upper bound. A stage that trains while it samples (GRPO, on-policy KL) also
holds its train state: add the train step's arguments. The sampler reads its own copy of the
weights in `--dtype`. `--skip_train` / `--skip_sampler` leave a program out.

Estimates for TPU/GPU: the CPU compiler makes its own fusion, layout and scheduling choices, so
temporaries are approximate (about +-30%); arguments and outputs (params, optimizer state, KV
cache) are exact. For bfloat16, temporaries are the smaller of a bfloat16 and a float32 compile's
(`fit_report`). Compiling for a TPU/GPU topology needs that platform's plugin (libtpu / jax-cuda).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from s2d_jax.tools.fit_programs import (
    sampler_memory,
    score_memory,
    total_bytes,
    train_step_memory,
)

GIB = 2**30


def _use_fake_cpu_devices(n: int) -> None:
    """Ask for `n` CPU devices; must run before jax starts its backend (so before importing it)."""
    if "jax" in sys.modules:
        import jax

        if jax.device_count() != n:
            raise RuntimeError(
                f"jax is already running with {jax.device_count()} devices; --devices {n} needs "
                "a fresh process (run `python -m s2d_jax.tools.fit ...`)"
            )
        return
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"


def _step_config(args):
    """The step the flags describe. The optimizer's hyperparameters do not change its memory
    (the state's dtypes do), so they are fixed here."""
    from s2d_jax.learn import steps
    from s2d_jax.tools import fixed_records

    opt = fixed_records.optimizer_config(1e-6, weight_decay=0.1)
    grpo = fixed_records.grpo_config(args.kl_coef)
    step_cfg = steps.StepConfig(
        args.objective,
        opt,
        micro_batches=args.micro_batches,
        chunk_size=args.chunk_size,
        vocab_chunk=args.vocab_chunk,
        grpo=grpo,
    )
    return step_cfg


def _compile_all(args, dtype: str, mesh) -> dict:
    """{program: per-device bytes} for the train step, the scoring pass and the sampler (those
    the flags ask for)."""
    from s2d_jax.learn import objectives
    from s2d_jax.model import decoder

    layers = {"n_layers": args.layers} if args.layers else {}
    attention = {"attention_block": args.attention_block}
    # As the pipeline holds them: the trained model's float32 masters (and AdamW state), compute
    # in `dtype`; a frozen teacher stored in `dtype`.
    model_cfg = decoder.ModelConfig.preset(
        args.preset, param_dtype="float32", compute_dtype=dtype, **layers, **attention
    )
    teacher_cfg = None
    if objectives.OBJECTIVES[args.objective].needs_teacher:
        if not args.teacher_preset:
            raise SystemExit(f"--objective {args.objective} needs --teacher_preset")
        teacher_cfg = decoder.ModelConfig.preset(
            args.teacher_preset, param_dtype=dtype, compute_dtype=dtype, **attention
        )
    out = {}
    if not args.skip_train:
        out["train_step"] = train_step_memory(
            model_cfg,
            mesh,
            batch=args.batch,
            seq=args.seq,
            step_cfg=_step_config(args),
            teacher_cfg=teacher_cfg,
        )
    if args.score_batch:
        out["score"] = score_memory(
            model_cfg,
            mesh,
            batch=args.score_batch,
            seq=args.seq,
            chunk_size=args.chunk_size,
            micro_batches=args.micro_batches,
        )
    if not args.skip_sampler:
        batch = args.sample_batch or args.batch
        out |= sampler_memory(
            model_cfg, mesh, batch=batch, prompt_len=args.prompt_len, cache_len=args.seq
        )
    return out


def fit_report(args: argparse.Namespace) -> dict:
    """Compile everything for the parsed arguments (jax already set up); returns the figures.

    With bfloat16 the programs are compiled twice. Arguments and outputs come from the bfloat16
    compile (exact). For temporaries each compile over-estimates an accelerator in its own way:
    the CPU compiler has no bfloat16 matmuls and keeps a float32 copy of the bfloat16 weights
    (hoisted out of the layer loop: ~2x the weights' bytes, never allocated on TPU/GPU), while
    the float32 compile has float32 activations and gradients (>= their bfloat16 sizes). The
    smaller of the two is reported as `temps` (an upper bound either way), the bfloat16 figure
    also as `temps_cpu_bf16` and the float32 one as `temps_f32`.
    """
    import jax

    from s2d_jax.distributed import sharding as sh
    from s2d_jax.model import decoder

    mesh = sh.make_mesh(sh.MeshConfig(*args.mesh), jax.devices()[: args.devices])
    layers = {"n_layers": args.layers} if args.layers else {}
    report = {
        "preset": args.preset,
        "params": decoder.count_params(
            decoder.abstract_params(decoder.ModelConfig.preset(args.preset, **layers))
        ),
        "dtype": args.dtype,
        "mesh": dict(mesh.shape),
        "devices": f"{args.devices} fake CPU devices",
        "hbm_gib": args.hbm_gib,
    }
    programs = _compile_all(args, args.dtype, mesh)
    if args.dtype == "bfloat16":
        for name, f32 in _compile_all(args, "float32", mesh).items():
            m = programs[name]
            m["temps_cpu_bf16"], m["temps_f32"] = m["temps"], f32["temps"]
            m["temps"] = min(m["temps_cpu_bf16"], m["temps_f32"])
            m["total"] = total_bytes(m)
            m["compile_s"] += f32["compile_s"]
    return report | programs


def format_report(report: dict, args: argparse.Namespace) -> str:
    budget = report["hbm_gib"] * GIB
    mesh = ", ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"{report['preset']}: {report['params'] / 1e6:,.1f} M params in {report['dtype']}, "
        f"mesh ({mesh}) on {report['devices']}; per-device GiB, budget {report['hbm_gib']}",
    ]
    rows = args.batch // args.micro_batches
    titles = {
        "train_step": f"train step ({args.objective}, batch {args.batch} x {args.seq}, "
        f"{args.micro_batches} micro-batches of {rows})",
        "score": f"frozen scoring forward (batch {args.score_batch} x {args.seq}, "
        f"{args.micro_batches} micro-batches)",
        "prefill": f"sampler prefill (batch {args.sample_batch or args.batch}, "
        f"prompt {args.prompt_len}, cache {args.seq})",
        "decode_step": "sampler decode loop (the buffers of one step)",
    }
    for key, title in titles.items():
        if key in report:
            m = report[key]
            verdict = "fits" if m["total"] <= budget else "DOES NOT FIT"
            lines.append(
                f"  {title:55s} args {m['arguments'] / GIB:7.2f}  out {m['outputs'] / GIB:7.2f}  "
                f"aliased {m['aliased'] / GIB:7.2f}  temps {m['temps'] / GIB:7.2f}  "
                f"total {m['total'] / GIB:7.2f}  {verdict}"
            )
    if report["dtype"] == "bfloat16":
        lines.append(
            "  (temps: the smaller of a bfloat16 and a float32 CPU compile; see fit_report)"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", required=True, help="decoder.ModelConfig preset, e.g. qwen3_8b")
    parser.add_argument("--devices", type=int, default=8, help="devices of the target mesh")
    parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes (-1: the rest)")
    parser.add_argument("--batch", type=int, default=8, help="train rows per step (global)")
    parser.add_argument("--seq", type=int, default=4096, help="train tokens per row = cache slots")
    parser.add_argument("--sample_batch", type=int, default=0, help="sampler rows (0: --batch)")
    parser.add_argument("--prompt_len", type=int, default=512, help="sampler prompt slots")
    parser.add_argument(
        "--objective", default="grpo", help="a key of learn/objectives.py OBJECTIVES"
    )
    parser.add_argument("--teacher_preset", default="", help="for distillation objectives")
    parser.add_argument(
        "--micro_batches", type=int, default=1, help="the step accumulates --batch in this many"
    )
    parser.add_argument(
        "--attention_block", type=int, default=0, help="ModelConfig.attention_block (0: dense)"
    )
    parser.add_argument(
        "--score_batch", type=int, default=0, help="rows of the frozen scoring pass (0: none)"
    )
    parser.add_argument("--kl_coef", type=float, default=0.0, help=">0 adds ref log-probs")
    parser.add_argument("--chunk_size", type=int, default=512, help="as a stage's chunk_size")
    parser.add_argument("--vocab_chunk", type=int, default=8192, help="as a stage's vocab_chunk")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--layers", type=int, default=0, help="override n_layers (0: preset's)")
    parser.add_argument("--hbm_gib", type=float, default=80.0, help="per-device memory budget")
    parser.add_argument("--platform", default="cpu", choices=("cpu",), help="compile target")
    parser.add_argument("--skip_sampler", action="store_true")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)
    try:
        args.mesh = tuple(int(x) for x in args.mesh.split(","))
        assert len(args.mesh) == 3
    except (ValueError, AssertionError):
        parser.error(f"--mesh must be three comma-separated ints data,fsdp,tensor, got {args.mesh}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    _use_fake_cpu_devices(args.devices)
    report = fit_report(args)
    print(format_report(report, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
