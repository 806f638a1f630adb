"""What each stage kind does per step: which batch it builds and which objective it trains.

sft           supervised warm-start on worked solutions (the toy's stand-in for pretraining)
grpo          Stage 1 (teacher) / Stage 3 and the direct baseline (student): sample G per prompt,
              grade with the verifier, group advantages, clipped surrogate + k3 KL to the start
forward_kl    Stage 2a: teacher rollouts generated once (cached in the stage directory), the
              student learns KL(teacher || student) on them, teacher logits recomputed per step
on_policy_kl  Stage 2b: student rollouts, the frozen teacher scores every token, reverse KL
eval          no training: evaluate `init_from` on the eval splits
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.grading import evaluate, rewards
from s2d_jax.learn import losses, steps
from s2d_jax.rollout import sampler
from s2d_jax.workflow import batches
from s2d_jax.workflow.config import StageConfig


@dataclasses.dataclass
class Policy:
    """A model role's architecture with the params a stage starts from."""

    cfg: object
    params: object


def frozen_copy(cfg, params):
    """`params` in the compute dtype, for a model that is only read (a no-op in float32)."""
    return jax.tree.map(lambda x: x.astype(cfg.compute_dtype), params)


def _seed(ctx, stage: StageConfig, purpose: int) -> int:
    """A per-stage, per-purpose seed: stages never share random streams."""
    return int(
        np.random.default_rng([ctx.seed, sum(map(ord, stage.name)), purpose]).integers(2**31)
    )


def num_steps(stage: StageConfig, pool_size: int) -> int:
    """The stage's updates: `steps`, or `epochs` passes over the pool when steps is 0."""
    return stage.steps or stage.epochs * -(-pool_size // stage.batch_size)


def batch_indices(ctx, stage: StageConfig, pool_size: int, step: int):
    """Which examples of the pool a step uses: a function of (seed, stage, step) only."""
    return batches.example_indices(pool_size, stage.batch_size, _seed(ctx, stage, 0), step)


def _sample(ctx, cfg, params, prompts, stage_or_eval, seed, num_samples):
    """A rollout of every prompt, as host arrays on every process, and its stats."""
    s = stage_or_eval
    tok = ctx.task.tokenizer
    t0 = time.perf_counter()
    rollout = sampler.generate(
        cfg,
        placement.sampling_params(ctx.mesh, cfg, params),
        prompts,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        eos_id=tok.eos_ids,
        pad_id=tok.pad_id,
        seed=seed,
        num_samples=num_samples,
        mesh=ctx.mesh,
        data_axis=sh.BATCH_AXES,
    )
    rollout = placement.to_host(rollout)
    lengths = np.asarray(rollout.lengths)
    stats = {
        "rollout/tokens": float(lengths.sum()),
        "rollout/length_mean": float(lengths.mean()),
        "rollout/truncated_frac": float(np.asarray(rollout.truncated).mean()),
        "time/sample_s": time.perf_counter() - t0,
    }
    return rollout, stats


def _score(ctx, cfg, params, batch) -> np.ndarray:
    """Log-probs [B, T-1] of a host batch's tokens under frozen `params` (rows over the mesh)."""
    tokens, mask = placement.put_rows(ctx.mesh, (batch["tokens"], batch["attention_mask"]))
    return placement.to_host(steps.score_tokens(cfg, params, tokens, mask))


def grade_own_rows(grader, texts: list[str], references: list[str], answer_style: str):
    """`grader.grade` with the rows split over processes: each grades its `process_rows`, and
    the rewards [B] and the stats (counts, summed; the mean reward) are gathered back."""
    n = jax.process_count()
    if n == 1 or len(texts) % n:
        return grader.grade(texts, references, answer_style=answer_style)
    mine = placement.process_rows(len(texts))
    rewards_b, stats = grader.grade(texts[mine], references[mine], answer_style=answer_style)
    rewards_B = np.asarray(multihost_utils.process_allgather(rewards_b, tiled=True))
    keys = sorted(k for k in stats if k != "reward/mean")
    totals = multihost_utils.process_allgather(np.array([stats[k] for k in keys])).sum(0)
    stats = {k: float(v) for k, v in zip(keys, totals, strict=True)}
    stats["reward/mean"] = float(rewards_B.mean())
    return rewards_B, stats


# ----------------------------------------------------------------------------- per-kind batch makers


def sft_batches(ctx, stage, policy, teacher):
    pool = ctx.task.pool(stage.data)

    def make_batch(params, step):
        idx = batch_indices(ctx, stage, len(pool), step)
        pairs = [ctx.task.demonstration_ids(pool[i]) for i in idx]
        batch = batches.pad_sequences([p for p, _ in pairs], [t for _, t in pairs], ctx.pad_id)
        return batch, {}

    return make_batch, num_steps(stage, len(pool))


def grpo_batches(ctx, stage, policy, teacher):
    pool = ctx.task.pool(stage.data)
    seed = _seed(ctx, stage, 0)
    G = stage.samples_per_prompt
    cfg = policy.cfg
    # pi_ref is the stage's starting point (paper §2.1), frozen: held in the compute dtype.
    ref_params = frozen_copy(cfg, policy.params) if stage.grpo.kl_coef > 0 else None
    sampling = stage.sampling
    answer_style = ctx.task.answer_style(stage.data)

    def make_batch(params, step):
        idx = batch_indices(ctx, stage, len(pool), step)
        prompts = [ctx.task.prompt_ids(pool[i]) for i in idx]
        rollout, stats = _sample(ctx, cfg, params, prompts, sampling, seed + step + 1, G)
        texts = batches.completion_texts(rollout, ctx.task.tokenizer)
        references = [pool[i]["answer"] for i in idx for _ in range(G)]
        rewards_B, reward_stats = grade_own_rows(ctx.grader, texts, references, answer_style)
        truncated_B = np.asarray(rollout.truncated)
        correct_B = rewards.zero_truncated(rewards_B, truncated_B)
        answered_B = np.array(
            [rewards.extract_answer(t, answer_style=answer_style) is not None for t in texts]
        )
        answered_B &= ~truncated_B
        rewards_B = np.maximum(correct_B, stage.grpo.format_reward * answered_B)
        batch = batches.rollout_batch(rollout)
        batch["advantages"] = np.asarray(
            losses.group_advantages(
                jnp.asarray(rewards_B), G, normalize_std=stage.grpo.normalize_std
            )
        )
        if sampling.temperature != 1.0:  # the sampler's log-probs are tempered; the trainer's not
            batch["old_logprobs"] = _score(ctx, cfg, params, batch)
        if ref_params is not None:
            batch["ref_logprobs"] = _score(ctx, cfg, ref_params, batch)
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


def _teacher_rollouts(ctx, stage, teacher, stage_dir: Path):
    """K teacher rollouts per prompt of the pool, generated once and cached (resume reuses them)."""
    cache = stage_dir / "teacher_rollouts.json"
    if cache.exists():
        return json.loads(cache.read_text())
    pool = ctx.task.pool(stage.data)
    seed = _seed(ctx, stage, 1)
    prompts_out, completions_out = [], []
    chunk = max(1, 256 // stage.samples_per_prompt)
    for start in range(0, len(pool), chunk):
        prompts = [ctx.task.prompt_ids(ex) for ex in pool[start : start + chunk]]
        rollout, _ = _sample(
            ctx,
            teacher.cfg,
            teacher.params,
            prompts,
            stage.sampling,
            seed + start,
            stage.samples_per_prompt,
        )
        P = rollout.prompt_mask.shape[1]
        tokens = np.asarray(rollout.tokens)
        for row, (pmask, cmask) in enumerate(
            zip(np.asarray(rollout.prompt_mask), np.asarray(rollout.completion_mask), strict=True)
        ):
            prompts_out.append(tokens[row, :P][pmask].tolist())
            completions_out.append(tokens[row, P:][cmask].tolist())
    data = {"prompts": prompts_out, "completions": completions_out}
    if jax.process_index() == 0:
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(cache)  # atomic: a kill never leaves half a cache behind
    return data


def forward_kl_batches(ctx, stage, policy, teacher, stage_dir):
    data = _teacher_rollouts(ctx, stage, teacher, stage_dir)
    n = len(data["prompts"])

    def make_batch(params, step):
        idx = batch_indices(ctx, stage, n, step)
        batch = batches.pad_sequences(
            [data["prompts"][i] for i in idx], [data["completions"][i] for i in idx], ctx.pad_id
        )
        return batch, {}

    return make_batch, num_steps(stage, n)


def on_policy_kl_batches(ctx, stage, policy, teacher):
    pool = ctx.task.pool(stage.data)
    seed = _seed(ctx, stage, 0)
    cfg = policy.cfg

    def make_batch(params, step):
        idx = batch_indices(ctx, stage, len(pool), step)
        prompts = [ctx.task.prompt_ids(pool[i]) for i in idx]
        rollout, stats = _sample(
            ctx, cfg, params, prompts, stage.sampling, seed + step + 1, stage.samples_per_prompt
        )
        batch = batches.rollout_batch(rollout)
        if stage.sampling.temperature != 1.0:
            batch["old_logprobs"] = _score(ctx, cfg, params, batch)
        return batch, stats

    return make_batch, num_steps(stage, len(pool))


# ----------------------------------------------------------------------------- evaluation


def evaluate_policy(ctx, cfg, params, out_dir: Path | None, tag: str) -> dict:
    """avg@k ± SE, pass@k, maj@k on every eval split; per-sample JSONL + summary JSON in out_dir."""
    e = ctx.eval_cfg
    results = {}
    for split in e.splits:
        pool = ctx.task.pool(split)
        if e.max_problems:
            pool = pool[: e.max_problems]
        completions, lengths, truncated = [], [], []
        for start in range(0, len(pool), e.batch_size):
            chunk = pool[start : start + e.batch_size]
            prompts = [ctx.task.prompt_ids(ex) for ex in chunk]
            rollout, _ = _sample(ctx, cfg, params, prompts, e, ctx.seed + 7919 + start, e.samples)
            texts = batches.completion_texts(rollout, ctx.task.tokenizer)
            completions += [texts[i : i + e.samples] for i in range(0, len(texts), e.samples)]
            lengths.append(np.asarray(rollout.lengths))
            truncated.append(np.asarray(rollout.truncated))
        truncated_PK = np.concatenate(truncated).reshape(len(pool), e.samples)
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
        summary[f"eval/{split}/length"] = float(np.concatenate(lengths).mean())
        summary[f"eval/{split}/truncated"] = float(truncated_PK.mean())
        if out_dir is not None and jax.process_index() == 0:
            evaluate.write_eval_outputs(
                str(Path(out_dir) / f"eval_{tag}" / split), scored.records, summary
            )
        results.update(summary)
    return results
