"""Full-vocabulary token terms from hidden states, in chunks that never hold [B, T, V].

Qwen3's vocabulary is 151,936 and responses reach 16k tokens, so the `[B, T, V]` logits of
`losses.py` do not fit. Here the inputs are final hidden states [B, T, D] and the unembedding
[D, V]. The forward pass walks the time axis in chunks of `chunk_size` tokens (one `[B, c, V]`
logits block at a time) and keeps only per-token numbers: the statistics and the log-normalisers.
The backward pass (a `jax.custom_vjp`) recomputes the logits chunk by chunk *and* vocabulary
slice by slice from those normalisers, so it holds a `[B, c, V / n]` block, and accumulates the
unembedding gradient in place slice by slice: autodiff of a chunk loop instead materialises a
full `[D, V]` partial gradient per chunk before adding it (measured in benchmarks/kl_memory.py).

Chunks run along time, not over flattened B*T, so a batch sharded over devices stays sharded. The
vocabulary slicing uses dynamic slices of the unembedding; with a vocabulary-sharded unembedding
pass `vocab_chunk=0` (one slice) rather than make the partitioner gather it.

Values equal the unchunked `losses` functions (the same per-token formulas run on each chunk);
gradients are the analytic ones, tested against autodiff of the unchunked losses. Only the graded
entry (`grad=`) carries a gradient: the other statistics are diagnostics, and the teacher inputs
are frozen (they receive zero gradient).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from s2d_jax.learn import losses

F32 = jnp.float32


def _logits(hidden_BcD: jax.Array, w_DV: jax.Array) -> jax.Array:
    # Products of bfloat16 numbers are exact in float32, so this equals a float32 matmul of the
    # upcast inputs without materialising a float32 copy of a bfloat16 unembedding.
    return jnp.einsum("bcd,dv->bcv", hidden_BcD, w_DV, preferred_element_type=F32)


def _split_time(x: jax.Array, c: int) -> jax.Array:
    """[B, T, ...] -> [T_pad / c, B, c, ...], zero-padding T up to a multiple of c."""
    B, T = x.shape[:2]
    n = math.ceil(T / c)
    x = jnp.pad(x, [(0, 0), (0, n * c - T)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((B, n, c) + x.shape[2:]), 1, 0)


def _merge_time(y: jax.Array, T: int) -> jax.Array:
    """[n, B, c, ...] -> [B, T, ...], dropping the padding."""
    n, B, c = y.shape[:3]
    return jnp.moveaxis(y, 0, 1).reshape((B, n * c) + y.shape[3:])[:, :T]


def map_time_chunks(fn: Callable, arrays: tuple, chunk_size: int):
    """fn over time chunks of arrays [B, T, ...] (None entries pass through as None).

    fn takes one [B, c, ...] slice of each array and returns a pytree of [B, c, ...] arrays,
    reassembled to [B, T, ...]. T is zero-padded to a multiple of c; padded rows are dropped.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    T = arrays[0].shape[1]
    c = min(chunk_size, T)
    split = tuple(None if x is None else _split_time(x, c) for x in arrays)
    out = jax.lax.map(lambda xs: fn(*xs), split)
    return jax.tree.map(lambda y: _merge_time(y, T), out)


def _vocab_slices(V: int, vocab_chunk: int | None) -> int:
    """Number of equal slices of V of at most vocab_chunk (1 when slicing is off (0 or None) or too
    fine)."""
    if not vocab_chunk or vocab_chunk >= V:
        return 1
    n = next(n for n in range(math.ceil(V / vocab_chunk), V + 1) if V % n == 0)
    # A vocabulary with no divisor near the target (a prime V) would give tiny, slow slices.
    return n if V // n >= vocab_chunk // 8 else 1


def _forward_stats(mode, chunk_size, h_s, w_s, h_t, w_t, targets):
    """Per-token statistics [B, T] and the log-normalisers the backward pass needs."""

    def chunk(h_s, h_t, y):
        logits_s = _logits(h_s, w_s)
        lse_s = jax.nn.logsumexp(logits_s, axis=-1)
        if mode == "logprob":
            return {"logprob": losses.token_logprobs(logits_s, y)}, lse_s, lse_s
        logits_t = _logits(h_t, w_t)
        stats = losses.kl_token_stats(logits_s, logits_t, y)
        return stats, lse_s, jax.nn.logsumexp(logits_t, axis=-1)

    return map_time_chunks(chunk, (h_s, h_t, targets), chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _graded_stats(mode, chunk_size, vocab_chunk, h_s, w_s, h_t, w_t, targets):
    return _forward_stats(mode, chunk_size, h_s, w_s, h_t, w_t, targets)[0]


def _graded_stats_fwd(mode, chunk_size, vocab_chunk, h_s, w_s, h_t, w_t, targets):
    stats, lse_s, lse_t = _forward_stats(mode, chunk_size, h_s, w_s, h_t, w_t, targets)
    kl = stats["reverse"] if mode == "reverse" else lse_s
    return stats, (h_s, w_s, h_t, w_t, targets, lse_s, lse_t, kl)


def _graded_stats_bwd(mode, chunk_size, vocab_chunk, residuals, ct_stats):
    h_s, w_s, h_t, w_t, targets, lse_s, lse_t, kl = residuals
    g = ct_stats[mode].astype(F32)  # [B, T]: cotangent of the graded statistic
    T, V = h_s.shape[1], w_s.shape[1]
    n_slices = _vocab_slices(V, vocab_chunk)
    Vc = V // n_slices
    c = min(chunk_size, T)
    y = jnp.zeros(h_s.shape[:2], jnp.int32) if targets is None else targets
    xs = (h_s, h_s if h_t is None else h_t, y, lse_s, lse_t, kl, g)
    xs = tuple(_split_time(x, c) for x in xs)  # [n_chunks, B, c, ...]

    # Vocabulary slices outside, token chunks inside: a slice's unembedding gradient is summed
    # over all tokens in a float32 [D, Vc] accumulator, then written once in the weight's dtype.
    def vocab_slice(j, carry):
        dh_NBcD, dw_DV = carry
        start = j * Vc
        w_s_j = jax.lax.dynamic_slice_in_dim(w_s, start, Vc, axis=1)
        w_t_j = None if w_t is None else jax.lax.dynamic_slice_in_dim(w_t, start, Vc, axis=1)

        def token_chunk(dw_j, xs_c):
            h_s_c, h_t_c, y_c, lse_s_c, lse_t_c, kl_c, g_c, dh_c = xs_c
            lp_s = _logits(h_s_c, w_s_j) - lse_s_c[..., None]  # [B, c, Vc]
            p_s = jnp.exp(lp_s)
            if mode == "logprob":  # d(s_y - lse) / ds = onehot(y) - pS
                onehot = (start + jnp.arange(Vc)) == y_c[..., None]
                dlogits = onehot.astype(F32) - p_s
            else:
                lp_t = _logits(h_t_c, w_t_j) - lse_t_c[..., None]
                if mode == "forward":  # d KL(pT || pS) / ds = pS - pT
                    dlogits = p_s - jnp.exp(lp_t)
                else:  # d KL(pS || pT) / ds = pS * (log pS - log pT - KL)
                    dlogits = p_s * (lp_s - lp_t - kl_c[..., None])
            dlogits = dlogits * g_c[..., None]
            dh_c = dh_c + jnp.einsum("bcv,dv->bcd", dlogits, w_s_j, preferred_element_type=F32)
            dw_j = dw_j + jnp.einsum("bcd,bcv->dv", h_s_c, dlogits, preferred_element_type=F32)
            return dw_j, dh_c

        dw_j0 = jnp.zeros((w_s.shape[0], Vc), F32)
        dw_j, dh_NBcD = jax.lax.scan(token_chunk, dw_j0, xs + (dh_NBcD,))
        dw_DV = jax.lax.dynamic_update_slice_in_dim(dw_DV, dw_j.astype(dw_DV.dtype), start, axis=1)
        return dh_NBcD, dw_DV

    dh0 = jnp.zeros(xs[0].shape, F32)
    dh_NBcD, dw_DV = jax.lax.fori_loop(0, n_slices, vocab_slice, (dh0, jnp.zeros_like(w_s)))
    dh = _merge_time(dh_NBcD, T).astype(h_s.dtype)
    zeros = lambda x: None if x is None else jnp.zeros_like(x)
    return dh, dw_DV, zeros(h_t), zeros(w_t), None


_graded_stats.defvjp(_graded_stats_fwd, _graded_stats_bwd)


def token_logprobs_chunked(
    hidden: jax.Array,
    unembedding: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int,
    vocab_chunk: int | None,
) -> jax.Array:
    """Log-prob of each target: hidden [B, T, D], unembedding [D, V], targets [B, T] -> [B, T] f32.

    Equals `losses.token_logprobs(hidden @ unembedding, targets)`; gradients reach both inputs.
    """
    w = unembedding.astype(hidden.dtype)
    args = (hidden, w, None, None, targets)
    return _graded_stats("logprob", chunk_size, vocab_chunk, *args)["logprob"]


def kl_token_stats_chunked(
    student_hidden: jax.Array,
    student_unembedding: jax.Array,
    teacher_hidden: jax.Array,
    teacher_unembedding: jax.Array,
    targets: jax.Array | None = None,
    *,
    grad: str | None = None,
    chunk_size: int,
    vocab_chunk: int | None,
) -> dict[str, jax.Array]:
    """`losses.kl_token_stats` from hidden states: [B, T, D], [D, V], [B, T, D_T], [D_T, V].

    Returns the same dict of [B, T] float32 arrays. `grad` ("forward" | "reverse" | None) names
    the one entry that carries a gradient to the student inputs.
    """
    if grad not in (None, "forward", "reverse"):
        raise ValueError(f"grad must be None, 'forward' or 'reverse', got {grad!r}")
    h_t = jax.lax.stop_gradient(teacher_hidden)
    w_t = jax.lax.stop_gradient(teacher_unembedding.astype(h_t.dtype))
    w_s = student_unembedding.astype(student_hidden.dtype)
    if grad is None:
        args = jax.lax.stop_gradient((student_hidden, w_s))
        return _forward_stats("forward", chunk_size, *args, h_t, w_t, targets)[0]
    return _graded_stats(grad, chunk_size, vocab_chunk, student_hidden, w_s, h_t, w_t, targets)


def kl_loss_chunked(
    direction: str,
    student_hidden: jax.Array,
    student_unembedding: jax.Array,
    teacher_hidden: jax.Array,
    teacher_unembedding: jax.Array,
    mask: jax.Array,
    targets: jax.Array | None = None,
    *,
    chunk_size: int,
    vocab_chunk: int | None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`losses.forward_kl_loss` (direction "forward": KL(teacher || student)) or
    `losses.reverse_kl_loss` ("reverse": analytic KL(student || teacher)), token-mean over mask
    [B, T], from hidden states [B, T, D] / [B, T, D_T] and unembeddings [D, V] / [D_T, V]."""
    stats = kl_token_stats_chunked(
        student_hidden,
        student_unembedding,
        teacher_hidden,
        teacher_unembedding,
        targets,
        grad=direction,
        chunk_size=chunk_size,
        vocab_chunk=vocab_chunk,
    )
    return losses.kl_loss_from_stats(stats, mask, direction)


forward_kl_loss_chunked = functools.partial(kl_loss_chunked, "forward")
reverse_kl_loss_chunked = functools.partial(kl_loss_chunked, "reverse")
