"""A policy's accuracy on the eval splits: sample k completions per problem, grade, summarise.

    summary = evaluation.evaluate_policy(ctx, cfg, params, stage_dir, "final")

avg@k ± SE, pass@k and maj@k per split (and per difficulty level where the data has levels), the
grader's failure counts, completion lengths and the truncated fraction; per-sample JSONL and a
summary JSON under `out_dir/eval_<tag>/<split>/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np

from s2d_jax.grading import evaluate
from s2d_jax.workflow import batches

if TYPE_CHECKING:
    from s2d_jax.workflow.context import RunContext


def evaluate_policy(ctx: RunContext, cfg, params, out_dir: Path | None, tag: str) -> dict:
    """avg@k ± SE, pass@k, maj@k on every eval split; per-sample JSONL + summary JSON in out_dir."""
    results = {}
    for split in ctx.eval.splits:
        results.update(_evaluate_split(ctx, cfg, params, split, out_dir, tag))
    return results


def _sample_split(ctx: RunContext, cfg, params, pool):
    """k completion texts per problem, and the lengths [P*k] and truncated flags [P, k]."""
    e = ctx.eval
    completions, lengths, truncated = [], [], []
    for start in range(0, len(pool), e.batch_size):
        chunk = pool[start : start + e.batch_size]
        prompts = [ctx.task.prompt_ids(ex) for ex in chunk]
        rollout, _ = batches.sample(
            ctx, cfg, params, prompts, e, ctx.seed + 7919 + start, e.samples
        )
        texts = batches.completion_texts(rollout, ctx.task.tokenizer)
        completions += [texts[i : i + e.samples] for i in range(0, len(texts), e.samples)]
        lengths.append(np.asarray(rollout.lengths))
        truncated.append(np.asarray(rollout.truncated))
    truncated_PK = np.concatenate(truncated).reshape(len(pool), e.samples)
    return completions, np.concatenate(lengths), truncated_PK


def _evaluate_split(ctx: RunContext, cfg, params, split: str, out_dir, tag: str) -> dict:
    e = ctx.eval
    pool = ctx.task.pool(split)
    if e.max_problems:
        pool = pool[: e.max_problems]
    completions, lengths, truncated_PK = _sample_split(ctx, cfg, params, pool)
    scored = evaluate.score_completions(
        ctx.grader,
        [ex["id"] for ex in pool],
        completions,
        [ex["answer"] for ex in pool],
        truncated_PK,
        answer_style=ctx.task.answer_style(split),
    )
    levels = [ex["level"] for ex in pool]
    summary = evaluate.summarize(
        scored.correct_PK,
        answer_groups=scored.groups_PK,
        groups={"level": levels} if max(levels) >= 0 else None,
        pass_ks=sorted({1, e.samples}),
        prefix=f"eval/{split}",
    )
    summary |= {f"eval/{split}/{name}": n for name, n in scored.grader_counts.items()}
    # Completion length in tokens, and the fraction cut at max_new_tokens (graded 0, as in
    # training): what GRPO moves first on a model that rambles.
    summary[f"eval/{split}/length"] = float(lengths.mean())
    summary[f"eval/{split}/truncated"] = float(truncated_PK.mean())
    if out_dir is not None and jax.process_index() == 0:
        evaluate.write_eval_outputs(
            str(Path(out_dir) / f"eval_{tag}" / split), scored.records, summary
        )
    return summary
