"""What the dense signal of on-policy distillation says, token by token, for a finished run.

    rows = dense_signal.sample_and_score(run_dir, student="fkl", teacher="teacher_grpo", prompts=4)

Loads two stages' exported params from a run directory (its `config.json` gives the models and
the task), samples completions of the student on the first prompts of a pool, grades them with the
verifier, and scores every completion token under both models: the per-token reverse KL
KL(S || T) (the analytic one, over the full vocabulary) and log pT - log pS of the sampled token
(what option B trains on). The notebook `notebooks/dense_signal.ipynb` plots them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_collections
import numpy as np

from s2d_jax.data.task import Task
from s2d_jax.grading import rewards
from s2d_jax.learn import steps
from s2d_jax.workflow import batches, config, loading, pipeline
from s2d_jax.workflow.context import RunContext


@dataclasses.dataclass(frozen=True)
class ScoredCompletion:
    """One sampled completion with its per-token signals (N = its length, EOS included)."""

    problem: str
    answer: str
    reward: float
    tokens: list[str]  # each completion token, decoded on its own
    reverse_kl_N: np.ndarray  # KL(student || teacher) at each position
    log_ratio_N: np.ndarray  # log pT(token) - log pS(token)


def _context(run_dir: Path, grader) -> RunContext:
    saved = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    run_cfg = config.parse(saved)
    models = {
        role: dataclasses.replace(spec, hf_path=str(run_dir / "random_models" / role))
        if spec.random_weights
        else spec
        for role, spec in run_cfg.models.items()
    }
    task = Task(run_cfg.task, pipeline.tokenizer_path(run_cfg, models, run_dir))
    return RunContext(run_dir, run_cfg.seed, run_cfg.nan_policy, task, models, run_cfg.eval,
                      grader, mesh=None)  # fmt: skip


def sample_and_score(
    run_dir, *, student: str, teacher: str, pool: str = "", prompts: int = 4, seed: int = 0
) -> list[ScoredCompletion]:
    """`prompts` completions of stage `student`'s params on the first prompts of `pool` (default:
    the first eval split), sampled as the eval does, each scored by stage `teacher`'s params."""
    run_dir = Path(run_dir)
    with rewards.Grader(workers=1) as grader:
        ctx = _context(run_dir, grader)
        pool = pool or ctx.eval.splits[0]
        examples = ctx.task.pool(pool)[:prompts]
        s = loading.load_params(ctx, "student", student)
        t = loading.load_params(ctx, "teacher", teacher, frozen=True)
        prompt_ids = [ctx.task.prompt_ids(ex) for ex in examples]
        rollout, _ = batches.sample(ctx, s.cfg, s.params, prompt_ids, ctx.eval, seed, 1)
        texts = batches.completion_texts(rollout, ctx.task.tokenizer)
        rewards_B, _ = grader.grade(
            texts, [ex["answer"] for ex in examples], answer_style=ctx.task.answer_style(pool)
        )
    batch = batches.rollout_batch(rollout)
    stats = steps.score_kl(s.cfg, s.params, t.cfg, t.params, batch["tokens"],
                           batch["attention_mask"], chunk_size=512)  # fmt: skip
    stats = {key: np.asarray(value) for key, value in stats.items()}
    P = rollout.prompt_mask.shape[1]
    out = []
    for row, ex in enumerate(examples):
        n = int(rollout.lengths[row])
        ids = np.asarray(rollout.tokens)[row, P : P + n]
        span = slice(P - 1, P - 1 + n)  # position t scores token t + 1
        log_ratio = stats["teacher_logprob"][row, span] - stats["student_logprob"][row, span]
        out.append(
            ScoredCompletion(
                problem=ex["problem"],
                answer=ex["answer"],
                reward=float(rewards_B[row]),
                tokens=[ctx.task.tokenizer.decode([int(i)]) for i in ids],
                reverse_kl_N=np.asarray(stats["reverse"][row, span]),
                log_ratio_N=np.asarray(log_ratio),
            )
        )
    return out


def top_disagreements(rows: list[ScoredCompletion], k: int = 10) -> list[tuple[str, float, float]]:
    """The k (token, reverse KL, log pT - log pS) where the models disagree most, over all rows."""
    flat = [(tok, float(kl), float(lr)) for row in rows
            for tok, kl, lr in zip(row.tokens, row.reverse_kl_N, row.log_ratio_N, strict=True)]  # fmt: skip
    return sorted(flat, key=lambda item: -item[1])[:k]
