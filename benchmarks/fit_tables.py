"""The README's "Will it fit?" and one-GPU tables, re-measured with `s2d_jax.tools.fit`.

    python benchmarks/fit_tables.py                 # every row (about 20 min on 2 CPU cores)
    python benchmarks/fit_tables.py --rows qwen3_8b,1gpu_qwen3_1.7b

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


def measure(args: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        cmd = [sys.executable, "-m", "s2d_jax.tools.fit", *args.split(), *COMMON.split()]
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {list(ROWS)}")
    names = parser.parse_args(argv).rows.split(",")
    print(f"fit arguments common to every row: {COMMON}")
    print("| model, mesh | train step total | train step arguments | sampler prefill / decode |")
    print("|---|---|---|---|")
    for name in names:
        label, args = ROWS[name]
        print(row(label, measure(args)), flush=True)


if __name__ == "__main__":
    main()
