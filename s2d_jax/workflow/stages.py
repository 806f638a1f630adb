"""What each stage kind does per step: which batch it builds and which objective it trains.

sft           supervised warm-start on worked solutions (the toy's stand-in for pretraining)
grpo          Stage 1 (teacher) / Stage 3 and the direct baseline (student): sample G per prompt,
              grade with the verifier, group advantages, clipped surrogate + k3 KL to the start
forward_kl    Stage 2a: teacher rollouts generated once (chunked in the stage directory,
              rollout_cache.py) and graded as they are made, the student learns
              KL(teacher || student) on them, teacher logits recomputed per step
on_policy_kl  Stage 2b: student rollouts, the frozen teacher scores every token, reverse KL; the
              rollouts are graded each step (`opd/accuracy`)
eval          no training: evaluate `init_from` on the eval splits
Every training kind draws from its stage's pool less the prompts over its cap (pools.py).
The distillation kinds grade their rollouts against the pool's answers for condition C1 (the
teacher's accuracy on D, `c1/teacher_accuracy`; the student's, `opd/accuracy`) and never train on
them: the answers are read for a diagnostic, not spent, so they count no labeled examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from s2d_jax.distributed import placement
from s2d_jax.grading import rewards
from s2d_jax.learn import losses, steps
from s2d_jax.model import decoder
from s2d_jax.workflow import batches, pools, rollout_cache

if TYPE_CHECKING:  # annotations only: config.py reads KINDS
    from s2d_jax.workflow.config import StageConfig
    from s2d_jax.workflow.context import RunContext


@dataclasses.dataclass
class Policy:
    """A model role's architecture with the params a stage starts from."""

    cfg: decoder.ModelConfig
    params: dict  # stacked layout (decoder.init_params)


def frozen_copy(cfg, params):
    """`params` in the compute dtype, for a model that is only read (a no-op in float32)."""
    return jax.tree.map(lambda x: x.astype(cfg.compute_dtype), params)


def _seed(ctx: RunContext, stage: StageConfig, purpose: int) -> int:
    """A per-stage, per-purpose seed: stages never share random streams."""
    return int(
        np.random.default_rng([ctx.seed, sum(map(ord, stage.name)), purpose]).integers(2**31)
    )


def num_steps(stage: StageConfig, pool_size: int) -> int:
    """The stage's updates: `steps`, or `epochs` passes over the pool when steps is 0."""
    return stage.steps or stage.epochs * -(-pool_size // stage.batch_size)


def batch_indices(ctx: RunContext, stage: StageConfig, pool_size: int, step: int):
    """Which examples of the pool a step uses: a function of (seed, stage, step) only."""
    return batches.example_indices(pool_size, stage.batch_size, _seed(ctx, stage, 0), step)


def grade_own_rows(grader, texts: list[str], references: list[str], answer_style: str):
    """`grader.grade` with the rows split over processes: each grades its `process_rows`, and
    the rewards [B] and the stats (counts, summed; the mean reward) are gathered back."""
    n = jax.process_count()
    if n == 1 or len(texts) % n:
        return grader.grade(texts, references, answer_style=answer_style)
    mine = placement.process_rows(len(texts))
    own_rewards, stats = grader.grade(texts[mine], references[mine], answer_style=answer_style)
    rewards_B = np.asarray(multihost_utils.process_allgather(own_rewards, tiled=True))
    keys = sorted(k for k in stats if k != "reward/mean")
    totals = multihost_utils.process_allgather(np.array([stats[k] for k in keys])).sum(0)
    stats = {k: float(v) for k, v in zip(keys, totals, strict=True)}
    stats["reward/mean"] = float(rewards_B.mean())
    return rewards_B, stats


def grade_rollout(ctx: RunContext, rollout, examples, num_samples: int, answer_style: str):
    """A rollout of `examples` (`num_samples` rows each, prompt-major as the sampler returns them)
    graded against their answers (`grade_own_rows`: over processes), a truncated row scoring 0.
    Returns (the decoded completions [B], correct_B float32 in {0, 1}, the grader's stats)."""
    texts = batches.completion_texts(rollout, ctx.task.tokenizer)
    references = [ex["answer"] for ex in examples for _ in range(num_samples)]
    rewards_B, stats = grade_own_rows(ctx.grader, texts, references, answer_style)
    return texts, rewards.zero_truncated(rewards_B, np.asarray(rollout.truncated)), stats


def holdout_accuracy(ctx: RunContext, stage: StageConfig, cfg):
    """`accuracy(params) -> {"stop/holdout_accuracy": share right}`: greedy completions of the
    stage's held-out examples (`pools.StagePool.holdout`) graded against their answers, a
    truncated one scoring 0. Greedy, so a resumed stage checks exactly as the first run did."""
    held = pools.stage_pool(ctx, stage).holdout
    prompts = [ctx.task.prompt_ids(ex) for ex in held]
    greedy = dataclasses.replace(stage.sampling, temperature=0.0)
    answer_style = ctx.task.answer_style(stage.data)

    def accuracy(params) -> dict[str, float]:
        rollout, _ = batches.sample(ctx, cfg, params, prompts, greedy, 0, 1)
        _, correct_B, _ = grade_rollout(ctx, rollout, held, 1, answer_style)
        return {"stop/holdout_accuracy": float(correct_B.mean())}

    return accuracy


# ----------------------------------------------------------------------------- per-kind batch makers


def sft_batches(ctx: RunContext, stage: StageConfig, policy: Policy, teacher, stage_dir: Path):
    pool = pools.stage_pool(ctx, stage).examples

    def make_batch(params, step):
        idx = batch_indices(ctx, stage, len(pool), step)
        pairs = [ctx.task.demonstration_ids(pool[i]) for i in idx]
        batch = batches.pad_sequences([p for p, _ in pairs], [t for _, t in pairs], ctx.pad_id)
        return batch, {}

    return make_batch, num_steps(stage, len(pool))


def grpo_batches(ctx: RunContext, stage: StageConfig, policy: Policy, teacher, stage_dir: Path):
    pool = pools.stage_pool(ctx, stage).examples
    seed = _seed(ctx, stage, 0)
    G = stage.samples_per_prompt
    cfg = policy.cfg
    # pi_ref is the stage's starting point (paper §2.1), frozen: held in the compute dtype.
    ref_params = frozen_copy(cfg, policy.params) if stage.grpo.kl_coef > 0 else None
    sampling = stage.sampling
    answer_style = ctx.task.answer_style(stage.data)

    def make_batch(params, step):
        examples = [pool[i] for i in batch_indices(ctx, stage, len(pool), step)]
        prompts = [ctx.task.prompt_ids(ex) for ex in examples]
        rollout, stats = batches.sample(ctx, cfg, params, prompts, sampling, seed + step + 1, G)
        texts, correct_B, reward_stats = grade_rollout(ctx, rollout, examples, G, answer_style)
        answered_B = np.array(
            [rewards.extract_answer(t, answer_style=answer_style) is not None for t in texts]
        )
        answered_B &= ~np.asarray(rollout.truncated)
        rewards_B = np.maximum(correct_B, stage.grpo.format_reward * answered_B)
        batch = batches.rollout_batch(rollout)
        batch["advantages"] = np.asarray(
            losses.group_advantages(
                jnp.asarray(rewards_B), G, normalize_std=stage.grpo.normalize_std
            )
        )
        if sampling.temperature != 1.0:  # the sampler's log-probs are tempered; the trainer's not
            batch["old_logprobs"] = batches.score(ctx, cfg, params, batch, stage)
        if ref_params is not None:
            batch["ref_logprobs"] = batches.score(ctx, cfg, ref_params, batch, stage)
        solved = correct_B.reshape(-1, G).max(axis=1)
        return batch, {
            **stats,
            **reward_stats,
            "grpo/reward": float(rewards_B.mean()),
            "grpo/solved_any": float(solved.mean()),
            "grpo/correct": float(correct_B.mean()),
            "grpo/answered": float(answered_B.mean()),
        }

    return make_batch, num_steps(stage, len(pool))


TEACHER_ROLLOUTS = "teacher_rollouts"  # the cache's directory inside the stage's


def _rollout_chunks(ctx: RunContext, stage: StageConfig) -> tuple[int, int]:
    """(prompts per chunk, chunks) of a forward-KL stage's teacher rollout cache."""
    per_call = max(1, rollout_cache.CHUNK_ROWS // stage.samples_per_prompt)
    return per_call, -(-len(pools.stage_pool(ctx, stage).examples) // per_call)


def _teacher_rollouts(ctx: RunContext, stage: StageConfig, teacher: Policy, stage_dir: Path):
    """K teacher rollouts per prompt of the pool, made once into the stage directory, one chunk
    per sampler call as they are made, each graded against its prompt's answer (condition C1);
    a resumed stage makes only the chunks not yet written."""
    pool = pools.stage_pool(ctx, stage).examples
    seed = _seed(ctx, stage, 1)
    K = stage.samples_per_prompt
    per_call, num_chunks = _rollout_chunks(ctx, stage)
    answer_style = ctx.task.answer_style(stage.data)

    def make_chunk(index: int):
        start = index * per_call  # the seed depends on the chunk alone: resumed chunks match
        examples = pool[start : start + per_call]
        prompts = [ctx.task.prompt_ids(ex) for ex in examples]
        rollout, _ = batches.sample(
            ctx, teacher.cfg, teacher.params, prompts, stage.sampling, seed + start, K
        )
        _, correct_R, _ = grade_rollout(ctx, rollout, examples, K, answer_style)
        return (*batches.rollout_rows(rollout), correct_R)

    return rollout_cache.fill(stage_dir / TEACHER_ROLLOUTS, num_chunks, make_chunk)


def forward_kl_batches(
    ctx: RunContext, stage: StageConfig, policy: Policy, teacher: Policy, stage_dir: Path
):
    cache = _teacher_rollouts(ctx, stage, teacher, stage_dir)

    def make_batch(params, step):
        idx = batch_indices(ctx, stage, cache.num_rows, step)
        prompts, completions = cache.rows(idx)  # reads this step's rows only
        return batches.pad_sequences(prompts, completions, ctx.pad_id), {}

    return make_batch, num_steps(stage, cache.num_rows)


def on_policy_kl_batches(
    ctx: RunContext, stage: StageConfig, policy: Policy, teacher: Policy, stage_dir: Path
):
    pool = pools.stage_pool(ctx, stage).examples
    seed = _seed(ctx, stage, 0)
    cfg = policy.cfg
    G = stage.samples_per_prompt
    answer_style = ctx.task.answer_style(stage.data)

    def make_batch(params, step):
        examples = [pool[i] for i in batch_indices(ctx, stage, len(pool), step)]
        prompts = [ctx.task.prompt_ids(ex) for ex in examples]
        rollout, stats = batches.sample(
            ctx, cfg, params, prompts, stage.sampling, seed + step + 1, G
        )
        # `opd/accuracy` as the authors' code logs it (condition C1 on the student's side). The
        # answers are read for this diagnostic only, never trained on: no labels are spent.
        _, correct_B, reward_stats = grade_rollout(ctx, rollout, examples, G, answer_style)
        batch = batches.rollout_batch(rollout)
        if stage.sampling.temperature != 1.0:
            batch["old_logprobs"] = batches.score(ctx, cfg, params, batch, stage)
        return batch, {**stats, **reward_stats, "opd/accuracy": float(correct_B.mean())}

    return make_batch, num_steps(stage, len(pool))


# ----------------------------------------------------------------------------- diagnostics


def c1_teacher_accuracy(ctx: RunContext, stage: StageConfig) -> dict[str, float]:
    """Condition C1 on D: the share of the stage's teacher rollouts graded right (truncated 0),
    over the whole cache, from its grades alone (no token is read)."""
    cache = rollout_cache.open_cache(
        ctx.workdir / stage.name / TEACHER_ROLLOUTS, _rollout_chunks(ctx, stage)[1]
    )
    return {"c1/teacher_accuracy": cache.correct_mean(), "c1/teacher_rows": float(cache.num_rows)}


# ----------------------------------------------------------------------------- the kinds


@dataclasses.dataclass(frozen=True)
class StageKind:
    """Everything the driver needs to know about one kind of stage.

    make_batches(ctx, stage, policy, teacher, stage_dir) -> (make_batch(params, step) -> (batch,
    metrics), number of steps); diagnostics(ctx, stage) -> metrics of the finished stage, in its
    summary. Condition C2 is measured for every kind alike, after the run (probe.py).
    """

    trains: bool  # False: evaluate `init_from` and stop
    uses_teacher: bool  # the frozen teacher is loaded (`teacher` reference)
    # the verifier's reward on the pool's answers trains it (labeled examples spent); a kind that
    # grades only for a diagnostic (forward_kl, on_policy_kl: C1) spends none
    uses_labels: bool
    objectives: tuple[str, ...]  # the `loss` values it takes; "" means the first
    # what is sampled: "none", "policy" (every update) or "teacher_once" (the pool, cached)
    rollouts: str
    make_batches: Callable | None
    diagnostics: Callable | None = None

    def objective(self, stage: StageConfig) -> str:
        return stage.loss or self.objectives[0]


KINDS = {
    "sft": StageKind(True, False, False, ("sft",), "none", sft_batches),
    "grpo": StageKind(True, False, True, ("grpo",), "policy", grpo_batches),
    "forward_kl": StageKind(
        True,
        True,
        False,
        ("forward_kl", "forward_kl_hard"),
        "teacher_once",
        forward_kl_batches,
        c1_teacher_accuracy,
    ),
    "on_policy_kl": StageKind(
        True, True, False, ("reverse_kl", "sampled_reverse_kl"), "policy", on_policy_kl_batches
    ),
    "eval": StageKind(False, False, False, (), "none", None),
}


def step_config(stage: StageConfig, total_steps: int) -> steps.StepConfig:
    """The jitted step's static settings for a stage of `total_steps` updates."""
    optim = stage.optim
    if not optim.total_steps:  # a schedule over the stage's own length
        optim = dataclasses.replace(optim, total_steps=total_steps)
    return steps.StepConfig(
        objective=KINDS[stage.kind].objective(stage),
        optimizer=optim,
        micro_batches=stage.micro_batches,
        chunk_size=stage.chunk_size,
        vocab_chunk=stage.vocab_chunk,
        grpo=stage.grpo,
    )
