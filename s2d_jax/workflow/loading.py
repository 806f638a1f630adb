"""Which params a stage starts from, written in one place.

A reference is "base" (the role's Hugging Face checkpoint, or a fresh init of its toy preset), the
name of an earlier stage (its `params/` export), or a Hugging Face directory. The architecture
comes from `models.model_config` for all three, so the role's dtypes and preset check always
apply. With a mesh every parameter is created, read or restored directly onto its training shard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.model import decoder, hf_io
from s2d_jax.workflow import checkpoints, random_models
from s2d_jax.workflow.models import model_config
from s2d_jax.workflow.stages import Policy

if TYPE_CHECKING:
    from s2d_jax.workflow.config import StageConfig
    from s2d_jax.workflow.context import RunContext


def load_params(ctx: RunContext, role: str, ref: str, *, frozen: bool = False) -> Policy:
    """The architecture and params of `role` at reference `ref` (see the module docstring).

    `frozen` (a teacher, never updated) stores them in the role's compute dtype, cast as they are
    read."""
    spec = ctx.models[role]
    stage_dir = ctx.workdir / ref
    from_stage = ref != "base" and (
        (stage_dir / "DONE").exists() or (stage_dir / "params").exists()
    )
    if ref != "base" and not from_stage and not Path(ref).is_dir():
        raise FileNotFoundError(f"cannot load {ref!r}: {stage_dir}/params does not exist")
    checkpoint_dir = ref if ref != "base" and not from_stage else ""
    cfg = model_config(
        spec, vocab_size=ctx.task.tokenizer.vocab_size, checkpoint_dir=checkpoint_dir
    )
    if frozen:
        cfg = dataclasses.replace(cfg, param_dtype=cfg.compute_dtype)
    shardings = sh.param_shardings(ctx.mesh, cfg)
    if from_stage:
        params = checkpoints.load_exported_params(
            stage_dir, decoder.abstract_params(cfg), shardings
        )
    elif checkpoint_dir or spec.hf_path:
        path = checkpoint_dir or spec.hf_path
        params = hf_io.load_hf(path, dtype=cfg.param_dtype, shardings=shardings)[1]
    else:
        params = placement.init_params(ctx.mesh, cfg, random_models.init_key(ctx.seed, role))
    return Policy(cfg, params)


def load_teacher(ctx: RunContext, stage: StageConfig, student: Policy) -> Policy:
    """The frozen teacher of a distillation stage, checked to share the student's vocabulary."""
    teacher = load_params(ctx, "teacher", stage.teacher, frozen=True)
    if teacher.cfg.vocab_size != student.cfg.vocab_size:
        raise ValueError(
            f"{stage.name}: teacher vocab {teacher.cfg.vocab_size} != student vocab "
            f"{student.cfg.vocab_size}; distillation needs a shared tokenizer"
        )
    return teacher
