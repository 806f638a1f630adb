"""Blocked causal attention for the training and scoring forward: never a [T, T] array.

`decoder.attention` materialises the [B, H, T, T] float32 scores, 45 GiB for one layer of one
19,456-token Qwen3-8B row. Here queries and keys are cut into blocks of `block` tokens; for each
query block a scan over the key blocks keeps a running maximum, normaliser and weighted sum
(the online softmax of flash attention), so one step holds a [B, H, block, block] tile. Key
blocks wholly after the query block are skipped (`lax.cond`), which halves the work.

Memory under `jax.grad`: both loops are rematerialised (`jax.checkpoint`), so the backward pass
keeps one query block's running sums per key block ([n_blocks, B, block, H, Dh] float32) instead
of every tile's probabilities. Pure JAX, so it runs on any backend and `decoder.attention` is
its reference (tests/test_attention.py).

    out_BTHD = blocked_attention(q_BTHD, k_BTKD, v_BTKD, attention_mask_BT, block=512)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_NO_SCORE = jnp.finfo(jnp.float32).min  # finite, as decoder.attention fills hidden keys


def _pad_time(x, T_pad: int):
    return jnp.pad(x, [(0, 0), (0, T_pad - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def _tile(carry, q_BCKGD, i, key, *, block: int, scale: float):
    """Fold key block j into query block i's running (max, normaliser, weighted sum)."""
    offsets_C = jnp.arange(block)
    max_BKGC, norm_BKGC, acc_BCKGD = carry
    k_BCKD, v_BCKD, mask_BC, j = key
    scores_BKGCS = jnp.einsum(
        "bckgd,bskd->bkgcs", q_BCKGD, k_BCKD, preferred_element_type=jnp.float32
    )
    causal_CS = (i * block + offsets_C)[:, None] >= (j * block + offsets_C)[None, :]
    visible_B11CS = (causal_CS[None] & mask_BC[:, None, :])[:, None, None]
    scores_BKGCS = jnp.where(visible_B11CS, scores_BKGCS * scale, _NO_SCORE)
    new_max_BKGC = jnp.maximum(max_BKGC, scores_BKGCS.max(-1))
    rescale_BKGC = jnp.exp(max_BKGC - new_max_BKGC)
    probs_BKGCS = jnp.exp(scores_BKGCS - new_max_BKGC[..., None])
    norm_BKGC = norm_BKGC * rescale_BKGC + probs_BKGCS.sum(-1)
    weighted_BCKGD = jnp.einsum(
        "bkgcs,bskd->bckgd",
        probs_BKGCS.astype(v_BCKD.dtype),
        v_BCKD,
        preferred_element_type=jnp.float32,
    )
    acc_BCKGD = acc_BCKGD * jnp.moveaxis(rescale_BKGC, -1, 1)[..., None] + weighted_BCKGD
    return new_max_BKGC, norm_BKGC, acc_BCKGD


def blocked_attention(q_BTHD, k_BTKD, v_BTKD, attention_mask_BT, *, block: int) -> jax.Array:
    """Causal grouped-query attention over real keys, [B, T, H, Dh] in q's dtype.

    Query t sees key s when s <= t and attention_mask_BT[:, s]; as `decoder.attention` with
    `decoder._causal_visible(attention_mask_BT)`, scores and sums in float32. Rows whose query
    sees no key (padding before the first real token) are finite but differ from the dense path's
    (meaningless in both). T need not be a multiple of `block`: the tail is padded and dropped.
    """
    B, T, H, Dh = q_BTHD.shape
    K = k_BTKD.shape[2]
    G = H // K  # query heads per kv head
    block = min(block, T)  # a short row is one block, not padded up to `block`
    n = -(-T // block)
    T_pad = n * block
    q_NBCKGD = _pad_time(q_BTHD, T_pad).reshape(B, n, block, K, G, Dh).swapaxes(0, 1)
    k_NBCKD = _pad_time(k_BTKD, T_pad).reshape(B, n, block, K, Dh).swapaxes(0, 1)
    v_NBCKD = _pad_time(v_BTKD, T_pad).reshape(B, n, block, K, Dh).swapaxes(0, 1)
    mask_NBC = _pad_time(attention_mask_BT.astype(bool), T_pad).reshape(B, n, block).swapaxes(0, 1)
    tile = functools.partial(_tile, block=block, scale=1.0 / math.sqrt(Dh))

    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def query_block(q_BCKGD, i):
        @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
        def step(carry, key):
            j = key[-1]
            # Key blocks after the query block are all hidden: skip their work.
            carry = jax.lax.cond(j <= i, lambda c: tile(c, q_BCKGD, i, key), lambda c: c, carry)
            return carry, None

        carry0 = (
            jnp.full((B, K, G, block), _NO_SCORE, jnp.float32),
            jnp.zeros((B, K, G, block), jnp.float32),
            jnp.zeros((B, block, K, G, Dh), jnp.float32),
        )
        keys = (k_NBCKD, v_NBCKD, mask_NBC, jnp.arange(n))
        _, norm_BKGC, acc_BCKGD = jax.lax.scan(step, carry0, keys)[0]
        out_BCKGD = acc_BCKGD / jnp.moveaxis(norm_BKGC, -1, 1)[..., None]
        return out_BCKGD.astype(q_BTHD.dtype)

    out_NBCKGD = jax.lax.map(lambda args: query_block(*args), (q_NBCKGD, jnp.arange(n)))
    return out_NBCKGD.swapaxes(0, 1).reshape(B, T_pad, H, Dh)[:, :T]
