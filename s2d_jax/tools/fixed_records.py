"""The optimizer and GRPO records of the tools and benchmarks, written once.

They cannot read configs/common.py (not part of the package), and what they measure (memory,
step time, sharding) does not depend on these values; the experiments' own values live there.
"""

from s2d_jax.learn.objectives import GrpoConfig
from s2d_jax.learn.optimizer import OptimizerConfig


def optimizer_config(lr: float, weight_decay: float = 0.1) -> OptimizerConfig:
    """AdamW (0.9, 0.999, 1e-8) at a constant `lr`, gradients clipped at norm 1."""
    return OptimizerConfig(
        lr=lr, schedule="constant", warmup_steps=0, total_steps=0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay, grad_clip=1.0,
    )  # fmt: skip


def grpo_config(kl_coef: float) -> GrpoConfig:
    """Token-mean GRPO, symmetric clip 0.2, k3 KL at `kl_coef`, no format reward."""
    return GrpoConfig(
        clip_eps=0.2, clip_eps_high=0.0, kl_coef=kl_coef, kl_estimator="k3",
        aggregation="token", dr_grpo_max_len=0, normalize_std=True, format_reward=0.0,
    )  # fmt: skip
