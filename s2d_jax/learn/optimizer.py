"""AdamW with global-norm clipping, its learning-rate schedule, and the precision of its state."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping; lr constant or cosine to 0, after a linear warmup.

    No field has a default here: experiments set them all (configs/common.py `optim`)."""

    lr: float
    schedule: str  # "constant" | "cosine"
    warmup_steps: int
    total_steps: int  # cosine decays to 0 at total_steps
    b1: float
    b2: float
    eps: float
    weight_decay: float  # on every parameter, as torch AdamW in verl
    grad_clip: float  # 0: no clipping

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"OptimizerConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}"
            )


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Learning rate as a function of the number of applied updates.

    (total_steps may be left 0 in a config and filled in when the stage's length is known, so
    the cosine check is here rather than in OptimizerConfig.)
    """
    if cfg.schedule == "cosine":
        if cfg.total_steps <= cfg.warmup_steps:
            raise ValueError(
                f"OptimizerConfig: cosine needs total_steps ({cfg.total_steps}) > warmup_steps "
                f"({cfg.warmup_steps})"
            )
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, cfg.total_steps)
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
        return optax.join_schedules([warmup, optax.constant_schedule(cfg.lr)], [cfg.warmup_steps])
    return optax.constant_schedule(cfg.lr)


# Master weights, AdamW moments and optimizer hyperparameters of a trained model: in bfloat16,
# b2 = 0.999 rounds to 1.0 (Adam's bias correction divides by 0) and an lr-1e-6 step is below half
# a unit in the last place of most weights, so it is never applied.
MASTER_DTYPE = jnp.float32


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW; the learning rate is kept in the state (see `learning_rate`).

    Hyperparameters and first moments are float32 whatever the params' dtype (optax would store
    them in the params' dtype); the second moments follow the float32 masters."""
    clip = optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity()
    adamw = optax.inject_hyperparams(
        optax.adamw, static_args=("mu_dtype",), hyperparam_dtype=MASTER_DTYPE
    )(
        learning_rate=learning_rate_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mu_dtype=MASTER_DTYPE,
    )
    return optax.chain(clip, adamw)


def learning_rate(opt_state) -> jax.Array:
    """The learning rate of the last applied update (of the first, before any)."""
    return opt_state[1].hyperparams["learning_rate"]
