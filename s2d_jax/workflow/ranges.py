"""Records built from a config (`to_dataclass`), and the allowed values of every numeric or
enumerated field, checked as a record is built, so that e.g. a negative step count or learning rate
fails at the boundary, naming the field."""

import dataclasses

from s2d_jax.model.decode_kernels import DECODE_ATTENTION
from s2d_jax.rollout import sampler


def _at_least(low):
    return (lambda v: v >= low), f">= {low}"


def _above(low):
    return (lambda v: v > low), f"> {low}"


def _between(low, high):
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


def _one_of(choices):
    return (lambda v: v in choices), f"one of {choices}"


_PROBABILITY_MASS = ((lambda v: 0 < v <= 1), "in (0, 1]")
_DECAY = ((lambda v: 0 <= v < 1), "in [0, 1)")
# The allowed values of every numeric or enumerated field, checked when a record is built from a config, so
# that e.g. a negative step count or learning rate fails here, naming the field.
RANGES = {
    "StageConfig": dict(
        max_prompt_tokens=_at_least(0),
        steps=_at_least(0),
        epochs=_at_least(1),
        batch_size=_at_least(1),
        micro_batches=_at_least(1),
        save_every=_at_least(1),
        eval_every=_at_least(0),
        samples_per_prompt=_at_least(1),
        chunk_size=_at_least(1),
        vocab_chunk=_at_least(0),
        max_skipped_frac=_between(0, 1),
        max_consecutive_skips=_at_least(0),
    ),
    "SamplingConfig": dict(
        max_new_tokens=_at_least(0),
        temperature=_at_least(0),
        top_p=_PROBABILITY_MASS,
        top_k=_at_least(0),
        engine=_one_of(sampler.ENGINES),
        kv_budget_gib=_at_least(0),
        decode_attention=_one_of(DECODE_ATTENTION),
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
        dr_grpo_max_len=_at_least(0),
        format_reward=_between(0, 1),
    ),
    "StopConfig": dict(accuracy=_between(0, 1), every=_at_least(1), holdout=_at_least(0)),
    "ModelSpec": dict(attention_block=_at_least(0)),
    "ProbeConfig": dict(prompts=_at_least(1), samples=_at_least(1), chunk_size=_at_least(1)),
    "GraderConfig": dict(workers=_at_least(1), timeout_s=_above(0)),
    "EvalConfig": dict(
        samples=_at_least(1),
        max_new_tokens=_at_least(1),
        temperature=_at_least(0),
        top_p=_PROBABILITY_MASS,
        top_k=_at_least(0),
        engine=_one_of(sampler.ENGINES),
        kv_budget_gib=_at_least(0),
        decode_attention=_one_of(DECODE_ATTENTION),
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
    try:
        record = cls(**data)
    except ValueError as error:  # a record's own check (e.g. an unknown aggregation)
        raise ValueError(f"{where}: {error}") from None
    check_ranges(record, where)
    return record
