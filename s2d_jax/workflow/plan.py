"""The plan of a run, readable before launching: `python -m s2d_jax.main ... --dry_run`.

Everything a real run checks before its first stage is checked (every key, path, checkpoint
dimension, data file and pool), then each stage is described without loading any weights or
compiling anything: its kind, model, inputs, data pool, updates, rows per update, the labeled
examples behind it, and upper bounds of the tokens it generates and trains on (every row at its
longest prompt and at max_new_tokens). Tokenizers are read from the checkpoints' directories, or
built in a temporary directory (the toy's, the random twin's).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from s2d_jax.data.task import Task, build_tokenizer
from s2d_jax.workflow import config as config_lib
from s2d_jax.workflow import models as models_lib
from s2d_jax.workflow import pipeline, pools, probe, random_models, stages
from s2d_jax.workflow.config import RunConfig, StageConfig
from s2d_jax.workflow.context import RunContext

COLUMNS = (
    "stage",
    "kind",
    "model",
    "init_from",
    "teacher",
    "data (pool)",
    "updates",
    "rows / update",
    "labeled",
    "generated tokens <=",
    "trained tokens <=",
)


def describe(config, workdir) -> str:
    """The plan as a Markdown table, after every check a run makes before its first stage."""
    run_cfg = config_lib.parse(config)
    with tempfile.TemporaryDirectory() as scratch:
        task = Task(run_cfg.task, _tokenizer(run_cfg, Path(workdir), Path(scratch)))
        ctx = RunContext(Path(workdir), run_cfg.seed, run_cfg.nan_policy, task, run_cfg.models,
                         run_cfg.eval, grader=None, mesh=None)  # fmt: skip
        labeled = pipeline.labeled_examples(ctx, run_cfg.stages)
        rows = [_describe_stage(ctx, stage, labeled[stage.name]) for stage in run_cfg.stages]
        evals = _eval_tokens(ctx, run_cfg)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    lines.append("")
    lines.append(
        f"Each evaluation (a stage's final one, and every `eval_every` steps) samples up to "
        f"{evals:,} tokens on {', '.join(run_cfg.eval.splits) or 'no split'}."
    )
    lines.append(_probe_line(run_cfg))
    return "\n".join(lines)


def _probe_line(run_cfg: RunConfig) -> str:
    p = run_cfg.probe
    if not p.data:
        return "Condition C2: no probe set (config.probe.data is empty)."
    bounds = probe.boundaries(p, run_cfg.stages)
    return (
        f"Condition C2 after the stages, on {p.prompts} prompts of {p.data!r} x {p.samples} "
        f"samples of the teacher at {p.teacher!r} and the student at {p.student!r}: at the start "
        f"and end of {len(bounds)} student stage(s) ({', '.join(bounds) or 'none'})."
    )


def _tokenizer(run_cfg: RunConfig, workdir: Path, scratch: Path) -> Path:
    """The run's tokenizer, built where a real run would write nothing yet."""
    source = models_lib.tokenizer_source(run_cfg.models)
    random_roles = [m for m in run_cfg.models.values() if m.random_weights]
    if not source and random_roles:  # the random twin's tokenizer, as materialize writes it
        written = workdir / "random_models" / "tokenizer"
        if written.is_dir():
            return written
        random_models.write_tokenizer(scratch)
        return scratch
    existing = workdir / "tokenizer"
    return build_tokenizer(run_cfg.task, workdir if existing.is_dir() else scratch, source)


def _describe_stage(ctx: RunContext, stage: StageConfig, labeled: int) -> tuple:
    kind = stages.KINDS[stage.kind]
    if not kind.trains:
        row = (stage.name, stage.kind, stage.model, stage.init_from, "", "-", 0, 0, labeled)
        return row + (0, 0)
    capped = pools.stage_pool(ctx, stage)
    pool = capped.examples
    longest_prompt = max(len(ctx.task.prompt_ids(ex)) for ex in pool)
    N = stage.sampling.max_new_tokens
    if kind.rollouts == "none":  # supervised on the pool's worked solutions
        longest = max(len(p) + len(t) for p, t in map(ctx.task.demonstration_ids, pool))
        updates, rows, generated = stages.num_steps(stage, len(pool)), stage.batch_size, 0
        trained = updates * rows * longest
    elif kind.rollouts == "teacher_once":  # K teacher rollouts of the pool, trained on per batch
        cached = len(pool) * stage.samples_per_prompt
        updates, rows = stages.num_steps(stage, cached), stage.batch_size
        generated, trained = cached * N, updates * rows * (longest_prompt + N)
    else:  # the policy samples every update
        updates = stages.num_steps(stage, len(pool))
        rows = stage.batch_size * stage.samples_per_prompt
        generated, trained = updates * rows * N, updates * rows * (longest_prompt + N)
    teacher = stage.teacher if kind.uses_teacher else ""
    notes = [str(len(pool))]
    notes += [f"{capped.dropped} over the cap"] if capped.dropped else []
    notes += [f"{len(capped.holdout)} held out"] if capped.holdout else []
    if stage.stop.accuracy:  # an upper bound: the stage ends at its first check over the target
        checks = updates // stage.stop.every
        generated += checks * len(capped.holdout) * N  # each check's greedy held-out rows
        updates = f"<= {updates} (stops at held-out accuracy {stage.stop.accuracy:g})"
    return (stage.name, stage.kind, stage.model, stage.init_from, teacher,
            f"{stage.data} ({', '.join(notes)})", updates, rows, labeled,
            f"{generated:,}", f"{trained:,}")  # fmt: skip


def _eval_tokens(ctx: RunContext, run_cfg: RunConfig) -> int:
    e = run_cfg.eval
    problems = 0
    for split in e.splits:
        size = len(ctx.task.pool(split))
        problems += min(size, e.max_problems) if e.max_problems else size
    return problems * e.samples * e.max_new_tokens
