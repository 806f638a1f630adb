"""The README's "Will it fit?" and one-GPU tables, re-measured with `s2d_jax.tools.fit`.

    python benchmarks/fit_tables.py                 # every row (about 20 min on 2 CPU cores)
    python benchmarks/fit_tables.py --rows qwen3_8b,1gpu_qwen3_1.7b
    python benchmarks/fit_tables.py --table paper --pairs qwen3_8b,one_gpu   # the paper's shapes
    python benchmarks/fit_tables.py --table paper --pairs one_gpu --only GRPO

Each row is one `python -m s2d_jax.tools.fit` run in its own process (the fake device count is
fixed when jax starts), in the pipeline's precision: float32 master weights and AdamW moments,
bfloat16 compute, a frozen teacher and the sampler's weights in bfloat16. Printed as markdown,
per-device GiB: the train step's total and its arguments (the train state and the batch), the
sampler's prefill / decode totals (as many sampler rows as train rows, 4,096 cache slots).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # configs/ is not an installed package
from configs import paper  # noqa: E402

GIB = 2**30
# name -> (label, fit arguments)
ROWS = {
    "qwen3_1.7b": (
        "Qwen3-1.7B, 8 chips (1, 8, 1), batch 8",
        "--preset qwen3_1.7b --devices 8 --mesh 1,8,1 --batch 8",
    ),
    "qwen3_8b": (
        "Qwen3-8B, 8 chips (1, 8, 1), batch 8",
        "--preset qwen3_8b --devices 8 --mesh 1,8,1 --batch 8",
    ),
    "qwen3_14b": (
        "Qwen3-14B, 8 chips (1, 8, 1), batch 8",
        "--preset qwen3_14b --devices 8 --mesh 1,8,1 --batch 8",
    ),
    "llama3_8b": (
        "Llama-3.1-8B, 8 chips (1, 8, 1), batch 8",
        "--preset llama3_8b --devices 8 --mesh 1,8,1 --batch 8",
    ),
    "llama3_70b": (
        "Llama-3.3-70B, 32 chips (1, 8, 4), batch 32",
        "--preset llama3_70b --devices 32 --mesh 1,8,4 --batch 32",
    ),
    "1gpu_qwen3_0.6b": (
        "1 GPU: Qwen3-0.6B, 1 row",
        "--preset qwen3_0.6b --devices 1 --mesh 1,1,1 --batch 1",
    ),
    "1gpu_qwen3_1.7b": (
        "1 GPU: Qwen3-1.7B, 1 row",
        "--preset qwen3_1.7b --devices 1 --mesh 1,1,1 --batch 1",
    ),
    "1gpu_qwen3_8b": (
        "1 GPU: Qwen3-8B, 1 row",
        "--preset qwen3_8b --devices 1 --mesh 1,1,1 --batch 1",
    ),
    "1gpu_fkl_1.7b_from_8b": (
        "1 GPU: Qwen3-1.7B student, forward KL from a frozen Qwen3-8B, 1 row",
        "--preset qwen3_1.7b --devices 1 --mesh 1,1,1 --batch 1 --objective forward_kl "
        "--teacher_preset qwen3_8b --skip_sampler",
    ),
}
COMMON = "--seq 4096 --prompt_len 512 --dtype bfloat16"  # sampler rows = train rows
# --table paper: each pair's stages at the paper's lengths (prompt 3,072 for GRPO, 2,048 for the
# transfer stages, + 16,384 response tokens) and configs/paper.py's batches (GRPO 8 prompts x 8,
# 2a 512 teacher rollouts, 2b 64 prompts x 8) in its micro-batches (one row a device over data x
# fsdp), blocked attention (512 tokens). The GRPO stages also compile the reference's
# scoring pass, in the step's micro-batches as the pipeline runs it. Sampler left out (the
# continuous engine caps its KV cache).
# pair -> (slice, HBM GiB per chip); the chips, mesh and rows of a micro-batch are
# configs/paper.py's (PAIR_SLICE), the models its PAIRS.
SLICES = {
    "qwen3_8b": ("8x H100 80GB", 80),
    "one_gpu": ("1x H100 80GB", 80),
    "llama": ("TPU v5p-128 (64 chips, 95 GiB)", 95),
}
GRPO_SEQ, TRANSFER_SEQ = 3072 + 16384, 2048 + 16384
PAPER_COMMON = "--dtype bfloat16 --attention_block 512 --skip_sampler"


def paper_rows(pair: str) -> dict:
    """{stage label: fit arguments} of one pair at the paper's lengths."""
    teacher, student = paper.PAIRS[pair]
    devices, tensor = paper.PAIR_SLICE[pair]
    rows = paper.micro_batch_rows(pair)
    hbm = SLICES[pair][1]
    mesh = f"1,{rows},{tensor}"  # data 1, fsdp over the rest: one micro-batch row a device
    where = f"--devices {devices} --mesh {mesh} --hbm_gib {hbm} {PAPER_COMMON}"
    grpo = f"--batch 64 --micro_batches {64 // rows} --seq {GRPO_SEQ} --kl_coef 5e-4"
    grpo += " --score_batch 64"
    kl = (
        f"--batch 512 --micro_batches {512 // rows} --seq {TRANSFER_SEQ} --teacher_preset {teacher}"
    )
    return {
        f"Stage 1 GRPO, {teacher}": f"--preset {teacher} {grpo} {where}",
        f"2a forward KL, {student}": f"--preset {student} --objective forward_kl {kl} {where}",
        f"2b on-policy KL, {student}": f"--preset {student} --objective reverse_kl {kl} {where}",
        f"Stage 3 GRPO, {student}": f"--preset {student} {grpo} {where}",
    }


def measure(args: str, common: str = COMMON) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        cmd = [sys.executable, "-m", "s2d_jax.tools.fit", *args.split(), *common.split()]
        cmd += ["--json", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.read_text())


def row(label: str, report: dict) -> str:
    train = report["train_step"]
    cells = [label, f"{train['total'] / GIB:.1f}", f"{train['arguments'] / GIB:.1f}"]
    if "prefill" in report:
        cells.append(
            f"{report['prefill']['total'] / GIB:.1f} / {report['decode_step']['total'] / GIB:.1f}"
        )
    else:
        cells.append("-")
    return "| " + " | ".join(cells) + " |"


def paper_table(pairs: list[str], only: str = "") -> None:
    print(f"fit arguments common to every row: {PAPER_COMMON}")
    print(
        "| pair, slice | stage | train step total (of it: state + batch) | scoring pass | fits? |"
    )
    print("|---|---|---|---|---|")
    for pair in pairs:
        slice_name, hbm_gib = SLICES[pair]
        hbm = hbm_gib * GIB
        for stage, args in paper_rows(pair).items():
            if only not in stage:
                continue
            report = measure(args, "")
            train = report["train_step"]
            need = train["total"]
            score = "-"
            if "score" in report:  # the train state stays alive beside the scoring pass
                need = max(need, report["score"]["total"] + train["arguments"])
                score = f"{report['score']['total'] / GIB:.1f}"
            cells = [f"{pair}, {slice_name}", stage]
            cells += [f"{train['total'] / GIB:.1f} ({train['arguments'] / GIB:.1f})", score]
            cells.append("yes" if need <= hbm else "no")
            print("| " + " | ".join(cells) + " |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {list(ROWS)}")
    parser.add_argument("--table", default="", choices=("", "paper"), help="paper: real shapes")
    parser.add_argument("--pairs", default=",".join(SLICES), help=f"--table paper: {list(SLICES)}")
    parser.add_argument("--only", default="", help="--table paper: stages whose name has this")
    parsed = parser.parse_args(argv)
    if parsed.table == "paper":
        return paper_table(parsed.pairs.split(","), parsed.only)
    names = parsed.rows.split(",")
    print(f"fit arguments common to every row: {COMMON}")
    print("| model, mesh | train step total | train step arguments | sampler prefill / decode |")
    print("|---|---|---|---|")
    for name in names:
        label, args = ROWS[name]
        print(row(label, measure(args)), flush=True)


if __name__ == "__main__":
    main()
