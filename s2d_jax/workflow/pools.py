"""A stage's pool: the task's examples of `stage.data` less the prompts over the stage's cap.

    pool = pools.stage_pool(ctx, stage)      # pool.examples: what the batch makers draw from

A prompt longer than `stage.max_prompt_tokens` (its tokens as `task.prompt_ids` gives them) is
dropped from the pool, never truncated: a truncated problem is another problem, and its answer
would no longer follow. The number dropped goes into the stage's summary (`metrics`) and the
report; 0 means no cap. The kept examples keep the pool's order, so with no cap, or none over it,
every batch is the one the full pool gives.

A stage that stops early (`stage.stop`, sft only) holds `stop.holdout` examples of its pool out
of training to check its accuracy on; which ones is a function of the task's `split_seed` and the
pool's name only, so seeds of a sweep that share a split also share the held-out examples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

from s2d_jax.data.task import Task

if TYPE_CHECKING:
    from s2d_jax.workflow.config import StageConfig
    from s2d_jax.workflow.context import RunContext


@dataclasses.dataclass(frozen=True)
class StagePool:
    examples: tuple[dict, ...]  # the kept ones the stage trains on, in pool order
    pool_size: int  # examples of the pool before the cap
    max_prompt_tokens: int  # 0: no cap
    longest_dropped: int  # tokens of the longest dropped prompt (0: none dropped)
    holdout: tuple[dict, ...] = ()  # kept examples held out of training (an early stop's check)

    @property
    def dropped(self) -> int:
        return self.pool_size - len(self.examples) - len(self.holdout)

    def metrics(self) -> dict[str, float]:
        return {
            "data/pool_size": float(self.pool_size),
            "data/prompts_dropped": float(self.dropped),
            "data/max_prompt_tokens": float(self.max_prompt_tokens),
            "data/held_out": float(len(self.holdout)),
        }


def keep_short(examples, lengths, max_tokens: int) -> tuple[tuple, int]:
    """(the examples whose length is at most max_tokens, in order; the longest length dropped)."""
    kept = tuple(ex for ex, n in zip(examples, lengths, strict=True) if n <= max_tokens)
    return kept, max((n for n in lengths if n > max_tokens), default=0)


def hold_out(examples: tuple, count: int, split_seed: int, name: str) -> tuple[tuple, tuple]:
    """(the examples not held out, in order; `count` held out, in order), drawn by
    (split_seed, name) alone."""
    if count >= len(examples):
        raise ValueError(
            f"pool {name!r}: stop.holdout = {count} leaves none of its {len(examples)} examples "
            "to train on"
        )
    rng = np.random.default_rng([split_seed, *name.encode()])
    held = np.zeros(len(examples), bool)
    held[rng.permutation(len(examples))[:count]] = True
    return (
        tuple(ex for ex, h in zip(examples, held, strict=True) if not h),
        tuple(ex for ex, h in zip(examples, held, strict=True) if h),
    )


@functools.lru_cache(maxsize=32)  # tokenizing a pool once per run: every batch maker asks for it
def _capped(task: Task, name: str, max_prompt_tokens: int, holdout: int) -> StagePool:
    examples = task.pool(name)
    size, longest = len(examples), 0
    if max_prompt_tokens:
        lengths = [len(task.prompt_ids(ex)) for ex in examples]
        examples, longest = keep_short(examples, lengths, max_prompt_tokens)
    held: tuple = ()
    if holdout:
        examples, held = hold_out(examples, holdout, task.cfg.split_seed, name)
    return StagePool(examples, size, max_prompt_tokens, longest, held)


def stage_pool(ctx: RunContext, stage: StageConfig) -> StagePool:
    """The examples a stage draws from; a ValueError naming the stage, pool and cap when the cap
    leaves none."""
    holdout = stage.stop.holdout if stage.stop.accuracy else 0
    pool = _capped(ctx.task, stage.data, stage.max_prompt_tokens, holdout)
    if not pool.examples:
        raise ValueError(
            f"stage {stage.name!r}: every one of the {pool.pool_size} prompts of pool "
            f"{stage.data!r} is longer than config.stages.{stage.name}.max_prompt_tokens = "
            f"{stage.max_prompt_tokens} tokens; raise the cap (0: none) or choose another pool"
        )
    return pool
