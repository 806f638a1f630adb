"""Training objectives as pure functions of arrays: token log-probs, GRPO, forward and reverse KL.

Every loss returns `(loss, metrics)` with slash-grouped metric keys, and computes in float32 even
from bfloat16 inputs. Masks select the tokens that count; every mean is over the mask, and a mask
with no valid token gives a zero loss rather than NaN. Causal alignment is the caller's job: the
arrays here are already aligned with their targets (see `steps.py`).

The full-vocabulary KLs here take logits `[B, T, V]`; `kl_chunked.py` has the same losses over
hidden states and an unembedding matrix, for vocabularies and lengths where `[B, T, V]` won't fit.
Formulas: the paper's GRPO objective (clipped surrogate, k1/k2/k3 KL estimators) and its
distillation objectives (forward KL, analytic and sampled reverse KL).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "sequence", "dr_grpo")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask (any matching shape); 0 when the mask is empty; off-mask values,
    even inf or NaN, never reach the result or its gradient."""
    mask = mask.astype(bool)
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask.astype(F32)), 1.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Population variance of x over mask; 0 when the mask is empty."""
    mean = masked_mean(x, mask)
    return masked_mean(jnp.square(x - mean), mask)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Log-probability of each target token: logits [B, T, V], targets [B, T] int -> [B, T] f32."""
    logits = logits.astype(F32)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    return target_logit[..., 0] - jax.nn.logsumexp(logits, axis=-1)


def group_advantages(
    rewards: jax.Array, group_size: int, normalize_std: bool = True, eps: float = 1e-6
) -> jax.Array:
    """GRPO advantages [B*G] from rewards [B*G] laid out group by group (G consecutive rows).

    `(r - mean_group) / (std_group + eps)` with the unbiased std (as verl and TRL, torch's default);
    `normalize_std=False` gives Dr. GRPO's plain centring. A group whose rewards are all equal gets
    exactly zero, even where float rounding would leave `r - mean` a tiny nonzero number.
    """
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size must be a positive divisor of the number of rewards ({rewards.shape[0]}), "
            f"got {group_size}"
        )
    r_BG = rewards.astype(F32).reshape(-1, group_size)
    centred = r_BG - jnp.mean(r_BG, axis=1, keepdims=True)
    if normalize_std and group_size > 1:
        centred = centred / (jnp.std(r_BG, axis=1, keepdims=True, ddof=1) + eps)
    all_equal = jnp.max(r_BG, axis=1, keepdims=True) == jnp.min(r_BG, axis=1, keepdims=True)
    return jnp.where(all_equal, 0.0, centred).reshape(-1)


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(pi || ref) from log-probs [B, T] of tokens sampled from pi.

    With d = log ref - log pi: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1 (Schulman's unbiased,
    always >= 0 estimator, verl's `low_var_kl`).
    """
    d = ref_logprobs.astype(F32) - logprobs.astype(F32)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        return jnp.exp(d) - d - 1.0
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def _aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str, max_len: int | None):
    """Reduce [B, T] per-token losses to a scalar (see `grpo_loss`)."""
    mask = mask.astype(bool)
    if aggregation == "token":
        return masked_mean(per_token, mask)
    summed_B = jnp.sum(jnp.where(mask, per_token, 0.0), axis=1)
    if aggregation == "sequence":
        tokens_B = jnp.sum(mask.astype(F32), axis=1)
        return masked_mean(summed_B / jnp.maximum(tokens_B, 1.0), tokens_B > 0)
    if aggregation == "dr_grpo":
        norm = per_token.shape[1] if max_len is None else max_len
        return jnp.sum(summed_B) / (per_token.shape[0] * norm)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def grpo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
    ref_logprobs: jax.Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token",
    max_len: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped-surrogate GRPO loss with an optional KL-to-reference loss term.

    Shapes: logprobs, old_logprobs, ref_logprobs, mask [B, T]; advantages [B] (one per sequence).
    Per token, with ratio = exp(logprobs - old_logprobs):
        l = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A) + kl_coef * k(pi, ref)
    `clip_eps_high` defaults to `clip_eps` (DAPO's clip-higher sets it apart). Aggregation:
    "token" = mean over all valid tokens; "sequence" = mean over each sequence's valid tokens,
    then over the sequences with any; "dr_grpo" = sum / (B * max_len), max_len defaulting to T.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.astype(bool)
    # Zero every input off-mask first: padded positions may hold any value, and an inf there
    # would turn into NaN in the loss and in the gradient even though the mask zeroes it.
    logprobs = jnp.where(mask, logprobs.astype(F32), 0.0)
    log_ratio = logprobs - jnp.where(mask, old_logprobs.astype(F32), 0.0)
    ratio = jnp.exp(log_ratio)
    adv_BT = jnp.broadcast_to(advantages.astype(F32)[:, None], ratio.shape)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    pg_BT = -jnp.minimum(ratio * adv_BT, clipped * adv_BT)
    per_token = pg_BT
    metrics = {}
    if ref_logprobs is not None:
        kl_BT = kl_penalty(logprobs, jnp.where(mask, ref_logprobs.astype(F32), 0.0), kl_estimator)
        per_token = per_token + kl_coef * kl_BT
        metrics["grpo/kl"] = masked_mean(kl_BT, mask)
    elif kl_coef:
        raise ValueError("grpo_loss: kl_coef > 0 needs ref_logprobs")
    loss = _aggregate(per_token, mask, aggregation, max_len)
    # Clipping is active (zero gradient) where the clipped branch is strictly the smaller one.
    clip_high = mask & (adv_BT > 0) & (ratio > 1.0 + eps_high)
    clip_low = mask & (adv_BT < 0) & (ratio < 1.0 - clip_eps)
    metrics |= {
        "grpo/loss": loss,
        "grpo/pg_loss": _aggregate(pg_BT, mask, aggregation, max_len),
        "grpo/clip_frac_high": masked_mean(clip_high, mask),
        "grpo/clip_frac_low": masked_mean(clip_low, mask),
        "grpo/clip_frac": masked_mean(clip_high | clip_low, mask),
        "grpo/ratio_mean": masked_mean(ratio, mask),
        "grpo/ratio_max": jnp.max(jnp.where(mask, ratio, 0.0)),
        "grpo/adv_mean": jnp.mean(advantages.astype(F32)),
        "grpo/adv_std": jnp.std(advantages.astype(F32)),
        "grpo/adv_abs_max": jnp.max(jnp.abs(advantages.astype(F32))),
        "grpo/tokens": jnp.sum(mask.astype(F32)),
    }
    return loss, metrics


def nll_loss(logprobs: jax.Array, mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean negative log-likelihood of logprobs [B, T] over mask [B, T].

    This is SFT, and on teacher samples the hard-label form of the forward KL ("teacher-sample
    SFT"): E_{y~pT}[-log pS(y)] = KL(pT || pS) + H(pT).
    """
    loss = -masked_mean(logprobs.astype(F32), mask)
    return loss, {"nll/loss": loss, "nll/tokens": jnp.sum(mask.astype(F32))}


def kl_token_stats(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array | None = None,
    *,
    grad: str | None = None,
) -> dict[str, jax.Array]:
    """Per-token full-vocabulary statistics of logits [..., V] -> dict of [...] float32 arrays.

    Keys: "forward" = KL(pT || pS), "reverse" = KL(pS || pT), "student_entropy", and with
    targets [...]: "student_logprob", "teacher_logprob" of the targets. The teacher is always
    stop-gradient; `grad` ("forward" | "reverse" | None) names the only entry that carries a
    gradient to the student, so the backward pass does no work for diagnostics.
    """
    # Written over raw logits and per-token log-normalisers so that each sum is one fused pass
    # over [..., V] with no [..., V] intermediate (log-softmax, probabilities) kept in memory.
    s = student_logits.astype(F32)
    s_sg = jax.lax.stop_gradient(s)
    t = jax.lax.stop_gradient(teacher_logits.astype(F32))
    lse_t = jax.nn.logsumexp(t, axis=-1)

    def forward_kl(s):  # sum_v pT (t - s) - lse_t + lse_s
        p_t = jnp.exp(t - lse_t[..., None])
        # Where pT underflows to 0 its term is 0, even if t = -inf (no 0 * inf = NaN).
        cross = jnp.sum(jnp.where(p_t > 0, p_t * (t - s), 0.0), axis=-1)
        return cross - lse_t + jax.nn.logsumexp(s, axis=-1)

    def reverse_kl(s):  # sum_v pS (s - t) - lse_s + lse_t
        lse_s = jax.nn.logsumexp(s, axis=-1)
        p_s = jnp.exp(s - lse_s[..., None])
        return jnp.sum(p_s * (s - t), axis=-1) - lse_s + lse_t

    lse_s = jax.nn.logsumexp(s_sg, axis=-1)
    p_s = jnp.exp(s_sg - lse_s[..., None])
    stats = {
        "forward": forward_kl(s if grad == "forward" else s_sg),
        "reverse": reverse_kl(s if grad == "reverse" else s_sg),
        "student_entropy": lse_s - jnp.sum(jnp.where(p_s > 0, p_s * s_sg, 0.0), axis=-1),
    }
    if targets is not None:
        idx = targets[..., None].astype(jnp.int32)
        stats["student_logprob"] = jnp.take_along_axis(s_sg, idx, axis=-1)[..., 0] - lse_s
        stats["teacher_logprob"] = jnp.take_along_axis(t, idx, axis=-1)[..., 0] - lse_t
    return stats


def kl_metrics(stats: dict[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
    """Token-means over mask [B, T] of `kl_token_stats` output: the paper's diagnostics.

    `kl/logratio_var` is the variance of log pT - log pS on the sampled tokens (condition C2).
    """
    metrics = {
        "kl/forward": masked_mean(jax.lax.stop_gradient(stats["forward"]), mask),
        "kl/reverse": masked_mean(jax.lax.stop_gradient(stats["reverse"]), mask),
        "kl/student_entropy": masked_mean(stats["student_entropy"], mask),
        "kl/tokens": jnp.sum(mask.astype(F32)),
    }
    if "teacher_logprob" in stats:
        log_ratio = stats["teacher_logprob"] - stats["student_logprob"]
        metrics["kl/logratio_mean"] = masked_mean(log_ratio, mask)
        metrics["kl/logratio_var"] = masked_var(log_ratio, mask)
    return metrics


def kl_loss_from_stats(stats: dict[str, jax.Array], mask: jax.Array, direction: str):
    """Token-mean over mask [B, T] of stats[direction] ("forward" | "reverse"), with metrics."""
    loss = masked_mean(stats[direction], mask)
    return loss, kl_metrics(stats, mask) | {"kl/loss": loss}


def kl_loss(
    direction: str,
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    targets: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-mean over mask [B, T] of a KL between logits [B, T, V]; the teacher is frozen.

    direction "forward": KL(teacher || student); its gradient w.r.t. the student logits is
    (softmax(s) - softmax(t)) * mask / count. "reverse": the analytic KL(student || teacher),
    OPD option A: the exact per-state gradient (through pS and log pS) on student rollouts, the
    sampling of the states not differentiated. Pass the sampled targets [B, T] to get the
    log-ratio diagnostics as well.
    """
    stats = kl_token_stats(student_logits, teacher_logits, targets, grad=direction)
    return kl_loss_from_stats(stats, mask, direction)


forward_kl_loss = functools.partial(kl_loss, "forward")
reverse_kl_loss = functools.partial(kl_loss, "reverse")


def sampled_reverse_kl_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    teacher_logprobs: jax.Array,
    mask: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """OPD option B: sampled-token policy gradient with the dense reward log pT - log pS.

    Shapes [B, T]. Per token A = stop_gradient(log pT(y) - log pS(y)) (current student, as PAPER
    §9) and l = -exp(log pS(y) - log p_old(y)) * A, token-mean over mask: the importance ratio to
    the rollout policy makes it correct off-policy, and on-policy its gradient is -A * grad log pS
    (Thinking Machines, gamma = 0, no clipping).
    """
    mask = mask.astype(bool)
    logprobs = jnp.where(mask, logprobs.astype(F32), 0.0)  # see grpo_loss: no inf off-mask
    ratio = jnp.exp(logprobs - jnp.where(mask, old_logprobs.astype(F32), 0.0))
    teacher = jnp.where(mask, teacher_logprobs.astype(F32), 0.0)
    adv = jax.lax.stop_gradient(teacher - logprobs)
    loss = -masked_mean(ratio * adv, mask)
    metrics = {
        "opd/loss": loss,
        "opd/ratio_mean": masked_mean(ratio, mask),
        "opd/ratio_max": jnp.max(jnp.where(mask, ratio, 0.0)),
        # The sampled-token (k1) estimate of KL(student || teacher).
        "kl/reverse_sampled": -masked_mean(adv, mask),
        "kl/logratio_var": masked_var(adv, mask),
        "kl/tokens": jnp.sum(mask.astype(F32)),
    }
    return loss, metrics
