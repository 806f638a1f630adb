"""A stage's pool: the task's examples of `stage.data` less the prompts over the stage's cap.

    pool = pools.stage_pool(ctx, stage)      # pool.examples: what the batch makers draw from

A prompt longer than `stage.max_prompt_tokens` (its tokens as `task.prompt_ids` gives them) is
dropped from the pool, never truncated: a truncated problem is another problem, and its answer
would no longer follow. The number dropped goes into the stage's summary (`metrics`) and the
report; 0 means no cap. The kept examples keep the pool's order, so with no cap, or none over it,
every batch is the one the full pool gives.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from s2d_jax.data.task import Task

if TYPE_CHECKING:
    from s2d_jax.workflow.config import StageConfig
    from s2d_jax.workflow.context import RunContext


@dataclasses.dataclass(frozen=True)
class StagePool:
    examples: tuple[dict, ...]  # the kept ones, in pool order
    pool_size: int  # examples of the pool before the cap
    max_prompt_tokens: int  # 0: no cap
    longest_dropped: int  # tokens of the longest dropped prompt (0: none dropped)

    @property
    def dropped(self) -> int:
        return self.pool_size - len(self.examples)

    def metrics(self) -> dict[str, float]:
        return {
            "data/pool_size": float(self.pool_size),
            "data/prompts_dropped": float(self.dropped),
            "data/max_prompt_tokens": float(self.max_prompt_tokens),
        }


def keep_short(examples, lengths, max_tokens: int) -> tuple[tuple, int]:
    """(the examples whose length is at most max_tokens, in order; the longest length dropped)."""
    kept = tuple(ex for ex, n in zip(examples, lengths, strict=True) if n <= max_tokens)
    return kept, max((n for n in lengths if n > max_tokens), default=0)


@functools.lru_cache(maxsize=32)  # tokenizing a pool once per run: every batch maker asks for it
def _capped(task: Task, name: str, max_prompt_tokens: int) -> StagePool:
    examples = task.pool(name)
    if not max_prompt_tokens:
        return StagePool(examples, len(examples), 0, 0)
    lengths = [len(task.prompt_ids(ex)) for ex in examples]
    kept, longest = keep_short(examples, lengths, max_prompt_tokens)
    return StagePool(kept, len(examples), max_prompt_tokens, longest)


def stage_pool(ctx: RunContext, stage: StageConfig) -> StagePool:
    """The examples a stage draws from; a ValueError naming the stage, pool and cap when the cap
    leaves none."""
    pool = _capped(ctx.task, stage.data, stage.max_prompt_tokens)
    if not pool.examples:
        raise ValueError(
            f"stage {stage.name!r}: every one of the {pool.pool_size} prompts of pool "
            f"{stage.data!r} is longer than config.stages.{stage.name}.max_prompt_tokens = "
            f"{stage.max_prompt_tokens} tokens; raise the cap (0: none) or choose another pool"
        )
    return pool
