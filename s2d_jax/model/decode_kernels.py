"""Decode attention kernels that read each row's own filled length: `decode_attention`.

The pure-JAX `cached_forward.cached_attention` reads the first `read_length` slots of every row,
the longest row's bucket, so a short row beside a long one reads the long row's slots. These read
a row's slots 0..length_B-1 only: Pallas' GPU decode attention
(`jax.experimental.pallas.ops.gpu.decode_attention`) splits the cache into k_splits parts of
block_k-slot blocks and skips every block past the row's length (its flash-style partial results
are merged across splits). The engine's slot pool writes each prompt from slot 0, so a row's
visible slots are exactly 0..length-1 and a length per row says everything the mask did.

DECODE_ATTENTION names the choices: "reference" (cached_attention), "pallas_gpu" (the kernel,
compiled for a GPU) and "pallas_interpret" (the same kernel run by Pallas' interpreter, on any
device: how tests check it against the reference on a CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DECODE_ATTENTION = ("reference", "pallas_gpu", "pallas_interpret")
KERNEL_SLOT_MULTIPLE = 256  # cache lengths the kernel takes: 16 splits of 16-slot blocks or more
_BLOCK_H = 16  # query heads per kernel program (fewer are padded, and masked, by the kernel)


def kernel_blocks(slots: int) -> tuple[int, int]:
    """(k_splits, block_k) for a cache of `slots` slots: as many splits as divide it (at most 16,
    each a multiple of 16 slots), blocks of the largest power of two <= 128 dividing a split."""
    if slots % 16:
        raise ValueError(f"the decode kernel needs a multiple of 16 cache slots, got {slots}")
    k_splits = next(k for k in (16, 8, 4, 2, 1) if slots % (16 * k) == 0)
    split = slots // k_splits
    block_k = next(b for b in (128, 64, 32, 16) if split % b == 0)
    return k_splits, block_k


def decode_attention(q_BTHD, k_BKSD, v_BKSD, length_B, kind: str):
    """Attention of one query per row [B, 1, H, Dh] over its cache slots 0..length_B-1 (of
    k/v [B, K, S, Dh]); returns [B, 1, H, Dh] in q's dtype. Rows with length 0 give 0."""
    from jax.experimental.pallas.ops.gpu import decode_attention as pallas_decode

    B, T, H, D = q_BTHD.shape
    K, S = k_BKSD.shape[1], k_BKSD.shape[2]
    if T != 1:
        raise ValueError(f"the decode kernel takes one query per row, got {T}")
    if kind not in DECODE_ATTENTION[1:]:
        raise ValueError(
            f"decode attention kernel {kind!r}; expected one of {DECODE_ATTENTION[1:]}"
        )
    k_splits, block_k = kernel_blocks(S)
    dt = q_BTHD.dtype
    one_head = functools.partial(
        pallas_decode.decode_attn_unbatched,
        sm_scale=D**-0.5, block_h=_BLOCK_H, block_k=block_k, k_splits=k_splits, num_warps=None,
        num_stages=2, grid=None, interpret=kind == "pallas_interpret", debug=False,
        return_residuals=False, normalize_output=True,
    )  # fmt: skip
    q_BKGD = q_BTHD[:, 0].reshape(B, K, H // K, D)
    length_BK = jnp.broadcast_to(length_B.astype(jnp.int32)[:, None], (B, K))
    # vmapped over rows and kv heads: [G, Dh] queries against one head's [S, Dh] keys each
    out_BKGD = jax.vmap(jax.vmap(one_head, (0, 0, 0, None, 0)), (0, 0, 0, None, 0))(
        q_BKGD, k_BKSD.astype(dt), v_BKSD.astype(dt), None, length_BK
    )
    return out_BKGD.reshape(B, 1, H, D).astype(dt)
