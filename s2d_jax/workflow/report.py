"""The run's report: a Table-2-style markdown table of arms and a PNG of per-stage curves.

`config.report_rows` is "label=stage,label=stage,..." (an arm's row reads that stage's final eval);
everything else comes from the stage directories, so a report can be rebuilt from a run directory.
"""

from __future__ import annotations

from pathlib import Path

from s2d_jax.workflow import budget, metrics, stages

CURVES = (
    ("grpo/reward", "reward"),
    ("train/loss", "loss"),
    ("kl/forward", "KL(T||S)"),
    ("kl/reverse", "KL(S||T)"),
)


def parse_rows(text: str) -> list[tuple[str, str]]:
    rows = []
    for item in filter(None, text.split(",")):
        label, sep, stage = item.partition("=")
        if not sep:
            raise ValueError(f"config.report_rows item {item!r}: expected label=stage")
        rows.append((label.strip(), stage.strip()))
    return rows


def _eval_columns(summaries: dict) -> list[tuple[str, str]]:
    """(split, k) of every `eval/<split>/avg@<k>` key in any summary, in first-seen order."""
    seen = []
    for summary in summaries.values():
        for key in summary:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval" and parts[2].startswith("avg@"):
                if not parts[2].endswith("_se") and (parts[1], parts[2][4:]) not in seen:
                    seen.append((parts[1], parts[2][4:]))
    return seen


def _avg_cell(summary: dict, split: str, k: str) -> str:
    key = f"eval/{split}/avg@{k}"
    if key not in summary:
        return "n/a"
    return f"{100 * summary[key]:.1f} ± {100 * summary[key + '_se']:.1f}"


def results_table(rows, summaries: dict, labeled: dict[str, int]) -> str:
    """Markdown: one row per arm, avg@k ± SE per eval split, and the labeled examples it consumed."""
    columns = _eval_columns({stage: summaries.get(stage, {}) for _, stage in rows})
    header = ["arm", "stage", *[f"{split} avg@{k}" for split, k in columns], "labeled examples"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, stage in rows:
        summary = summaries.get(stage, {})
        cells = [label, stage]
        cells += [_avg_cell(summary, split, k) for split, k in columns]
        cells.append(str(labeled.get(stage, 0)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GRADING_COLUMNS = (
    ("truncated", "truncated"),
    ("grader_timeouts", "grader timeouts"),
    ("grader_errors", "grader errors"),
    ("maj_grader_timeouts", "maj@k timeouts"),
    ("maj_grader_errors", "maj@k errors"),
)


def grading_table(rows, summaries: dict) -> str:
    """Markdown: per arm and eval split, the truncated share (scored 0) and the grader's
    timeouts and errors (also scored 0), so that a low avg@k can be told from a broken grader."""
    columns = _eval_columns({stage: summaries.get(stage, {}) for _, stage in rows})
    splits = list(dict.fromkeys(split for split, _ in columns))
    header = ["arm", "split", *[title for _, title in GRADING_COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, stage in rows:
        summary = summaries.get(stage, {})
        for split in splits:
            if f"eval/{split}/problems" not in summary:
                continue
            cells = [label, split]
            for name, _ in GRADING_COLUMNS:
                value = summary.get(f"eval/{split}/{name}")
                if value is None:
                    cells.append("n/a")
                elif name == "truncated":
                    cells.append(f"{100 * value:.1f}%")
                else:
                    cells.append(f"{value:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


C2_COLUMNS = (("kl_ts", "KL(T‖S)"), ("kl_st", "KL(S‖T)"), ("logratio_var", "Var log(pT/pS)"))


def c2_table(c2: dict[str, dict]) -> str:
    """Condition C2 on the run's probe set (probe.py): per student stage, its teacher and each
    figure at the stage's start -> end."""
    if not c2:
        return ""
    header = ["stage", "teacher", *[f"{title} start → end" for _, title in C2_COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage, row in c2.items():
        cells = [stage, row["teacher"]]
        cells += [f"{row[f'c2/{k}_start']:.3f} → {row[f'c2/{k}_end']:.3f}" for k, _ in C2_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _teacher_summary(stage, stage_cfgs, summaries: dict) -> dict:
    """The summary of the model `stage` distils from: that of the stage its `teacher` names, or
    of an eval stage of the teacher role at that reference ("base", a Hugging Face directory)."""
    if stage.teacher in summaries:
        return summaries[stage.teacher]
    evals = [s.name for s in stage_cfgs if not stages.KINDS[s.kind].trains
             and s.model == "teacher" and s.init_from == stage.teacher]  # fmt: skip
    return summaries.get(evals[0], {}) if evals else {}


def _opd_accuracy(stage_dir: Path) -> str:
    """`opd/accuracy` at the stage's first and last logged step."""
    values = [r["opd/accuracy"] for r in metrics.read_metrics(stage_dir) if "opd/accuracy" in r]
    return f"{100 * values[0]:.1f}% → {100 * values[-1]:.1f}%" if values else "n/a"


def c1_table(workdir: Path, stage_cfgs, summaries: dict) -> str:
    """Condition C1 per distillation stage: the teacher it distils from and its test accuracy, the
    teacher's accuracy on the stage's pool D (2a: its graded rollouts), the student's on D during
    2b (`opd/accuracy`, first and last step), and the student's test accuracy at the end."""
    distil = [s for s in stage_cfgs if stages.KINDS[s.kind].uses_teacher and s.name in summaries]
    if not distil:
        return ""
    columns = _eval_columns(summaries)
    header = ["stage", "D (pool)", "teacher", *[f"teacher {sp} avg@{k}" for sp, k in columns],
              "teacher on D (2a rollouts)", "student on D, first → last step (2b)",
              *[f"student {sp} avg@{k}" for sp, k in columns]]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage in distil:
        summary, teacher = summaries[stage.name], _teacher_summary(stage, stage_cfgs, summaries)
        on_d = "n/a"
        if "c1/teacher_accuracy" in summary:
            acc, rows = summary["c1/teacher_accuracy"], summary["c1/teacher_rows"]
            on_d = f"{100 * acc:.1f}% ({rows:.0f} rollouts)"
        cells = [stage.name, stage.data, stage.teacher]
        cells += [_avg_cell(teacher, split, k) for split, k in columns]
        cells += [on_d, _opd_accuracy(Path(workdir) / stage.name)]
        cells += [_avg_cell(summary, split, k) for split, k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pool_table(summaries: dict) -> str:
    """Per training stage: its pool, the prompt-length cap and the prompts it dropped (never
    truncated), so that a pool the cap thinned out shows next to the results; "" when no stage
    has a cap."""
    if not any(s.get("data/max_prompt_tokens") for s in summaries.values()):
        return ""
    lines = [
        "| stage | pool | max prompt tokens | dropped | kept |",
        "|---|---|---|---|---|",
    ]
    for stage, summary in summaries.items():
        if "data/pool_size" in summary:
            size, dropped = summary["data/pool_size"], summary["data/prompts_dropped"]
            cap = summary["data/max_prompt_tokens"]
            lines.append(
                f"| {stage} | {size:.0f} | {f'{cap:.0f}' if cap else 'no cap'} | {dropped:.0f} "
                f"| {size - dropped:.0f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def plot_curves(workdir: Path, stage_names: list[str], out: Path) -> Path | None:
    """One column per stage, one row per curve in CURVES that any stage logged."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    logs = {name: metrics.read_metrics(workdir / name) for name in stage_names}
    logs = {name: rows for name, rows in logs.items() if rows}
    curves = [(k, t) for k, t in CURVES if any(k in r for rows in logs.values() for r in rows)]
    if not logs or not curves:
        return None
    fig, axes = plt.subplots(
        len(curves), len(logs), figsize=(2.6 * len(logs), 2.0 * len(curves)), squeeze=False
    )
    for col, (name, rows) in enumerate(logs.items()):
        axes[0][col].set_title(name, fontsize=8)
        for row, (key, title) in enumerate(curves):
            ax = axes[row][col]
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), lw=1)
            ax.tick_params(labelsize=6)
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(
    workdir: Path,
    rows_text: str,
    summaries: dict,
    labeled: dict[str, int],
    stage_cfgs=(),
    c2: dict[str, dict] | None = None,
) -> str:
    """Write report.md and curves.png into the run directory; return the markdown. With the
    run's `stage_cfgs` it also tabulates each arm's budget (its whole chain of stages), and with
    `c2` (probe.measure) condition C2 at every student stage's start and end."""
    rows = parse_rows(rows_text) or [(name, name) for name in summaries]
    parts = ["# Results", "", results_table(rows, summaries, labeled)]
    if stage_cfgs:
        parts += ["", "## Budget of each arm (its stage and every stage it reads)", ""]
        parts += [budget.budget_table(rows, stage_cfgs, summaries, labeled)]
        c1 = c1_table(workdir, stage_cfgs, summaries)
        if c1:
            parts += ["", "## The teacher on the labeled pool D and on test (condition C1)", ""]
            parts += [c1]
    grading = grading_table(rows, summaries)
    if grading:
        parts += [
            "",
            "## Grading: truncated samples and grader failures (all scored 0)",
            "",
            grading,
        ]
    pool = pool_table(summaries)
    if pool:
        parts += ["", "## Prompt pools: prompts over a stage's cap are dropped, not truncated", ""]
        parts += [pool]
    kl = c2_table(c2 or {})
    if kl:
        parts += [
            "",
            "## Condition C2: teacher and student on the run's fixed probe set, at each stage's "
            "start and end",
            "",
            kl,
        ]
    figure = plot_curves(Path(workdir), list(summaries), Path(workdir) / "curves.png")
    if figure is not None:
        parts += ["", f"![curves]({figure.name})"]
    text = "\n".join(parts) + "\n"
    (Path(workdir) / "report.md").write_text(text)
    return text
