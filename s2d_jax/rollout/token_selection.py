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
    renormalised mass reaches top_p (tokens tied with the last one kept stay too), and a token is
    drawn from what is left, renormalised.

    The returned log-prob is log_softmax(logits / temperature) at the token, *before* top-k and
    top-p: the trainer scores tokens with the untruncated policy (`decoder.forward` + log_softmax),
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


CDF_BLOCK = 128  # tokens per block of the two-level CDF (`_inverse_cdf_draw`)


def _inverse_cdf_draw(logits_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    """One index per row from softmax(logits) [B, V] (-inf = excluded), by inverting the CDF.

    One uniform per row instead of V Gumbels: generating V random numbers per row per step
    cost more than the rest of a CPU decode step. Uniforms have 2^-23 resolution, so
    probabilities below ~1e-7 are represented only that coarsely.

    The CDF is inverted in two levels: a cumulative sum over the V / CDF_BLOCK block masses
    finds the block the uniform lands in, then one over that block's CDF_BLOCK probabilities
    the token. A cumulative sum over all V tokens per row (XLA:CPU runs it as a windowed
    reduction) cost most of the sampling and, on a CPU, over a third of a decode step's matmuls.
    The same draw up to float32 rounding of the partial sums.
    """
    B, V = logits_BV.shape
    K = -(-V // CDF_BLOCK)
    probs_BV = jnp.exp(logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True))
    if K == 1:  # one block: the flat CDF is the two-level one without its rounding of the total
        return _flat_draw(probs_BV, keys_B)
    probs_BKC = jnp.pad(probs_BV, ((0, 0), (0, K * CDF_BLOCK - V))).reshape(B, K, CDF_BLOCK)
    mass_BK = jnp.sum(probs_BKC, axis=-1)
    cdf_BK = jnp.cumsum(mass_BK, axis=-1)
    u_B = jax.vmap(jax.random.uniform)(keys_B) * cdf_BK[:, -1]
    # Rounding can carry u to or past the end of the mass: keep to the last block holding any,
    # and within a block to its last token holding any, so an excluded token is never drawn.
    last_block_B = jnp.max(jnp.where(mass_BK > 0, jnp.arange(K), 0), axis=-1)
    block_B = jnp.minimum(jnp.sum(cdf_BK <= u_B[:, None], axis=-1), last_block_B)
    before_B = jnp.where(
        block_B > 0, jnp.take_along_axis(cdf_BK, jnp.maximum(block_B - 1, 0)[:, None], 1)[:, 0], 0
    )
    probs_BC = jnp.take_along_axis(probs_BKC, block_B[:, None, None], axis=1)[:, 0]
    inner_cdf_BC = before_B[:, None] + jnp.cumsum(probs_BC, axis=-1)
    last_B = jnp.max(jnp.where(probs_BC > 0, jnp.arange(CDF_BLOCK), 0), axis=-1)
    inner_B = jnp.minimum(jnp.sum(inner_cdf_BC <= u_B[:, None], axis=-1), last_B)
    return (block_B * CDF_BLOCK + inner_B).astype(jnp.int32)


def _flat_draw(probs_BV: jax.Array, keys_B: jax.Array) -> jax.Array:
    """`_inverse_cdf_draw` by one cumulative sum over the row (a vocabulary of one block)."""
    cdf_BV = jnp.cumsum(probs_BV, axis=-1)
    u_B = jax.vmap(jax.random.uniform)(keys_B) * cdf_BV[:, -1]
    index_B = jnp.sum(cdf_BV <= u_B[:, None], axis=-1, dtype=jnp.int32)
    # u rounded up to the total lands past the end: fall back to the last possible token.
    last_B = jnp.max(jnp.where(probs_BV > 0, jnp.arange(probs_BV.shape[-1]), 0), axis=-1)
    return jnp.minimum(index_B, last_B).astype(jnp.int32)


def _top_p_floor(probs_BV: jax.Array, top_p: float) -> jax.Array:
    """Per row, the smallest probability [B] kept by top-p over probs [B, V], unnormalised with
    a maximum of 1 (exp(logits - max)).

    Top-p keeps the fewest most-likely tokens whose mass reaches top_p: every token with
    p >= t*, t* the largest t such that the mass of {p >= t} is >= top_p * total. Found by
    bisection over the bit patterns of non-negative float32 (ordered as the values they encode),
    31 masked sums over [B, V], instead of sorting the vocabulary at every step (a full sort,
    `lax.top_k` with k = V, is much slower on a CPU). Equal to the sorted definition except that
    a tie at t* keeps all tied tokens.
    """
    target_B = top_p * jnp.sum(probs_BV, axis=-1)
    # probs <= 1 (the largest is exp(0)), so bits(1.0) + 1 is above every probability.
    lo_B = jnp.zeros(probs_BV.shape[:1], jnp.int32)  # mass of {p >= 0} = total >= target
    hi_B = jnp.full_like(lo_B, jax.lax.bitcast_convert_type(jnp.float32(1.0), jnp.int32) + 1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        t = jax.lax.bitcast_convert_type(mid, jnp.float32)[:, None]
        enough = jnp.sum(jnp.where(probs_BV >= t, probs_BV, 0.0), axis=-1) >= target_B
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo_B, _ = jax.lax.fori_loop(0, 31, halve, (lo_B, hi_B))  # hi - lo < 2^31 halves to 1
    return jax.lax.bitcast_convert_type(lo_B, jnp.float32)


def _draw_truncated(logits_BV: jax.Array, keys_B: jax.Array, top_k: int, top_p: float):
    index_BK = None
    if 0 < top_k < logits_BV.shape[-1]:
        # Only the k largest stay candidates; lax.top_k with a small k is a partial sort.
        logits_BV, index_BK = jax.lax.top_k(logits_BV, top_k)
    if top_p < 1.0:
        probs_BV = jnp.exp(logits_BV - jnp.max(logits_BV, axis=-1, keepdims=True))
        floor_B = _top_p_floor(probs_BV, top_p)
        logits_BV = jnp.where(probs_BV >= floor_B[:, None], logits_BV, -jnp.inf)
    choice_B = _inverse_cdf_draw(logits_BV, keys_B)
    if index_BK is None:
        return choice_B
    return jnp.take_along_axis(index_BK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)
