"""A seed sweep: the same workflow once per training seed, and the arms compared across seeds.

    python -m s2d_jax.main --config configs/toy_arith.py --workdir runs/toy_seeds --seeds 0,1,2

Each seed runs in its own resumable run directory `<workdir>/seed_<n>/` with the config's `seed`
replaced (the task's data, its splits included, are the config's own and stay fixed, so the
spread is the training's, not the data's). A killed sweep started again skips what is done. The
summary (`summary.md`, `summary.json`, `summary.png`) gives, per arm of `config.report_rows`, the
mean ± standard error across seeds beside every seed's value (each ± its SE over problems), and
for every pair of arms the paired difference across seeds with its SE and the number of seeds
in which the ordering holds.

`shared_stages` (`--shared_stages teacher_sft,teacher_grpo`) trains those stages once, on the first
seed, and every other seed reads them (its `seed_<n>/<stage>` is a link to the first seed's): a
teacher trained once, the students varied. A shared stage's inputs must be shared too, so every
seed's copy of it is the same model; the summary names the shared stages.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

from s2d_jax.workflow import pipeline, report


def run(config, workdir, seeds: list[int], shared_stages=(), **run_kwargs) -> dict:
    """Run every seed (skipping finished stages), then write the summary; returns its data."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct seeds, got {seeds}")
    check_shared(config, shared_stages)
    workdir = Path(workdir)
    per_seed = {}
    for seed in seeds:
        seeded = config.copy_and_resolve_references()
        seeded.seed = seed
        seed_dir = workdir / f"seed_{seed}"
        if seed != seeds[0]:
            link_shared(workdir / f"seed_{seeds[0]}", seed_dir, shared_stages)
        print(f"[sweep] seed {seed}: {seed_dir}")
        per_seed[seed] = pipeline.run(seeded, seed_dir, **run_kwargs)
    rows = report.parse_rows(config.report_rows) or [(name, name) for name in per_seed[seeds[0]]]
    data = summarize(rows, per_seed)
    data["shared_stages"] = list(shared_stages)
    (workdir / "summary.json").write_text(json.dumps(data, indent=2))
    text = summary_markdown(data)
    (workdir / "summary.md").write_text(text)
    plot_summary(data, workdir / "summary.png")
    print(text)
    return data


def check_shared(config, shared_stages) -> None:
    """Every shared stage is a stage of the config, and so is each stage it reads."""
    stage_cfgs = {s.name: s for s in pipeline.validate(config).stages}
    for name in shared_stages:
        if name not in stage_cfgs:
            raise KeyError(f"--shared_stages: {name!r} is not a stage ({sorted(stage_cfgs)})")
        for ref in (stage_cfgs[name].init_from, stage_cfgs[name].teacher):
            if ref in stage_cfgs and ref not in shared_stages:
                raise ValueError(
                    f"--shared_stages: {name!r} reads stage {ref!r}, which is not shared: each "
                    f"seed's {name} would then differ; share {ref!r} too"
                )


def link_shared(first_dir: Path, seed_dir: Path, shared_stages) -> None:
    """`seed_dir/<stage>` -> the first seed's stage directory, for every shared stage."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    for name in shared_stages:
        link, target = seed_dir / name, Path("..") / first_dir.name / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        if link.exists() or link.is_symlink():
            raise FileExistsError(
                f"--shared_stages: {link} exists and is not a link to {target}: this seed "
                f"trained {name!r} itself; use another workdir or drop {name!r} from the list"
            )
        link.symlink_to(target, target_is_directory=True)


def _metric(per_seed: dict, rows) -> str:
    """The first `eval/<split>/avg@<k>` of the arms' stages: what the sweep compares."""
    for summaries in per_seed.values():
        for _, stage in rows:
            for key in summaries.get(stage, {}):
                if key.startswith("eval/") and "/avg@" in key and not key.endswith("_se"):
                    return key
    raise ValueError("no stage of config.report_rows has an eval/<split>/avg@<k> result")


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def summarize(rows, per_seed: dict) -> dict:
    """Per arm: every seed's value (and its SE over problems) and their mean ± SE across seeds;
    per pair of arms: the paired difference across seeds and how many seeds order them so."""
    metric = _metric(per_seed, rows)
    seeds = sorted(per_seed)
    arms = {}
    for label, stage in rows:
        values = [per_seed[s][stage][metric] for s in seeds]
        ses = [per_seed[s][stage].get(metric + "_se", float("nan")) for s in seeds]
        mean, se = _mean_se(values)
        arms[label] = dict(stage=stage, values=values, problem_se=ses, mean=mean, se=se)
    pairs = []
    for (a, arm_a), (b, arm_b) in itertools.combinations(arms.items(), 2):
        diffs = np.subtract(arm_a["values"], arm_b["values"])
        mean, se = _mean_se(diffs)
        pairs.append(dict(a=a, b=b, mean=mean, se=se, a_above_b=int((diffs > 0).sum())))
    return dict(metric=metric, seeds=seeds, arms=arms, pairs=pairs)


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def summary_markdown(data: dict) -> str:
    seeds = data["seeds"]
    head = ["arm", "stage", f"mean ± SE ({len(seeds)} seeds)", *[f"seed {s}" for s in seeds]]
    lines = [f"# Seed sweep: {data['metric']}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for label, arm in data["arms"].items():
        each = [
            f"{pct(v)} ± {pct(e)}" for v, e in zip(arm["values"], arm["problem_se"], strict=True)
        ]
        lines.append(f"| {label} | {arm['stage']} | {pct(arm['mean'])} ± {pct(arm['se'])} | "
                     + " | ".join(each) + " |")  # fmt: skip
    if data.get("shared_stages"):
        lines += ["", f"Trained once, on seed {seeds[0]}, and shared by every seed: "
                  + ", ".join(data["shared_stages"]) + "."]  # fmt: skip
    lines += ["", "## Paired differences across seeds (a - b)", ""]
    lines += ["| a | b | mean ± SE | seeds with a > b |", "|---|---|---|---|"]
    for p in data["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {pct(p['mean'])} ± {pct(p['se'])} | "
                     f"{p['a_above_b']} of {len(seeds)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_summary(data: dict, path: Path) -> None:
    """Bars of the mean across seeds with ± SE, and every seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(data["arms"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    for i, label in enumerate(labels):
        arm = data["arms"][label]
        ax.bar(i, 100 * arm["mean"], yerr=100 * np.nan_to_num(arm["se"]), color="#9ecae1")
        ax.plot([i] * len(arm["values"]), 100 * np.asarray(arm["values"]), "k.", ms=4)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{data['metric']} (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
