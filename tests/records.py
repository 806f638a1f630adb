"""The learn/ records built from the experiments' defaults (configs/common.py), with overrides: the
library's records have no defaults of their own, so tests take the ones a config would give."""

from configs import common
from s2d_jax.learn.objectives import GrpoConfig
from s2d_jax.learn.optimizer import OptimizerConfig
from s2d_jax.learn.steps import StepConfig


def optimizer_config(**overrides) -> OptimizerConfig:
    return OptimizerConfig(**(common.optim().to_dict() | overrides))


def grpo_config(**overrides) -> GrpoConfig:
    return GrpoConfig(**(common.grpo().to_dict() | overrides))


def step_config(objective: str, optimizer=None, grpo=None, **overrides) -> StepConfig:
    """A StepConfig as a stage with `common`'s defaults gets it; micro_batches, chunk_size and
    vocab_chunk may be overridden."""
    stage = common.sft_stage("student", "base", "demos", 1, 1, 1e-6)
    fields = dict(
        micro_batches=stage.micro_batches,
        chunk_size=stage.chunk_size,
        vocab_chunk=stage.vocab_chunk,
    )
    return StepConfig(
        objective,
        optimizer or optimizer_config(),
        grpo=grpo or grpo_config(),
        **(fields | overrides),
    )
