"""The model roles of a config: their specs, and the one way a role's architecture is built.

    spec = parse_models(config)["student"]      # checked: paths, presets, random weights
    cfg = model_config(spec, vocab_size=V)      # config.json of its checkpoint, or its preset

A checkpoint must match its role's preset's dimensions, and every checkpoint's vocabulary must
cover the run's tokenizer (`check_vocab`), both before any compute.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from s2d_jax.data.task import TaskConfig
from s2d_jax.data.tokenizers import load_tokenizer
from s2d_jax.model import decoder, hf_io
from s2d_jax.workflow.ranges import to_dataclass


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    role: str
    preset: str  # a model presets name: fresh init, or the dimensions hf_path must have
    hf_path: str  # local Hugging Face checkpoint directory
    dtype: str  # dtype of the params as loaded: float32 masters if any stage trains the role
    compute_dtype: str  # "" = same as dtype; frozen copies (teacher, GRPO reference) use it
    random_weights: bool  # write a random HF checkpoint of `preset` and load it (random_models.py)
    attention_block: int  # > 0: blocked attention in the train / scoring forward (0: dense)


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


def tokenizer_source(models: dict[str, ModelSpec]) -> str:
    """The HF directory whose tokenizer the run uses: teacher and student share one (distillation
    needs it), read from the first role with a checkpoint in reverse name order (the teacher's);
    "" when no role has one (the toy's own tokenizer)."""
    return next((m.hf_path for _, m in sorted(models.items(), reverse=True) if m.hf_path), "")


def check_vocab(task: TaskConfig, models: dict[str, ModelSpec]) -> None:
    """Every checkpoint's vocabulary holds the tokenizer's ids (a smaller one would fail only
    when sampling reaches an id past it). The toy task sizes its models to its own tokenizer."""
    source = tokenizer_source(models)
    if task.name == "arith" or not source:
        return
    vocab = load_tokenizer(source).vocab_size
    for role, spec in sorted(models.items()):
        if spec.hf_path:
            model_vocab = model_config(spec, vocab_size=None).vocab_size
            if model_vocab < vocab:
                raise ValueError(
                    f"config.models.{role}: the model's vocabulary ({model_vocab} ids, "
                    f"{spec.hf_path}) is smaller than the tokenizer's ({vocab} ids, {source}); "
                    "teacher and student must share a tokenizer their embeddings cover"
                )


def model_config(
    spec: ModelSpec, *, vocab_size: int | None, checkpoint_dir: str = ""
) -> decoder.ModelConfig:
    """A role's architecture, built one way for every source: the config.json of
    `checkpoint_dir` (an HF directory given as init_from / teacher) or of the role's hf_path,
    or else its toy preset sized to the task's tokenizer (`vocab_size`). The role's dtypes and
    attention block apply either way, and a checkpoint must match the role's preset's dimensions
    when one is given."""
    role_fields = dict(
        param_dtype=spec.dtype,
        compute_dtype=spec.compute_dtype or spec.dtype,
        attention_block=spec.attention_block,
    )
    path = checkpoint_dir or spec.hf_path
    if not path:
        return decoder.ModelConfig.preset(spec.preset, vocab_size=vocab_size, **role_fields)
    cfg = decoder.ModelConfig.from_hf_config(hf_io.read_hf_config(path), **role_fields)
    if spec.preset:
        expected = decoder.ModelConfig.preset(spec.preset, **role_fields)
        differ = _differing_fields(cfg, expected, ignore=("max_seq_len",))
        if differ:
            where = checkpoint_dir or f"config.models.{spec.role}.hf_path = {spec.hf_path}"
            raise ValueError(
                f"{where} is not a {spec.preset} checkpoint: "
                + ", ".join(f"{f} {getattr(cfg, f)!r} != {getattr(expected, f)!r}" for f in differ)
            )
    return cfg


def _differing_fields(a, b, ignore=()) -> list[str]:
    """Names of the dataclass fields where a and b differ; floats compare to a relative 1e-6,
    since checkpoints converted through float32 (GGUF) store e.g. 1e-5 as 9.9999997e-06."""
    differ = []
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        same = math.isclose(x, y, rel_tol=1e-6) if isinstance(x, float) else x == y
        if not same and field.name not in ignore:
            differ.append(field.name)
    return differ
