"""The driver: run `config.stages` in order, each reading earlier stages' exports.

    pipeline.run(config, workdir)

The config is parsed once (`config.parse`); below that nothing sees a ConfigDict. What a stage
does is its kind's record in `stages.KINDS`, so this driver never branches on the kind; baselines
and ablations are configs that choose stages and their inputs. A stage writes `workdir/<name>/`
(checkpoints, metrics.jsonl, TensorBoard, eval outputs, `params/` export, DONE); a finished stage
is skipped on rerun, a killed one resumes. A run holds `workdir/RUN_LOCK` (`run_lock.py`): a
second run on the same workdir fails at once. Everything runs on the mesh of `config.mesh`
(`distributed/placement.py`); every process runs this same code, and only process 0 writes
metrics, reports and exports.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from s2d_jax.data.task import Task, build_tokenizer
from s2d_jax.distributed import placement
from s2d_jax.grading import evaluate, rewards
from s2d_jax.model import hf_io
from s2d_jax.workflow import (
    budget,
    checkpoints,
    evaluation,
    loading,
    manifest,
    pools,
    probe,
    random_models,
    report,
    rerun,
    run_lock,
    stage_loop,
    stages,
)
from s2d_jax.workflow import config as config_lib
from s2d_jax.workflow import models as models_lib
from s2d_jax.workflow.config import RunConfig, StageConfig
from s2d_jax.workflow.context import RunContext


def validate(config) -> RunConfig:
    """Check every key, reference and path of a config; no file is written, nothing is computed."""
    return config_lib.parse(config)


def run(config, workdir, devices=None, *, accept_config_changes: bool = False) -> dict:
    """Validate everything, then run the stages; returns {stage name: summary}.

    The mesh spans `devices` (default: every device of every process). A rerun of a workdir
    checks the config against the one it ran with (`rerun.py`); `accept_config_changes` lets
    changes that touch only stages not yet started through.
    """
    workdir = Path(workdir)
    run_cfg = config_lib.parse(config)
    mesh = placement.build_mesh(run_cfg.mesh, devices)  # before any file: sizes are checked
    workdir.mkdir(parents=True, exist_ok=True)
    with run_lock.hold(workdir, enabled=jax.process_index() == 0):  # one process locks for all
        changes = rerun.check(workdir, run_cfg, accept_changes=accept_config_changes)
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
            rerun.record(workdir, run_cfg, changes)
        return _run_locked(run_cfg, workdir, mesh)


def _run_locked(run_cfg: RunConfig, workdir: Path, mesh) -> dict:
    """`run` once the workdir is locked."""
    models = random_models.materialize(run_cfg.models, workdir, run_cfg.seed)
    for spec in models.values():
        if spec.random_weights:  # the preset check, as for a given checkpoint
            models_lib.model_config(spec, vocab_size=None)
    models_lib.check_vocab(run_cfg.task, models)  # the random checkpoints' too
    task = Task(run_cfg.task, tokenizer_path(run_cfg, models, workdir))
    manifest.check_and_write(
        workdir, manifest.build(run_cfg, models, task, mesh), write=jax.process_index() == 0
    )
    summaries = {}
    grader_cfg = run_cfg.grader
    with rewards.Grader(workers=grader_cfg.workers, timeout_s=grader_cfg.timeout_s) as grader:
        ctx = RunContext(
            workdir, run_cfg.seed, run_cfg.nan_policy, task, models, run_cfg.eval, grader, mesh
        )
        check_prompt_caps(ctx, run_cfg.stages)
        for stage in run_cfg.stages:
            stage_dir = workdir / stage.name
            if checkpoints.is_done(stage_dir):
                summaries[stage.name] = checkpoints.done_summary(stage_dir)
                print(f"[{stage.name}] finished earlier: skipped")
                continue
            summaries[stage.name] = run_stage(ctx, stage, stage_dir)
            checkpoints.mark_done(stage_dir, summaries[stage.name])
            print(f"[{stage.name}] {_one_line(summaries[stage.name])}")
        c2 = probe.measure(ctx, run_cfg.probe, run_cfg.stages)  # every process: a collective
    if run_cfg.export_hf:  # every process: the params are gathered from all of them
        export_hf(ctx, run_cfg.stages, run_cfg.export_hf, workdir / "export_hf")
    if jax.process_index() == 0:
        labeled = labeled_examples(ctx, run_cfg.stages)
        text = report.write_report(
            workdir, run_cfg.report_rows, summaries, labeled, run_cfg.stages, c2
        )
        print(text)
    return summaries


def tokenizer_path(run_cfg: RunConfig, models: dict, workdir: Path) -> Path:
    """The run's tokenizer (`models.tokenizer_source`); the toy's is trained into the (shared)
    workdir once, by process 0."""
    source = models_lib.tokenizer_source(models)
    if jax.process_index() == 0:
        build_tokenizer(run_cfg.task, workdir, source)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("s2d_jax tokenizer")
    return build_tokenizer(run_cfg.task, workdir, source)


def check_prompt_caps(ctx: RunContext, stage_cfgs) -> None:
    """Every training stage's pool after its prompt-length cap, before any stage runs: a cap that
    leaves a pool empty fails now, not after the stages before it have trained."""
    for stage in stage_cfgs:
        if stages.KINDS[stage.kind].trains:
            pool = pools.stage_pool(ctx, stage)
            if pool.dropped:
                print(
                    f"[{stage.name}] dropped {pool.dropped} of the {pool.pool_size} prompts of "
                    f"{stage.data!r} longer than max_prompt_tokens={pool.max_prompt_tokens} "
                    f"(the longest: {pool.longest_dropped} tokens)"
                )


def run_stage(ctx: RunContext, stage: StageConfig, stage_dir: Path) -> dict:
    """One stage from its inputs to its summary (the caller marks it done)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    kind = stages.KINDS[stage.kind]
    policy = loading.load_params(ctx, stage.model, stage.init_from)
    if not kind.trains:
        summary = evaluation.evaluate_policy(ctx, policy.cfg, policy.params, stage_dir, "final")
        print(evaluate.format_table(summary))
        return summary
    teacher = loading.load_teacher(ctx, stage, policy) if kind.uses_teacher else None
    make_batch, total = kind.make_batches(ctx, stage, policy, teacher, stage_dir)
    step_cfg = stages.step_config(stage, total)
    cfg = policy.cfg
    state = placement.init_state(ctx.mesh, cfg, step_cfg.optimizer, policy.params)
    # The state holds float32 masters now; the batch makers keep only what they need (the GRPO
    # reference in the compute dtype), so the loaded copy can be freed.
    del policy
    update = placement.jit_update(
        ctx.mesh,
        step_cfg,
        cfg,
        state,
        teacher.cfg if teacher else None,
        teacher.params if teacher else None,
    )
    state = _train(ctx, stage, stage_dir, cfg, state, make_batch, update, total)
    updates = int(jax.device_get(state.step))  # below `total` when an early stop ended it
    summary = stage_loop.stage_summary(stage_dir)
    if stage.stop.accuracy:  # the last check's, the one that ended the stage if it stopped
        summary["stop/holdout_accuracy"] = stage_loop.last_value(stage_dir, "stop/holdout_accuracy")
        summary["stop/stopped_early"] = float(updates < total)
    summary.update(kind.diagnostics(ctx, stage) if kind.diagnostics else {})
    summary.update(evaluation.evaluate_policy(ctx, cfg, state.params, stage_dir, "final"))
    summary.update(pools.stage_pool(ctx, stage).metrics())
    summary.update(budget.stage_budget(stage_dir, cfg, teacher.cfg if teacher else None))
    checkpoints.export_params(stage_dir, state.params, {"role": stage.model, "steps": updates})
    return summary


def _train(ctx: RunContext, stage: StageConfig, stage_dir, cfg, state, make_batch, update, total):
    """The stage's training loop (resumable), with its periodic evaluation and early stop."""
    state, _ = stage_loop.run_loop(
        stage_dir=stage_dir,
        state=state,
        total_steps=total,
        save_every=stage.save_every,
        make_batch=make_batch,
        update=update,
        periodic=periodic_checks(ctx, stage, stage_dir, cfg),
        nan_policy=ctx.nan_policy,
        max_skipped_frac=stage.max_skipped_frac,
        max_consecutive_skips=stage.max_consecutive_skips,
        desc=stage.name,
    )
    return state


def periodic_checks(ctx: RunContext, stage: StageConfig, stage_dir: Path, cfg):
    """`(params, step) -> (metrics, stop)` after each update: the evaluation every `eval_every`
    steps, and an early stop's held-out check every `stop.every`."""
    held_out = stages.holdout_accuracy(ctx, stage, cfg) if stage.stop.accuracy else None

    def checks(params, step):
        values, stop = {}, False
        if stage.eval_every and step % stage.eval_every == 0:
            values |= evaluation.evaluate_policy(ctx, cfg, params, stage_dir, f"step{step}")
        if held_out is not None and step % stage.stop.every == 0:
            values |= held_out(params)
            stop = values["stop/holdout_accuracy"] >= stage.stop.accuracy
        return values, stop

    return checks


def export_hf(ctx: RunContext, stage_cfgs, name: str, out: Path) -> None:
    """The named stage's params as a Hugging Face checkpoint (+ tokenizer files when it has them)."""
    stage = next(s for s in stage_cfgs if s.name == name)  # checked by config.parse
    policy = loading.load_params(ctx, stage.model, name)
    params = policy.params
    if ctx.mesh is not None:
        params = placement.to_host(params)  # every process takes part in the gather
    if jax.process_index() != 0:
        return
    tok = ctx.task.tokenizer
    hf_io.save_hf(out, policy.cfg, params, eos_token_id=list(tok.eos_ids), pad_token_id=tok.pad_id)
    if tok.kind == "hf":
        tok.backend.save_pretrained(out)
    print(f"exported {name} to {out} (transformers.AutoModelForCausalLM.from_pretrained loads it)")


def labeled_examples(ctx: RunContext, stage_cfgs) -> dict[str, int]:
    """Distinct labeled examples (answers used as rewards) behind each stage, its inputs included."""
    used: dict[str, set] = {}
    for stage in stage_cfgs:
        ids = set().union(*(used.get(ref, set()) for ref in (stage.init_from, stage.teacher)))
        if stages.KINDS[stage.kind].uses_labels:
            pool = pools.stage_pool(ctx, stage).examples
            for step in range(stages.num_steps(stage, len(pool))):
                idx = stages.batch_indices(ctx, stage, len(pool), step)
                ids |= {pool[i]["id"] for i in idx}
        used[stage.name] = ids
    return {name: len(ids) for name, ids in used.items()}


def _one_line(summary: dict) -> str:
    keys = [k for k in summary if "/avg@" in k and k.count("/") == 2] + [
        "train/loss",
        "grpo/reward",
    ]
    return json.dumps({k: round(summary[k], 4) for k in keys if k in summary})
