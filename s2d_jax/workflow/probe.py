"""Condition C2 on one fixed probe set, at every stage boundary of the student.

    c2 = probe.measure(ctx, run_cfg.probe, run_cfg.stages)  # {stage: {"teacher": ref, "c2/...": x}}

The probe set is made once per run: the first `prompts` prompts of pool `data`, sampled `samples`
times by the teacher at reference `teacher` and by the student at reference `student` (references
as a stage's `init_from`: "base" or a stage name), with a seed of its own (PROBE_SEED), so every
arm of a run and every training seed of a sweep reads the same rows whenever those references
are the same models (the paper's arms: both "base").

A training stage of the student role has two boundaries, its start (`init_from`) and its end (its
export). Each is measured against the stage's teacher (`arm_teacher`): a distillation stage's own
`teacher`; else the teacher of the distillation stage its start descends from (Stage 3 after a
bridge); else the probe's teacher (direct GRPO, the warm-start). Per boundary, over the probe set:
  kl_ts         mean per-token KL(T || S), full vocabulary, on the teacher rows (what 2a lowers)
  kl_st         mean per-token KL(S || T) on the student rows (what 2b lowers)
  logratio_var  variance of log pT(y) - log pS(y) over the student rows' sampled tokens: the spread
                of on-policy distillation's per-token signal
The paper's C2 asks that the student's start be close enough to the teacher for 2b: these are
the figures to read at the start of each on-policy stage. Measured after every stage has run
(every checkpoint exists then), each (student, teacher) pair once; `probe/c2.json` keeps the pairs
as they are measured, so a rerun measures only the pairs it lacks, and `probe/rows_<role>.npz`
the probe rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import jax
import numpy as np

from s2d_jax.distributed import placement
from s2d_jax.learn import steps
from s2d_jax.workflow import batches, loading, stages

if TYPE_CHECKING:
    from s2d_jax.workflow.config import ProbeConfig, StageConfig
    from s2d_jax.workflow.context import RunContext

PROBE_SEED = 1_234_567  # never the training seed: seeds of a sweep share the probe set
STATS = ("kl_ts", "kl_st", "logratio_var")


def arm_teacher(stage: StageConfig, by_name: dict, fallback: str) -> str:
    """The teacher a student stage is measured against (see the module docstring)."""
    while True:
        if stages.KINDS[stage.kind].uses_teacher:
            return stage.teacher
        if stage.init_from not in by_name:
            return fallback
        stage = by_name[stage.init_from]


def boundaries(probe_cfg: ProbeConfig, stage_cfgs) -> dict[str, tuple[str, str, str]]:
    """{stage: (start reference, end reference, teacher reference)} of every training stage of
    the student role, in run order."""
    by_name = {s.name: s for s in stage_cfgs}
    return {
        s.name: (s.init_from, s.name, arm_teacher(s, by_name, probe_cfg.teacher))
        for s in stage_cfgs
        if s.model == "student" and stages.KINDS[s.kind].trains
    }


def probe_rows(ctx: RunContext, probe_cfg: ProbeConfig, role: str) -> dict:
    """The probe rows of `role` (at the probe's reference for it) as a host batch: tokens,
    attention_mask, loss_mask on the completion tokens."""
    ref = probe_cfg.teacher if role == "teacher" else probe_cfg.student
    policy = loading.load_params(ctx, role, ref, frozen=True)
    pool = ctx.task.pool(probe_cfg.data)[: probe_cfg.prompts]
    prompts = [ctx.task.prompt_ids(example) for example in pool]
    rollout, _ = batches.sample(
        ctx, policy.cfg, policy.params, prompts, probe_cfg.sampling, PROBE_SEED, probe_cfg.samples
    )
    return batches.pad_sequences(*batches.rollout_rows(rollout), ctx.pad_id)


def pair_stats(ctx: RunContext, student, teacher, rows: dict, chunk_size: int) -> dict:
    """`STATS` of one (student, teacher) pair of `stages.Policy` on the probe rows
    {"teacher": batch, "student": batch}."""

    def token_stats(batch):
        tokens, mask = placement.put_rows(ctx.mesh, (batch["tokens"], batch["attention_mask"]))
        stats = steps.score_kl(
            student.cfg, student.params, teacher.cfg, teacher.params, tokens, mask,
            chunk_size=chunk_size,
        )  # fmt: skip
        stats = placement.to_host(stats)  # every process takes part in a gather
        return {k: np.asarray(v, np.float64) for k, v in stats.items()}, batch["loss_mask"] > 0

    on_teacher, t_mask = token_stats(rows["teacher"])
    on_student, s_mask = token_stats(rows["student"])
    log_ratio = (on_student["teacher_logprob"] - on_student["student_logprob"])[s_mask]
    return {
        "kl_ts": float(on_teacher["forward"][t_mask].mean()),
        "kl_st": float(on_student["reverse"][s_mask].mean()),
        "logratio_var": float(log_ratio.var()),
    }


def _pair_key(student_ref: str, teacher_ref: str) -> str:
    return f"{student_ref} | {teacher_ref}"


def measure(ctx: RunContext, probe_cfg: ProbeConfig, stage_cfgs) -> dict[str, dict]:
    """C2 at every boundary (see the module docstring); {} when the probe is off (data "")."""
    if not probe_cfg.data:
        return {}
    bounds = boundaries(probe_cfg, stage_cfgs)
    out_dir = ctx.workdir / "probe"
    cache_path = out_dir / "c2.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    pairs = sorted({(ref, t) for start, end, t in bounds.values() for ref in (start, end)})
    todo = [(s, t) for s, t in pairs if _pair_key(s, t) not in cache]
    if todo:
        writer = jax.process_index() == 0
        if writer:
            out_dir.mkdir(parents=True, exist_ok=True)
        rows = {role: probe_rows(ctx, probe_cfg, role) for role in ("teacher", "student")}
        if writer:
            for role, batch in rows.items():
                np.savez(out_dir / f"rows_{role}.npz", **batch)
        for teacher_ref in sorted({t for _, t in todo}):
            teacher = loading.load_params(ctx, "teacher", teacher_ref, frozen=True)
            for student_ref in [s for s, t in todo if t == teacher_ref]:
                # The student as its stages train it: float32 masters, compute-dtype forward
                # (the same logits as a frozen copy). With both models' params in bfloat16 on an
                # fsdp mesh of fake CPU devices, XLA:CPU's collectives in score_kl deadlocked
                # (configs/paper.py:arm=replay,pair=tiny on 8 devices, every time).
                student = loading.load_params(ctx, "student", student_ref)
                stats = pair_stats(ctx, student, teacher, rows, probe_cfg.chunk_size)
                cache[_pair_key(student_ref, teacher_ref)] = stats
                if writer:  # each pair as soon as it is measured: a rerun skips it
                    cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return {
        stage: {
            "teacher": teacher_ref,
            **{
                f"c2/{stat}_{when}": cache[_pair_key(ref, teacher_ref)][stat]
                for when, ref in (("start", start), ("end", end))
                for stat in STATS
            },
        }
        for stage, (start, end, teacher_ref) in bounds.items()
    }
