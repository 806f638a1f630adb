"""What a train step can optimise: one record per objective, in one dict.

An objective maps the student's (and, for distillation, the frozen teacher's) final hidden
states and unembedding to `(loss, metrics)` over a batch, names the batch entries it reads, and
says how its mean is normalised (so that micro-batch gradients add up to the whole batch's).
Adding an objective is one function and one entry of `OBJECTIVES`.

Arrays: hidden_BTD [B, T-1, D] scores targets tokens[:, 1:] [B, T-1]; w_DV [D, V]; the batch
layout is `steps`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from s2d_jax.learn import kl_chunked, losses


@dataclasses.dataclass(frozen=True)
class GrpoConfig:
    """The GRPO objective's knobs (paper §2.1, Table 7), and how its rewards are shaped."""

    clip_eps: float
    clip_eps_high: float  # 0: symmetric clipping at clip_eps (DAPO's clip-higher sets it apart)
    kl_coef: float  # k-estimator KL to the stage's frozen start; 0: no reference model
    kl_estimator: str  # one of losses.KL_ESTIMATORS
    aggregation: str  # one of losses.AGGREGATIONS
    dr_grpo_max_len: int  # Dr. GRPO's constant normaliser; 0: the batch's T - 1
    normalize_std: bool  # group advantages divided by the group's reward std
    # Reward of a wrong answer in the right format (an answer extract_answer finds): 0 is the
    # paper's pure correctness reward; a small value (e.g. 0.1, as in R1-style format rewards)
    # gives a model that rarely writes \boxed{} a signal to start from.
    format_reward: float

    def __post_init__(self):
        if self.aggregation not in losses.AGGREGATIONS:
            raise ValueError(f"grpo.aggregation must be one of {losses.AGGREGATIONS}")
        if self.kl_estimator not in losses.KL_ESTIMATORS:
            raise ValueError(f"grpo.kl_estimator must be one of {losses.KL_ESTIMATORS}")


@dataclasses.dataclass(frozen=True)
class Objective:
    """loss(cfg, student, teacher, batch) -> (loss, metrics), with student / teacher the pairs
    (hidden_BTD, w_DV) (teacher None unless `needs_teacher`); `batch_keys(cfg)` the entries it
    reads beyond tokens, attention_mask, loss_mask; `normaliser(cfg, loss_mask_BT)` the
    denominator of its mean over a batch."""

    loss: Callable
    needs_teacher: bool
    batch_keys: Callable = lambda cfg: ()
    normaliser: Callable = lambda cfg, loss_mask_BT: jnp.sum((loss_mask_BT > 0).astype(jnp.float32))


def _chunks(cfg) -> dict:
    return {"chunk_size": cfg.chunk_size, "vocab_chunk": cfg.vocab_chunk}


def _logprobs(cfg, pair, batch):
    hidden_BTD, w_DV = pair
    return kl_chunked.token_logprobs_chunked(
        hidden_BTD, w_DV, batch["tokens"][:, 1:], **_chunks(cfg)
    )


def _grpo(cfg, student, teacher, batch):
    g = cfg.grpo
    return losses.grpo_loss(
        _logprobs(cfg, student, batch),
        batch["old_logprobs"],
        batch["advantages"],
        batch["loss_mask"],
        clip_eps=g.clip_eps,
        clip_eps_high=g.clip_eps_high or None,
        ref_logprobs=batch["ref_logprobs"] if g.kl_coef else None,
        kl_coef=g.kl_coef,
        kl_estimator=g.kl_estimator,
        aggregation=g.aggregation,
        max_len=g.dr_grpo_max_len or None,
    )


def _grpo_keys(cfg) -> tuple[str, ...]:
    return ("old_logprobs", "advantages") + (("ref_logprobs",) if cfg.grpo.kl_coef else ())


def _grpo_normaliser(cfg, loss_mask_BT) -> jax.Array:
    mask_BT = loss_mask_BT > 0
    if cfg.grpo.aggregation == "sequence":
        return jnp.sum(jnp.any(mask_BT, axis=1).astype(jnp.float32))
    if cfg.grpo.aggregation == "dr_grpo":
        return jnp.asarray(mask_BT.shape[0], jnp.float32)
    return jnp.sum(mask_BT.astype(jnp.float32))


def _nll(cfg, student, teacher, batch):
    return losses.nll_loss(_logprobs(cfg, student, batch), batch["loss_mask"])


def _sampled_reverse_kl(cfg, student, teacher, batch):
    logprobs_BT = _logprobs(cfg, student, batch)
    teacher_logprobs_BT = jax.lax.stop_gradient(_logprobs(cfg, teacher, batch))
    return losses.sampled_reverse_kl_loss(
        logprobs_BT, batch["old_logprobs"], teacher_logprobs_BT, batch["loss_mask"]
    )


def _full_kl(direction: str) -> Callable:
    def loss(cfg, student, teacher, batch):
        return kl_chunked.kl_loss_chunked(
            direction,
            *student,
            *teacher,
            batch["loss_mask"],
            batch["tokens"][:, 1:],
            **_chunks(cfg),
        )

    return loss


OBJECTIVES = {
    "sft": Objective(_nll, needs_teacher=False),
    "grpo": Objective(
        _grpo, needs_teacher=False, batch_keys=_grpo_keys, normaliser=_grpo_normaliser
    ),
    # the student's log-likelihood of the teacher's sampled tokens (hard labels)
    "forward_kl_hard": Objective(_nll, needs_teacher=False),
    "forward_kl": Objective(_full_kl("forward"), needs_teacher=True),
    "reverse_kl": Objective(_full_kl("reverse"), needs_teacher=True),
    "sampled_reverse_kl": Objective(
        _sampled_reverse_kl, needs_teacher=True, batch_keys=lambda cfg: ("old_logprobs",)
    ),
}
