"""The one config boundary: an ml_collections ConfigDict becomes a frozen `RunConfig` here.

    run_cfg = config.parse(config_dict)     # every check below, before any compute or file

Nothing below this module sees a ConfigDict. Checked here: unknown or missing keys (named with
their path, at every level), the range of every numeric field, each stage's kind and objective
(`stages.KINDS`), stage references (`init_from` and `teacher` name an earlier stage, "base", or an
existing directory), the local paths of real models and data, each Hugging Face checkpoint
against its preset, the pools that stages and the evaluation read, and the run-level keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from s2d_jax.data.datasets import SPLITS as DATASET_SPLITS
from s2d_jax.data.task import TaskConfig, resolve_pool
from s2d_jax.distributed.sharding import MeshConfig
from s2d_jax.learn.objectives import GrpoConfig
from s2d_jax.learn.optimizer import OptimizerConfig
from s2d_jax.workflow.models import ModelSpec, check_vocab, model_config, parse_models
from s2d_jax.workflow.ranges import to_dataclass
from s2d_jax.workflow.stages import KINDS

NAN_POLICIES = ("skip", "raise")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    engine: str  # "continuous" (a KV-budget-sized slot pool) or "static" (one batch)
    kv_budget_gib: float  # continuous: KV cache per data shard; 0: the device's default
    decode_attention: str  # continuous: "reference" (pure JAX) or a kernel (model/decode_kernels)


@dataclasses.dataclass(frozen=True)
class StopConfig:
    """An sft stage's early stop (configs/common.stop): accuracy 0 is off."""

    accuracy: float  # the held-out greedy accuracy that ends the stage
    every: int  # updates between checks
    holdout: int  # examples of the pool held out for the check (never trained on)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str
    kind: str  # a key of stages.KINDS
    model: str
    init_from: str
    teacher: str
    data: str
    max_prompt_tokens: int  # longer prompts: dropped from the pool and counted; 0: no cap
    steps: int
    epochs: int
    batch_size: int
    micro_batches: int
    save_every: int
    eval_every: int
    loss: str  # the objective of a kind that offers several ("" for the others)
    samples_per_prompt: int
    chunk_size: int  # tokens per chunk of the full-vocabulary terms: training, scoring, C2
    vocab_chunk: int  # vocabulary slice of their backward pass (0: the whole vocabulary)
    sampling: SamplingConfig
    optim: OptimizerConfig  # total_steps 0: the stage's own length
    grpo: GrpoConfig
    stop: StopConfig
    # nan_policy "skip" fails the stage past either: skipped steps / steps, skipped in a row
    max_skipped_frac: float
    max_consecutive_skips: int


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    splits: tuple[str, ...]
    samples: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    engine: str  # as SamplingConfig
    kv_budget_gib: float
    decode_attention: str
    max_problems: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """The probe set of condition C2 (`probe.py`): data "" turns it off."""

    data: str  # the pool whose first `prompts` prompts it samples
    prompts: int
    samples: int  # rows per prompt and role
    teacher: str  # the teacher's reference ("base" or a teacher stage) its teacher rows come from
    student: str  # the student's, for its student rows
    sampling: SamplingConfig
    chunk_size: int  # tokens per chunk of the full-vocabulary KL terms


@dataclasses.dataclass(frozen=True)
class GraderConfig:
    workers: int
    timeout_s: float


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A validated config: what `pipeline.run` will do, known before any compute."""

    seed: int
    nan_policy: str  # "skip" a non-finite step (counted, budgeted) or "raise"
    grader: GraderConfig
    mesh: MeshConfig
    task: TaskConfig
    models: dict[str, ModelSpec]
    stages: tuple[StageConfig, ...]  # in dependency order
    eval: EvalConfig
    probe: ProbeConfig
    export_hf: str  # a stage whose params are also written as a Hugging Face checkpoint
    report_rows: str  # "label=stage,..." rows of the report's table


# The run-level keys of a config and what they become.
_RUN_KEYS = (
    "seed",
    "nan_policy",
    "grader_workers",
    "grader_timeout_s",
    "mesh",
    "task",
    "models",
    "stages",
    "eval",
    "probe",
    "export_hf",
    "report_rows",
)


def parse(config) -> RunConfig:
    """Check every key, reference and path of a config; nothing is written or computed."""
    keys = set(config.keys())
    unknown, missing = sorted(keys - set(_RUN_KEYS)), sorted(set(_RUN_KEYS) - keys)
    if unknown or missing:
        raise KeyError(
            f"config: unknown key(s) {unknown}, missing key(s) {missing}; expected {list(_RUN_KEYS)}"
        )
    models = parse_models(config)
    run_cfg = RunConfig(
        seed=int(config.seed),
        nan_policy=config.nan_policy,
        grader=to_dataclass(
            GraderConfig,
            dict(workers=config.grader_workers, timeout_s=config.grader_timeout_s),
            "config.grader",
        ),
        mesh=to_dataclass(MeshConfig, config.mesh, "config.mesh"),
        task=parse_task(config),
        models=models,
        stages=tuple(parse_stages(config, models)),
        eval=parse_eval(config),
        probe=parse_probe(config),
        export_hf=config.export_hf,
        report_rows=config.report_rows,
    )
    if run_cfg.nan_policy not in NAN_POLICIES:
        raise ValueError(
            f"config.nan_policy = {run_cfg.nan_policy!r}; expected one of {NAN_POLICIES}"
        )
    if run_cfg.export_hf and run_cfg.export_hf not in [s.name for s in run_cfg.stages]:
        raise KeyError(f"config.export_hf = {run_cfg.export_hf!r} is not a stage of this config")
    check_pools(run_cfg)
    check_probe_references(run_cfg)
    for spec in models.values():
        if spec.hf_path:
            model_config(spec, vocab_size=None)  # reads config.json, checks the preset's dims
    check_vocab(run_cfg.task, models)
    names = {s.name for s in run_cfg.stages}
    for stage in run_cfg.stages:
        for ref, role in _references(stage):
            if ref != "base" and ref not in names:  # an HF directory: checked as a hf_path is
                model_config(models[role], vocab_size=None, checkpoint_dir=ref)
    return run_cfg


def check_pools(run_cfg: RunConfig) -> None:
    """Every pool a stage or the evaluation reads exists (checked by name, no data read), so a
    typo fails now and not after a stage has trained."""
    pools = [
        (f"config.stages.{s.name}.data", s.data) for s in run_cfg.stages if KINDS[s.kind].trains
    ]
    pools += [("config.eval.splits", split) for split in run_cfg.eval.splits]
    if run_cfg.probe.data:
        pools.append(("config.probe.data", run_cfg.probe.data))
    for where, name in pools:
        try:
            resolve_pool(run_cfg.task, name)
        except KeyError as error:
            raise KeyError(f"{where}: {error.args[0]}") from None


def parse_stage(name: str, stage) -> StageConfig:
    where = f"config.stages.{name}"
    data = stage.to_dict() if hasattr(stage, "to_dict") else dict(stage)
    for key, cls in (
        ("sampling", SamplingConfig),
        ("optim", OptimizerConfig),
        ("grpo", GrpoConfig),
        ("stop", StopConfig),
    ):
        if key in data:
            data[key] = to_dataclass(cls, data[key], f"{where}.{key}")
    parsed = to_dataclass(StageConfig, dict(data, name=name), where)
    if parsed.kind not in KINDS:
        raise ValueError(f"{where}.kind = {parsed.kind!r}; expected one of {sorted(KINDS)}")
    kind = KINDS[parsed.kind]
    if parsed.loss and parsed.loss not in kind.objectives:
        raise ValueError(
            f"{where}.loss = {parsed.loss!r}; a {parsed.kind} stage takes {kind.objectives} "
            f'("" = {kind.objectives[0] if kind.objectives else "none"})'
        )
    if kind.trains and parsed.optim.lr <= 0:
        raise ValueError(
            f"{where}.optim.lr = {parsed.optim.lr}; a {parsed.kind} stage needs lr > 0"
        )
    if parsed.batch_size % parsed.micro_batches:
        raise ValueError(f"{where}: batch_size {parsed.batch_size} % micro_batches != 0")
    check_stop(parsed, where)
    return parsed


def check_stop(stage: StageConfig, where: str) -> None:
    """An early stop needs an sft stage (the others' accuracy would read labels they do not
    count), held-out examples to check on, and room to generate an answer."""
    if not stage.stop.accuracy:
        return
    if stage.kind != "sft":
        raise ValueError(
            f"{where}.stop.accuracy = {stage.stop.accuracy}: only an sft stage stops early "
            f"(this one is {stage.kind!r}); set it to 0"
        )
    if not stage.stop.holdout or not stage.sampling.max_new_tokens:
        raise ValueError(
            f"{where}.stop.accuracy = {stage.stop.accuracy} needs stop.holdout > 0 (examples to "
            f"check on; it is {stage.stop.holdout}) and sampling.max_new_tokens > 0 (room for the "
            f"answer; it is {stage.sampling.max_new_tokens})"
        )


def _references(stage: StageConfig) -> list[tuple[str, str]]:
    """(reference, model role) of what a stage loads: its init_from, and its teacher if any."""
    refs = [(stage.init_from, stage.model)]
    if KINDS[stage.kind].uses_teacher:
        refs.append((stage.teacher, "teacher"))
    return refs


def parse_stages(config, models: dict[str, ModelSpec]) -> list[StageConfig]:
    """All stages, ordered so that each runs after the stages it reads (`init_from`, `teacher`).

    ConfigDict keys have no order, so the order is the dependency order, ties broken by name.
    """
    parsed = {name: parse_stage(name, config.stages[name]) for name in config.stages}
    deps = {}
    for name, stage in parsed.items():
        if stage.model not in models:
            raise ValueError(
                f"config.stages.{name}.model = {stage.model!r}; models are {sorted(models)}"
            )
        deps[name] = set()
        for (ref, role), field in zip(_references(stage), ("init_from", "teacher"), strict=False):
            if role not in models:
                raise ValueError(
                    f"config.stages.{name}: a {stage.kind} stage needs a {role!r} model"
                )
            if ref in parsed and ref != name:
                deps[name].add(ref)
            elif ref != "base" and not (ref and Path(ref).is_dir()):
                raise ValueError(
                    f"config.stages.{name}.{field} = {ref!r} is neither 'base', another stage "
                    f"({sorted(parsed)}), nor an existing checkpoint directory"
                )
    check_trained_precision(parsed.values(), models)
    ordered: list[StageConfig] = []
    while deps:
        ready = sorted(name for name, d in deps.items() if not d)
        if not ready:
            raise ValueError(f"config.stages: circular references among {sorted(deps)}")
        ordered.append(parsed[ready[0]])
        del deps[ready[0]]
        for d in deps.values():
            d.discard(ready[0])
    return ordered


def check_trained_precision(stages, models: dict[str, ModelSpec]) -> None:
    """A role that any stage trains keeps float32 master weights (frozen roles may be bfloat16)."""
    for stage in stages:
        spec = models[stage.model]
        if KINDS[stage.kind].trains and spec.dtype != "float32":
            raise ValueError(
                f"config.models.{spec.role}.dtype = {spec.dtype!r}, but stage {stage.name!r} trains "
                f"{spec.role!r}: a trained model keeps float32 master weights, since AdamW steps "
                "at lr ~1e-6 fall below half a unit in the last place of bfloat16 weights and are "
                "lost. Set dtype='float32' and compute_dtype='bfloat16' (bfloat16 compute, "
                "float32 masters)."
            )


def parse_eval(config) -> EvalConfig:
    data = config.eval.to_dict()
    if "splits" in data:  # a missing key is reported by to_dataclass, naming it
        data["splits"] = tuple(s for s in str(data["splits"]).split(",") if s)
    return to_dataclass(EvalConfig, data, "config.eval")


def parse_probe(config) -> ProbeConfig:
    data = config.probe.to_dict()
    if "sampling" in data:
        data["sampling"] = to_dataclass(SamplingConfig, data["sampling"], "config.probe.sampling")
    return to_dataclass(ProbeConfig, data, "config.probe")


def check_probe_references(run_cfg: RunConfig) -> None:
    """The probe's rows come from "base" or a stage of the same role (a stage's export)."""
    if not run_cfg.probe.data:
        return
    roles = {s.name: s.model for s in run_cfg.stages}
    for role in ("teacher", "student"):
        ref = getattr(run_cfg.probe, role)
        if role not in run_cfg.models or (ref != "base" and roles.get(ref) != role):
            raise ValueError(
                f"config.probe.{role} = {ref!r}: expected 'base' or a stage of the {role!r} "
                f"model ({sorted(n for n, r in roles.items() if r == role)}), and a {role!r} "
                f"model in config.models"
            )


def parse_task(config) -> TaskConfig:
    task = to_dataclass(TaskConfig, config.task, "config.task")
    if task.name not in DATASET_SPLITS:
        raise ValueError(f"config.task.name = {task.name!r}; known: {sorted(DATASET_SPLITS)}")
    if task.train_columns and not task.train_path:
        raise ValueError(
            f"config.task.train_path is required (train_columns={task.train_columns!r}): the local "
            "path of the training file, e.g. DAPO-Math-17K as parquet or JSONL"
        )
    if task.train_path and not Path(task.train_path).exists():
        raise FileNotFoundError(
            f"config.task.train_path = {task.train_path!r} does not exist: give a local JSONL or "
            "parquet file with problem and answer columns (e.g. DAPO-Math-17K)"
        )
    return task
