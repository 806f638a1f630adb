"""The package boundary for configs: an ml_collections ConfigDict becomes frozen dataclasses here.

Everything is checked before any compute: unknown or missing keys (named with their path), stage
references (`init_from`, `teacher` must name an earlier stage, "base", or an existing directory),
and required local paths of real models and data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from s2d_jax.data.datasets import SPLITS as DATASET_SPLITS
from s2d_jax.data.task import TaskConfig
from s2d_jax.distributed.sharding import MeshConfig
from s2d_jax.learn.optimizer import OptimizerConfig

KINDS = ("sft", "grpo", "forward_kl", "on_policy_kl", "eval")
DISTILL_LOSSES = {
    "forward_kl": ("forward_kl", "forward_kl_hard"),
    "on_policy_kl": ("reverse_kl", "sampled_reverse_kl"),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    role: str
    preset: str  # a model_presets name: fresh init, or the dimensions hf_path must have
    hf_path: str  # local Hugging Face checkpoint directory
    dtype: str  # dtype of the params as loaded: float32 masters if any stage trains the role
    compute_dtype: str  # "" = same as dtype; frozen copies (teacher, GRPO reference) use it
    random_weights: bool  # write a random HF checkpoint of `preset` and load it (random_models.py)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    clip_eps: float
    clip_eps_high: float  # 0: symmetric
    kl_coef: float
    kl_estimator: str
    aggregation: str
    normalize_std: bool
    # Reward of a wrong answer in the right format (an answer extract_answer finds): 0 is the
    # paper's pure correctness reward; a small value (e.g. 0.1, as in R1-style format rewards)
    # gives a model that rarely writes \boxed{} a signal to start from.
    format_reward: float


@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str
    kind: str
    model: str
    init_from: str
    teacher: str
    data: str
    steps: int
    epochs: int
    batch_size: int
    micro_batches: int
    save_every: int
    eval_every: int
    loss: str
    samples_per_prompt: int
    chunk_size: int
    sampling: SamplingConfig
    optim: OptimizerConfig
    grpo: GrpoConfig
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
    max_problems: int
    batch_size: int


def to_dataclass(cls, value, where: str):
    """Build `cls` from a ConfigDict/dict, naming `where` and the key on a missing or unknown key."""
    data = value.to_dict() if hasattr(value, "to_dict") else dict(value)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {unknown}; expected {sorted(fields)}")
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
    missing = sorted(required - set(data) - {"name", "role"})
    if missing:
        raise KeyError(f"{where}: missing key(s) {missing}")
    record = cls(**data)
    check_ranges(record, where)
    return record


def _at_least(low):
    return (lambda v: v >= low), f">= {low}"


def _above(low):
    return (lambda v: v > low), f"> {low}"


def _between(low, high):
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


_PROBABILITY_MASS = ((lambda v: 0 < v <= 1), "in (0, 1]")
_DECAY = ((lambda v: 0 <= v < 1), "in [0, 1)")
# The allowed values of every numeric field, checked when a record is built from a config, so
# that e.g. a negative step count or learning rate fails here, naming the field.
RANGES = {
    "StageConfig": dict(
        steps=_at_least(0),
        epochs=_at_least(1),
        batch_size=_at_least(1),
        micro_batches=_at_least(1),
        save_every=_at_least(1),
        eval_every=_at_least(0),
        samples_per_prompt=_at_least(1),
        chunk_size=_at_least(1),
        max_skipped_frac=_between(0, 1),
        max_consecutive_skips=_at_least(0),
    ),
    "SamplingConfig": dict(
        max_new_tokens=_at_least(0),
        temperature=_at_least(0),
        top_p=_PROBABILITY_MASS,
        top_k=_at_least(0),
    ),
    "OptimizerConfig": dict(
        lr=_at_least(0),
        warmup_steps=_at_least(0),
        total_steps=_at_least(0),
        b1=_DECAY,
        b2=_DECAY,
        eps=_above(0),
        weight_decay=_at_least(0),
        grad_clip=_at_least(0),
    ),
    "GrpoConfig": dict(
        clip_eps=_above(0),
        clip_eps_high=_at_least(0),
        kl_coef=_at_least(0),
        format_reward=_between(0, 1),
    ),
    "EvalConfig": dict(
        samples=_at_least(1),
        max_new_tokens=_at_least(1),
        temperature=_at_least(0),
        top_p=_PROBABILITY_MASS,
        top_k=_at_least(0),
        max_problems=_at_least(0),
        batch_size=_at_least(1),
    ),
}


def check_ranges(record, where: str) -> None:
    """Raise ValueError naming `where.<field>`, its value and the allowed range when out of it."""
    for field, (ok, allowed) in RANGES.get(type(record).__name__, {}).items():
        value = getattr(record, field)
        if not ok(value):
            raise ValueError(f"{where}.{field} = {value!r}; expected {allowed}")


def parse_models(config) -> dict[str, ModelSpec]:
    specs = {}
    for role in config.models:
        spec = to_dataclass(
            ModelSpec, dict(config.models[role], role=role), f"config.models.{role}"
        )
        if spec.random_weights:
            if spec.hf_path or not spec.preset:
                raise ValueError(
                    f"config.models.{role}: random_weights writes a random checkpoint of `preset`; "
                    f"give a preset and no hf_path (preset={spec.preset!r}, hf_path={spec.hf_path!r})"
                )
        elif not spec.hf_path and not spec.preset.startswith("toy_"):
            raise ValueError(
                f"config.models.{role}.hf_path is required: the local path of a Hugging Face "
                f"checkpoint{' of ' + spec.preset if spec.preset else ''} (only toy_* presets "
                "are trained from a fresh init)"
            )
        if spec.hf_path and not Path(spec.hf_path).is_dir():
            raise FileNotFoundError(
                f"config.models.{role}.hf_path = {spec.hf_path!r} is not a directory: give the local "
                "path of a Hugging Face checkpoint (config.json + *.safetensors)"
            )
        specs[role] = spec
    return specs


def parse_stage(name: str, stage) -> StageConfig:
    where = f"config.stages.{name}"
    data = stage.to_dict() if hasattr(stage, "to_dict") else dict(stage)
    if isinstance(data.get("optim"), dict) and "steps" in data:
        # cosine schedules decay over the stage; a stage sized by epochs sets it when it starts
        # (a negative `steps` is reported by the StageConfig check, naming it)
        data["optim"].setdefault("total_steps", max(data["steps"], 0))
    for key, cls in (
        ("sampling", SamplingConfig),
        ("optim", OptimizerConfig),
        ("grpo", GrpoConfig),
    ):
        if key in data:
            data[key] = to_dataclass(cls, data[key], f"{where}.{key}")
    parsed = to_dataclass(StageConfig, dict(data, name=name), where)
    if parsed.kind not in KINDS:
        raise ValueError(f"{where}.kind = {parsed.kind!r}; expected one of {KINDS}")
    if parsed.kind in DISTILL_LOSSES and parsed.loss not in DISTILL_LOSSES[parsed.kind]:
        raise ValueError(
            f"{where}.loss = {parsed.loss!r}; a {parsed.kind} stage takes {DISTILL_LOSSES[parsed.kind]}"
        )
    if parsed.kind != "eval" and parsed.optim.lr <= 0:
        raise ValueError(
            f"{where}.optim.lr = {parsed.optim.lr}; a {parsed.kind} stage needs lr > 0"
        )
    if parsed.batch_size % parsed.micro_batches:
        raise ValueError(f"{where}: batch_size {parsed.batch_size} % micro_batches != 0")
    return parsed


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
        refs = [("init_from", stage.init_from)]
        if stage.kind in DISTILL_LOSSES:
            refs.append(("teacher", stage.teacher))
        deps[name] = set()
        for field, ref in refs:
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
        if stage.kind != "eval" and spec.dtype != "float32":
            raise ValueError(
                f"config.models.{spec.role}.dtype = {spec.dtype!r}, but stage {stage.name!r} trains "
                f"{spec.role!r}: a trained model keeps float32 master weights, since AdamW steps "
                "at lr ~1e-6 fall below half a unit in the last place of bfloat16 weights and are "
                "lost. Set dtype='float32' and compute_dtype='bfloat16' (bfloat16 compute, "
                "float32 masters)."
            )


def parse_eval(config) -> EvalConfig:
    data = config.eval.to_dict()
    data["splits"] = tuple(s for s in str(data.get("splits", "")).split(",") if s)
    return to_dataclass(EvalConfig, data, "config.eval")


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


def parse_mesh(config) -> MeshConfig | None:
    """`config.mesh` as a MeshConfig (keys checked); None when the config has no `mesh` key."""
    if "mesh" not in config:
        return None  # a config from before meshes: one device, as it always ran
    return to_dataclass(MeshConfig, config.mesh, "config.mesh")
