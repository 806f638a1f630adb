"""From examples and sampler rollouts to train batches; which examples a step uses; sampling and
scoring a batch on the run's mesh.

Every batch is a pure function of `(seed, step)` (plus the params at that step), so a resumed run
needs only the step number to continue exactly where it stopped.

Batch layout (the trainer's convention): tokens [B, T] = left-padded prompt then completion,
attention_mask [B, T]; per-target arrays are [B, T-1], aligned with targets tokens[:, 1:].
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.learn import steps
from s2d_jax.rollout import sampler

if TYPE_CHECKING:
    from s2d_jax.workflow.context import RunContext


def example_indices(pool_size: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Indices of the `batch` examples of `step`: epochs of seeded permutations, no repeats within one.

    Works for any step without replaying earlier ones (a function of (seed, step) only).
    """
    start, stop = step * batch, (step + 1) * batch
    out = []
    for epoch in range(start // pool_size, (stop - 1) // pool_size + 1):
        order = np.random.default_rng([seed, epoch]).permutation(pool_size)
        lo, hi = max(start, epoch * pool_size), min(stop, (epoch + 1) * pool_size)
        out.append(order[lo - epoch * pool_size : hi - epoch * pool_size])
    return np.concatenate(out)


def pad_sequences(prompts: list[list[int]], targets: list[list[int]], pad_id: int) -> dict:
    """Left-padded prompts + right-padded targets -> a batch with loss on target tokens.

    Returns tokens [B, P+N], attention_mask [B, P+N], loss_mask [B, P+N-1] float32, where P and
    N are the longest prompt and target rounded up to a `sampler.bucket` (a jitted step compiles
    once per batch shape; buckets keep that to a handful per stage).
    """
    P = sampler.bucket(max(len(p) for p in prompts))
    N = sampler.bucket(max(len(t) for t in targets))
    B = len(prompts)
    tokens = np.full((B, P + N), pad_id, np.int32)
    mask = np.zeros((B, P + N), bool)
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        tokens[i, P - len(p) : P] = p
        tokens[i, P : P + len(t)] = t
        mask[i, P - len(p) : P + len(t)] = True
    loss_mask = np.zeros((B, P + N - 1), np.float32)
    loss_mask[:, P - 1 :] = mask[:, P:]
    return {"tokens": tokens, "attention_mask": mask, "loss_mask": loss_mask}


def rollout_batch(rollout: sampler.Rollout) -> dict:
    """A sampler Rollout -> tokens, attention_mask, loss_mask [B, T-1], old_logprobs [B, T-1]."""
    completion_mask = np.asarray(rollout.completion_mask)
    prompt_mask = np.asarray(rollout.prompt_mask)
    B, P = prompt_mask.shape
    loss_mask = np.zeros((B, rollout.tokens.shape[1] - 1), np.float32)
    loss_mask[:, P - 1 :] = completion_mask
    old_logprobs = np.zeros_like(loss_mask)
    old_logprobs[:, P - 1 :] = np.where(completion_mask, np.asarray(rollout.logprobs), 0.0)
    return {
        "tokens": np.asarray(rollout.tokens),
        "attention_mask": np.concatenate([prompt_mask, completion_mask], axis=1),
        "loss_mask": loss_mask,
        "old_logprobs": old_logprobs,
    }


def rollout_rows(rollout: sampler.Rollout) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each row's prompt tokens (padding dropped) and completion tokens (EOS kept, pad dropped)."""
    P = rollout.prompt_mask.shape[1]
    tokens = np.asarray(rollout.tokens)
    prompts = [row[:P][m] for row, m in zip(tokens, np.asarray(rollout.prompt_mask), strict=True)]
    completions = [
        row[P:][m] for row, m in zip(tokens, np.asarray(rollout.completion_mask), strict=True)
    ]
    return prompts, completions


def completion_texts(rollout: sampler.Rollout, tokenizer) -> list[str]:
    """Decoded completions (EOS and padding dropped by the tokenizer)."""
    P = rollout.prompt_mask.shape[1]
    tokens = np.asarray(rollout.tokens)[:, P:]
    mask = np.asarray(rollout.completion_mask)
    return [tokenizer.decode(row[m]) for row, m in zip(tokens, mask, strict=True)]


def sample(ctx: RunContext, cfg, params, prompts, sampling, seed: int, num_samples: int):
    """A rollout of every prompt, as host arrays on every process, and its stats.

    `sampling` is a stage's SamplingConfig or the EvalConfig (both carry the decoding fields)."""
    tok = ctx.task.tokenizer
    t0 = time.perf_counter()
    rollout = sampler.generate(
        cfg,
        placement.sampling_params(ctx.mesh, cfg, params),
        prompts,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        eos_id=tok.eos_ids,
        pad_id=tok.pad_id,
        seed=seed,
        num_samples=num_samples,
        mesh=ctx.mesh,
        data_axis=sh.BATCH_AXES,
        engine=sampling.engine,
        kv_budget_bytes=int(sampling.kv_budget_gib * 2**30) or None,
        decode_attention=sampling.decode_attention,
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


def score(ctx: RunContext, cfg, params, batch, stage) -> np.ndarray:
    """Log-probs [B, T-1] of a host batch's tokens under frozen `params` (rows over the mesh), in
    the stage's micro-batches: the pass holds no more activations than the stage's train step."""
    tokens, mask = placement.put_rows(ctx.mesh, (batch["tokens"], batch["attention_mask"]))
    logprobs = steps.score_tokens(
        cfg,
        params,
        tokens,
        mask,
        chunk_size=stage.chunk_size,
        micro_batches=stage.micro_batches,
        mesh=ctx.mesh,
    )
    return placement.to_host(logprobs)
