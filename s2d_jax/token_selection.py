"""Choosing the next token from logits: greedy, temperature, top-k, top-p, and its log-prob."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_tokens(
    logits: jax.Array, keys: jax.Array, *, temperature: float, top_k: int, top_p: float
) -> tuple[jax.Array, jax.Array]:
    """Pick one token per row from logits [B, V] with keys [B]; returns (tokens [B], logprobs [B]).

    Temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, cut to
    the top_k largest (0 = all), then to the smallest prefix of those, in decreasing order, whose
    renormalised mass reaches top_p, and a token is drawn from what is left, renormalised.

    The returned log-prob is log_softmax(logits / temperature) at the token, *before* top-k and
    top-p: the trainer scores tokens with the untruncated policy (`model.forward` + log_softmax),
    so importance ratios and KL terms compare like with like. Greedy gives log_softmax(logits).
    """
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        tokens = _first_argmax(logits)
    else:
        logits = logits / temperature
        tokens = _draw_truncated(logits, keys, top_k, top_p)
    chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return tokens, chosen - jax.nn.logsumexp(logits, axis=-1)


def _first_argmax(x_BV: jax.Array) -> jax.Array:
    """argmax over the last axis (first index among ties); two plain reductions, which XLA on
    CPU runs several times faster than the variadic reduce of jnp.argmax."""
    is_max = x_BV == jnp.max(x_BV, axis=-1, keepdims=True)
    index = jnp.arange(x_BV.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(is_max, index, x_BV.shape[-1]), axis=-1)


def _inverse_cdf_draw(logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    """One index per row from softmax(logits) [B, V] (-inf = excluded), by inverting the CDF.

    One uniform per row instead of V Gumbels: generating V random numbers per row per step
    cost more than the rest of a CPU decode step. Uniforms have 2^-23 resolution, so
    probabilities below ~1e-7 are represented only that coarsely.
    """
    probs_BV = jnp.exp(logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True))
    cdf_BV = jnp.cumsum(probs_BV, axis=-1)
    u_B = jax.vmap(jax.random.uniform)(keys_B) * cdf_BV[:, -1]
    index_B = jnp.sum(cdf_BV <= u_B[:, None], axis=-1, dtype=jnp.int32)
    # u rounded up to the total lands past the end: fall back to the last possible token.
    last_B = jnp.max(jnp.where(probs_BV > 0, jnp.arange(probs_BV.shape[-1]), 0), axis=-1)
    return jnp.minimum(index_B, last_B).astype(jnp.int32)


def _draw_truncated(logits_BV: jax.Array, keys_B: jax.Array, top_k: int, top_p: float):
    if top_k == 0 and top_p >= 1.0:
        return _inverse_cdf_draw(logits_BV, keys_B)
    k = logits_BV.shape[-1] if top_k == 0 else min(top_k, logits_BV.shape[-1])
    # Candidates in decreasing order; top-p then needs only a cumulative sum, no second sort.
    values_BK, index_BK = jax.lax.top_k(logits_BV, k)
    if top_p < 1.0:
        probs_BK = jax.nn.softmax(values_BK, axis=-1)
        mass_before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK  # exactly 0 for the first
        values_BK = jnp.where(mass_before_BK < top_p, values_BK, -jnp.inf)
    choice_B = _inverse_cdf_draw(values_BK, keys_B)
    return jnp.take_along_axis(index_BK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)
