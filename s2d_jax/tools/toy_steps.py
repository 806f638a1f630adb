"""Step-level accuracy of toy `arith` completions: clean facts vs the facts the demos teach wrongly.

    python -m s2d_jax.tools.toy_steps runs/calib_1m
    python -m s2d_jax.tools.toy_steps runs/toy --stages teacher_sft,teacher_grpo --split test

For each stage of a finished run it reads the final evaluation's `samples.jsonl` and checks every
step `a op b = r` of every completion against the task (its `config.json`): the share of right
steps among clean facts, and among misconceived facts (see s2d_jax/data/toy_arith.py), with the
share of those that show the demos' wrong value. It tells whether a stage fixed the misconceptions
(what only the verifier's reward can teach) or got better at the facts the demos teach right.
It checks each step's arithmetic only, not whether the step copies the problem's next operation.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from s2d_jax.data import toy_arith

_STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)")


def step_accuracy(completions: list[str], cfg: toy_arith.ArithConfig) -> dict[str, float]:
    """Counts and shares of right steps in `completions`, split into clean and misconceived facts.

    Returns `clean_steps`, `clean_right`, `misconceived_steps`, `misconceived_right` and
    `misconceived_taught` (the share showing the demos' wrong value); a share is NaN without steps.
    """
    wrong = toy_arith.misconceptions(cfg)
    counts = dict.fromkeys(("clean", "clean_ok", "mis", "mis_ok", "mis_taught"), 0)
    for completion in completions:
        for a, op, b, shown in _STEP.findall(completion):
            fact = (int(a), op, int(b))
            right = toy_arith.apply_op(*fact, cfg.modulus)
            kind = "mis" if fact in wrong else "clean"
            counts[kind] += 1
            counts[kind + "_ok"] += int(shown) == right
            counts["mis_taught"] += fact in wrong and int(shown) == wrong[fact]
    share = lambda n, d: n / d if d else float("nan")
    return {
        "clean_steps": counts["clean"],
        "clean_right": share(counts["clean_ok"], counts["clean"]),
        "misconceived_steps": counts["mis"],
        "misconceived_right": share(counts["mis_ok"], counts["mis"]),
        "misconceived_taught": share(counts["mis_taught"], counts["mis"]),
    }


def run_table(workdir: Path, stages: list[str] | None = None, split: str = "test") -> str:
    """A Markdown table of `step_accuracy` for each stage's final evaluation of `split`."""
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: expected the workdir of a toy run")
    config = json.loads(config_file.read_text())
    if config["task"]["name"] != "arith":
        raise ValueError(f"{config_file}: task {config['task']['name']!r} is not the toy 'arith'")
    # JSON turned the tuple fields into lists.
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["task"]["arith"].items()}
    cfg = toy_arith.ArithConfig(**fields)
    names = stages or list(config["stages"])
    rows = [
        "| stage | clean steps right | misconceived steps right | showing the taught wrong value |",
        "|---|---|---|---|",
    ]
    for name in names:
        samples = workdir / name / "eval_final" / split / "samples.jsonl"
        if not samples.is_file():
            if stages:  # asked for by name: say what is missing
                raise FileNotFoundError(f"{samples} is missing: has stage {name!r} finished?")
            continue
        with samples.open() as f:
            result = step_accuracy([json.loads(line)["completion"] for line in f], cfg)
        rows.append(
            f"| {name} | {result['clean_right']:.1%} of {result['clean_steps']} "
            f"| {result['misconceived_right']:.1%} of {result['misconceived_steps']} "
            f"| {result['misconceived_taught']:.1%} |"
        )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path, help="the --workdir of a finished toy run")
    parser.add_argument("--stages", default="", help="comma-separated stage names (default: all)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    print(run_table(args.workdir, [s for s in args.stages.split(",") if s] or None, args.split))


if __name__ == "__main__":
    main()
