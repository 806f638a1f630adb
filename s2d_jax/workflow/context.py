"""What every stage of one run shares, built once by `pipeline.run` from the parsed config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from s2d_jax.data.task import Task
from s2d_jax.grading.rewards import Grader

if TYPE_CHECKING:  # annotations only: config.py imports the stage kinds, which use this record
    from s2d_jax.workflow.config import EvalConfig
    from s2d_jax.workflow.models import ModelSpec


@dataclasses.dataclass(frozen=True)
class RunContext:
    workdir: Path
    seed: int
    nan_policy: str
    task: Task
    models: dict[str, ModelSpec]  # random_weights roles point at their written checkpoints
    eval: EvalConfig
    grader: Grader
    mesh: jax.sharding.Mesh | None  # None: one device, nothing sharded

    @property
    def pad_id(self) -> int:
        return self.task.tokenizer.pad_id
