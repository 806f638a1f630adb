"""The driver: run `config.stages` in order, each reading earlier stages' exports.

    pipeline.run(config, workdir)

Stage kinds live in one explicit dict, `STAGES`; baselines and ablations are configs that choose
stages and their inputs. A stage writes `workdir/<name>/` (checkpoints, metrics.jsonl, TensorBoard,
eval outputs, `params/` export, DONE); a finished stage is skipped on rerun, a killed one resumes.
A run holds `workdir/RUN_LOCK` (`run_lock.py`): a second run on the same workdir fails at once.
Everything runs on the mesh of `config.mesh` (`placement.py`); every process runs this same code,
and only process 0 writes metrics, reports and exports.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from s2d_jax.data.task import Task, TaskConfig, build_tokenizer, resolve_pool
from s2d_jax.distributed import placement
from s2d_jax.distributed import sharding as sh
from s2d_jax.grading import evaluate, rewards
from s2d_jax.learn import steps
from s2d_jax.model import decoder, hf_io
from s2d_jax.workflow import (
    checkpoints,
    random_models,
    report,
    run_lock,
    stage_loop,
    stages,
)
from s2d_jax.workflow.config import (
    EvalConfig,
    ModelSpec,
    StageConfig,
    parse_eval,
    parse_mesh,
    parse_models,
    parse_stages,
    parse_task,
)

STAGES = {
    "sft": stages.sft_batches,
    "grpo": stages.grpo_batches,
    "forward_kl": stages.forward_kl_batches,
    "on_policy_kl": stages.on_policy_kl_batches,
    "eval": None,  # no training: evaluate init_from
}


@dataclasses.dataclass
class Context:
    """What every stage of one run shares."""

    workdir: Path
    seed: int
    task: Task
    models: dict
    eval_cfg: EvalConfig
    grader: rewards.Grader
    nan_policy: str
    mesh: jax.sharding.Mesh | None = None  # None: one device, nothing sharded

    @property
    def pad_id(self) -> int:
        return self.task.tokenizer.pad_id


@dataclasses.dataclass(frozen=True)
class Plan:
    """A validated config: what `run` will do, known before any compute."""

    models: dict
    stages: list
    eval_cfg: EvalConfig
    task_cfg: TaskConfig
    mesh_cfg: object  # sharding.MeshConfig, or None when the config has no `mesh`


def validate(config) -> Plan:
    """Check every key, reference and path of a config; no file is written, nothing is computed."""
    models = parse_models(config)
    stage_cfgs = parse_stages(config, models)
    eval_cfg = parse_eval(config)
    task_cfg = parse_task(config)
    mesh_cfg = parse_mesh(config)
    for spec in models.values():
        if spec.hf_path:
            model_config(spec, vocab_size=None)  # reads config.json, checks the preset's dims
    # Every pool a stage or the evaluation reads exists (checked by name, no data read), so a
    # typo fails now and not after a stage has trained.
    pools = [(f"config.stages.{s.name}.data", s.data) for s in stage_cfgs if s.kind != "eval"]
    for where, name in pools + [("config.eval.splits", split) for split in eval_cfg.splits]:
        try:
            resolve_pool(task_cfg, name)
        except KeyError as error:
            raise KeyError(f"{where}: {error.args[0]}") from None
    if config.export_hf and config.export_hf not in [s.name for s in stage_cfgs]:
        raise KeyError(f"config.export_hf = {config.export_hf!r} is not a stage of this config")
    if config.nan_policy not in ("skip", "raise"):
        raise ValueError(f"config.nan_policy = {config.nan_policy!r}; expected 'skip' or 'raise'")
    return Plan(models, stage_cfgs, eval_cfg, task_cfg, mesh_cfg)


def run(config, workdir, devices=None) -> dict:
    """Validate everything, then run the stages; returns {stage name: summary}.

    The mesh spans `devices` (default: every device of every process).
    """
    workdir = Path(workdir)
    plan = validate(config)
    mesh = placement.build_mesh(plan.mesh_cfg, devices)  # before any file: sizes are checked
    workdir.mkdir(parents=True, exist_ok=True)
    with run_lock.hold(workdir, enabled=jax.process_index() == 0):  # one process locks for all
        return _run_locked(config, workdir, plan, mesh)


def _run_locked(config, workdir: Path, plan: Plan, mesh) -> dict:
    """`run` once the workdir is locked."""
    models, stage_cfgs, eval_cfg, task_cfg = plan.models, plan.stages, plan.eval_cfg, plan.task_cfg
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    models = random_models.materialize(models, workdir, config.seed)
    for spec in models.values():
        if spec.random_weights:
            model_config(spec, vocab_size=None)  # the preset check, as for a given checkpoint
    # Teacher and student share one tokenizer (distillation needs it); the student's comes first.
    tokenizer_source = next(
        (m.hf_path for _, m in sorted(models.items(), reverse=True) if m.hf_path), ""
    )
    if jax.process_index() == 0:  # the toy's tokenizer is trained into the (shared) workdir once
        build_tokenizer(task_cfg, workdir, tokenizer_source)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("s2d_jax tokenizer")
    task = Task(task_cfg, build_tokenizer(task_cfg, workdir, tokenizer_source))
    summaries = {}
    with rewards.Grader(workers=config.grader_workers, timeout_s=config.grader_timeout_s) as grader:
        ctx = Context(workdir, config.seed, task, models, eval_cfg, grader, config.nan_policy, mesh)
        for stage in stage_cfgs:
            stage_dir = workdir / stage.name
            if checkpoints.is_done(stage_dir):
                summaries[stage.name] = checkpoints.done_summary(stage_dir)
                print(f"[{stage.name}] finished earlier: skipped")
                continue
            summaries[stage.name] = run_stage(ctx, stage, stage_dir)
            checkpoints.mark_done(stage_dir, summaries[stage.name])
            print(f"[{stage.name}] {_one_line(summaries[stage.name])}")
    if config.export_hf:  # every process: the params are gathered from all of them
        export_hf(ctx, stage_cfgs, config.export_hf, workdir / "export_hf")
    if jax.process_index() == 0:
        text = report.write_report(
            workdir, config.report_rows, summaries, labeled_examples(ctx, stage_cfgs)
        )
        print(text)
    return summaries


def model_config(spec: ModelSpec, vocab_size: int | None) -> decoder.ModelConfig:
    """A role's architecture: from its checkpoint's config.json, or its toy preset sized to the
    task's tokenizer (`vocab_size`). A checkpoint must match its preset's dimensions if given."""
    dtypes = dict(param_dtype=spec.dtype, compute_dtype=spec.compute_dtype or spec.dtype)
    if spec.hf_path:
        cfg = decoder.ModelConfig.from_hf_config(hf_io.read_hf_config(spec.hf_path), **dtypes)
        if spec.preset:
            expected = decoder.ModelConfig.preset(spec.preset, **dtypes)
            differ = _differing_fields(cfg, expected, ignore=("max_seq_len",))
            if differ:
                raise ValueError(
                    f"config.models.{spec.role}.hf_path = {spec.hf_path} is not a {spec.preset} "
                    "checkpoint: "
                    + ", ".join(
                        f"{f} {getattr(cfg, f)!r} != {getattr(expected, f)!r}" for f in differ
                    )
                )
        return cfg
    return decoder.ModelConfig.preset(spec.preset, vocab_size=vocab_size, **dtypes)


def _differing_fields(a, b, ignore=()) -> list[str]:
    """Names of the dataclass fields where a and b differ; floats compare to a relative 1e-6,
    since checkpoints converted through float32 (GGUF) store e.g. 1e-5 as 9.9999997e-06."""
    differ = []
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name in ignore:
            continue
        same = math.isclose(x, y, rel_tol=1e-6) if isinstance(x, float) else x == y
        if not same:
            differ.append(field.name)
    return differ


def load_params(ctx: Context, role: str, ref: str, *, frozen: bool = False):
    """Params for a reference: "base" (HF checkpoint or fresh init), an earlier stage, an HF dir.

    `frozen` (a teacher, never updated) stores them in the role's compute dtype, cast as they are
    read. With a mesh each parameter is created, read or restored directly onto its TRAIN_RULES
    shard.
    """
    spec = ctx.models[role]
    cfg = model_config(spec, ctx.task.tokenizer.vocab_size)
    if frozen:
        cfg = dataclasses.replace(cfg, param_dtype=cfg.compute_dtype)
    shardings = sh.param_shardings(ctx.mesh, cfg)
    if ref == "base":
        if spec.hf_path:
            return cfg, hf_io.load_hf(spec.hf_path, dtype=cfg.param_dtype, shardings=shardings)[1]
        return cfg, placement.init_params(ctx.mesh, cfg, random_models.init_key(ctx.seed, role))
    stage_dir = ctx.workdir / ref
    if (stage_dir / "DONE").exists() or (stage_dir / "params").exists():
        target = decoder.abstract_params(cfg)
        return cfg, checkpoints.load_exported_params(stage_dir, target, shardings)
    if Path(ref).is_dir():
        dtypes = dict(param_dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype)
        hf_cfg = decoder.ModelConfig.from_hf_config(hf_io.read_hf_config(ref), **dtypes)
        hf_shardings = sh.param_shardings(ctx.mesh, hf_cfg)
        return hf_cfg, hf_io.load_hf(ref, dtype=cfg.param_dtype, shardings=hf_shardings)[1]
    raise FileNotFoundError(f"cannot load {ref!r}: {stage_dir}/params does not exist")


def run_stage(ctx: Context, stage: StageConfig, stage_dir: Path) -> dict:
    stage_dir.mkdir(parents=True, exist_ok=True)
    cfg, params = load_params(ctx, stage.model, stage.init_from)
    if stage.kind == "eval":
        summary = stages.evaluate_policy(ctx, cfg, params, stage_dir, "final")
        print(evaluate.format_table(summary))
        return summary
    policy = stages.Policy(cfg, params)
    teacher = None
    if stage.kind in ("forward_kl", "on_policy_kl"):
        teacher = stages.Policy(*load_params(ctx, "teacher", stage.teacher, frozen=True))
        if teacher.cfg.vocab_size != cfg.vocab_size:
            raise ValueError(
                f"{stage.name}: teacher vocab {teacher.cfg.vocab_size} != student vocab "
                f"{cfg.vocab_size}; distillation needs a shared tokenizer"
            )
    maker = STAGES[stage.kind]
    if stage.kind == "forward_kl":
        make_batch, total = maker(ctx, stage, policy, teacher, stage_dir)
    else:
        make_batch, total = maker(ctx, stage, policy, teacher)
    step_cfg = step_config(stage, total)
    state = placement.init_state(ctx.mesh, cfg, step_cfg.optimizer, params, ctx.seed)
    # The state holds float32 masters now; the batch makers keep only what they need (the GRPO
    # reference in the compute dtype), so the loaded copy can be freed.
    del params, policy
    update = placement.jit_update(
        ctx.mesh,
        step_cfg,
        cfg,
        state,
        teacher.cfg if teacher else None,
        teacher.params if teacher else None,
    )
    diagnostics = {}
    if stage.kind == "forward_kl":
        diagnostics.update(c2_kl(ctx, cfg, state.params, teacher, make_batch, "before"))

    def periodic_eval(params, step):
        return stages.evaluate_policy(ctx, cfg, params, stage_dir, f"step{step}")

    state, _ = stage_loop.run_loop(
        stage_dir=stage_dir,
        state=state,
        total_steps=total,
        save_every=stage.save_every,
        make_batch=make_batch,
        update=update,
        evaluate=periodic_eval,
        eval_every=stage.eval_every,
        nan_policy=ctx.nan_policy,
        max_skipped_frac=stage.max_skipped_frac,
        max_consecutive_skips=stage.max_consecutive_skips,
        desc=stage.name,
    )
    summary = stage_loop.stage_summary(stage_dir)
    if stage.kind == "forward_kl":
        diagnostics.update(c2_kl(ctx, cfg, state.params, teacher, make_batch, "after"))
    summary.update(diagnostics)
    summary.update(stages.evaluate_policy(ctx, cfg, state.params, stage_dir, "final"))
    checkpoints.export_params(stage_dir, state.params, {"role": stage.model, "steps": total})
    return summary


def step_config(stage: StageConfig, total_steps: int) -> steps.StepConfig:
    """The jitted step's static settings for a stage."""
    objective = {"sft": "sft", "grpo": "grpo"}.get(stage.kind, stage.loss)
    g = stage.grpo
    return steps.StepConfig(
        objective=objective,
        optimizer=dataclasses.replace(
            stage.optim, total_steps=stage.optim.total_steps or total_steps
        ),
        micro_batches=stage.micro_batches,
        chunk_size=stage.chunk_size,
        clip_eps=g.clip_eps,
        clip_eps_high=g.clip_eps_high or None,
        kl_coef=g.kl_coef if objective == "grpo" else 0.0,
        kl_estimator=g.kl_estimator,
        aggregation=g.aggregation,
    )


def c2_kl(ctx: Context, cfg, params, teacher, make_batch, when: str) -> dict:
    """Condition C2: mean per-token KLs between teacher and student on the first batch of
    teacher rollouts (the same batch before and after the warmup)."""
    batch, _ = make_batch(params, 0)
    tokens, attention_mask = placement.put_rows(
        ctx.mesh, (batch["tokens"], batch["attention_mask"])
    )
    stats = steps.score_kl(cfg, params, teacher.cfg, teacher.params, tokens, attention_mask)
    if ctx.mesh is not None:
        stats = placement.to_host({k: stats[k] for k in ("forward", "reverse")})
    mask = batch["loss_mask"]
    count = max(float(mask.sum()), 1.0)
    return {
        f"c2/forward_{when}": float((stats["forward"] * mask).sum() / count),
        f"c2/reverse_{when}": float((stats["reverse"] * mask).sum() / count),
    }


def export_hf(ctx: Context, stage_cfgs, name: str, out: Path) -> None:
    """The named stage's params as a Hugging Face checkpoint (+ tokenizer files when it has them)."""
    stage = next((s for s in stage_cfgs if s.name == name), None)
    if stage is None:
        raise KeyError(
            f"config.export_hf = {name!r} is not a stage: {[s.name for s in stage_cfgs]}"
        )
    cfg, params = load_params(ctx, stage.model, name)
    if ctx.mesh is not None:
        params = placement.to_host(params)  # every process takes part in the gather
    if jax.process_index() != 0:
        return
    tok = ctx.task.tokenizer
    hf_io.save_hf(out, cfg, params, eos_token_id=list(tok.eos_ids), pad_token_id=tok.pad_id)
    if tok.kind == "hf":
        tok.backend.save_pretrained(out)
    print(f"exported {name} to {out} (transformers.AutoModelForCausalLM.from_pretrained loads it)")


def labeled_examples(ctx: Context, stage_cfgs) -> dict[str, int]:
    """Distinct labeled examples (answers used as rewards) behind each stage, its inputs included."""
    used: dict[str, set] = {}
    for stage in stage_cfgs:
        ids = set().union(*(used.get(ref, set()) for ref in (stage.init_from, stage.teacher)))
        if stage.kind == "grpo":
            pool = ctx.task.pool(stage.data)
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
