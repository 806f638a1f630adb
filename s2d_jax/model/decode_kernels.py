"""Decode attention kernels that read each row's own filled length: `decode_attention`.

The pure-JAX `cached_forward.cached_attention` reads the first `read_length` slots of every row,
the longest row's bucket, so a short row beside a long one reads the long row's slots. These read
a row's slots 0..length_B-1 only. The engine's slot pool writes each prompt from slot 0, so a row's
visible slots are exactly 0..length-1 and a length per row says everything the mask did.

- GPU: Pallas' GPU decode attention (`jax.experimental.pallas.ops.gpu.decode_attention`) splits
  the cache into k_splits parts of block_k-slot blocks and skips every block past the row's length
  (its flash-style partial results are merged across splits).
- TPU: `_ragged_tpu`, a Pallas TPU kernel over the pool's own [B, K, S, Dh] cache (Pallas' TPU
  paged kernels take a paged layout, which this cache is not): one program per (row, KV head,
  block of slots), online softmax across the blocks in VMEM scratch. The rows' lengths are
  prefetched scalars, and a block past a row's length maps to that row's last block, so the
  pipeline fetches nothing new for it and the program skips its compute.

DECODE_ATTENTION names the choices: "reference" (cached_attention), "pallas_gpu" / "pallas_tpu"
(a kernel compiled for that device) and "pallas_gpu_interpret" / "pallas_tpu_interpret" (the same
kernel run by Pallas' interpreter, on any device: how tests check it against the reference on a
CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from s2d_jax.model import decoder

DECODE_ATTENTION = (
    "reference",
    "pallas_gpu",
    "pallas_gpu_interpret",
    "pallas_tpu",
    "pallas_tpu_interpret",
)
# Cache lengths both kernels take: the GPU kernel's 16 splits of 16-slot blocks, the TPU one's
# blocks of 256 (or 512) slots.
KERNEL_SLOT_MULTIPLE = 256
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
    B, T, H, D = q_BTHD.shape
    K = k_BKSD.shape[1]
    if T != 1:
        raise ValueError(f"the decode kernel takes one query per row, got {T}")
    if kind not in DECODE_ATTENTION[1:]:
        raise ValueError(
            f"decode attention kernel {kind!r}; expected one of {DECODE_ATTENTION[1:]}"
        )
    dt = q_BTHD.dtype
    q_BKGD = q_BTHD[:, 0].reshape(B, K, H // K, D)
    k_BKSD, v_BKSD = k_BKSD.astype(dt), v_BKSD.astype(dt)
    if kind.startswith("pallas_tpu"):
        kernel = functools.partial(_ragged_tpu, interpret=kind == "pallas_tpu_interpret")
    else:
        kernel = functools.partial(_gpu, interpret=kind == "pallas_gpu_interpret")
    # A kernel is opaque to the partitioner, which would gather its operands (the whole KV
    # cache) onto every device: under a mesh each device runs it on its own rows.
    mesh = jax.sharding.get_abstract_mesh()
    rows = () if mesh.empty else decoder.row_axes(mesh, B)
    if rows:
        split = jax.sharding.PartitionSpec(rows)
        kernel = jax.shard_map(
            kernel, mesh=mesh, in_specs=(split,) * 4, out_specs=split, check_vma=False
        )
    out_BKGD = kernel(q_BKGD, k_BKSD, v_BKSD, length_B.astype(jnp.int32))
    return out_BKGD.reshape(B, 1, H, D).astype(dt)


def _gpu(q_BKGD, k_BKSD, v_BKSD, length_B, *, interpret: bool):
    from jax.experimental.pallas.ops.gpu import decode_attention as pallas_decode

    B, K, _, D = q_BKGD.shape
    k_splits, block_k = kernel_blocks(k_BKSD.shape[2])
    one_head = functools.partial(
        pallas_decode.decode_attn_unbatched,
        sm_scale=D**-0.5, block_h=_BLOCK_H, block_k=block_k, k_splits=k_splits, num_warps=None,
        num_stages=2, grid=None, interpret=interpret, debug=False,
        return_residuals=False, normalize_output=True,
    )  # fmt: skip
    length_BK = jnp.broadcast_to(length_B[:, None], (B, K))
    # vmapped over rows and kv heads: [G, Dh] queries against one head's [S, Dh] keys each
    return jax.vmap(jax.vmap(one_head, (0, 0, 0, None, 0)), (0, 0, 0, None, 0))(
        q_BKGD, k_BKSD, v_BKSD, None, length_BK
    )


def tpu_block_slots(slots: int) -> int:
    """Cache slots of one `_ragged_tpu` block: 512 where they divide the cache, else 256."""
    if slots % KERNEL_SLOT_MULTIPLE:
        raise ValueError(
            f"the TPU decode kernel needs a multiple of {KERNEL_SLOT_MULTIPLE} cache slots, "
            f"got {slots}"
        )
    return 512 if slots % 512 == 0 else KERNEL_SLOT_MULTIPLE


def _ragged_tpu(q_BKGD, k_BKSD, v_BKSD, length_B, *, interpret: bool):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    B, K, G, D = q_BKGD.shape
    block = tpu_block_slots(k_BKSD.shape[2])

    def kv_block(b, h, j, length_ref):  # past the row's last block: that block again, no fetch
        last = jnp.maximum(length_ref[b] - 1, 0) // block
        return b, h, jnp.minimum(j, last), 0

    query = pl.BlockSpec((1, 1, G, D), lambda b, h, j, length_ref: (b, h, 0, 0))
    cache = pl.BlockSpec((1, 1, block, D), kv_block)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(B, K, k_BKSD.shape[2] // block),
        in_specs=[query, cache, cache],
        out_specs=query,
        scratch_shapes=[pltpu.VMEM((G, 1), jnp.float32)] * 2 + [pltpu.VMEM((G, D), jnp.float32)],
    )
    params = None
    if not interpret:  # the slot blocks of one row and head accumulate in order
        params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))
    return pl.pallas_call(
        functools.partial(_ragged_tpu_block, block=block, scale=D**-0.5),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q_BKGD.shape, q_BKGD.dtype),
        compiler_params=params,
        interpret=interpret,
    )(length_B, q_BKGD, k_BKSD, v_BKSD)


def _ragged_tpu_block(length_ref, q_ref, k_ref, v_ref, out_ref, max_ref, sum_ref, acc_ref, *,
                      block: int, scale: float):  # fmt: skip
    """One (row, KV head, slot block) program: fold the block's scores into the running max,
    softmax denominator and weighted values; the last block writes the output."""
    from jax.experimental import pallas as pl

    row, j = pl.program_id(0), pl.program_id(2)
    length = length_ref[row]

    @pl.when(j == 0)
    def _():
        max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(j * block < length)  # a block with at least one filled slot
    def _():
        q_GD = q_ref[0, 0].astype(jnp.float32)
        k_SD, v_SD = k_ref[0, 0].astype(jnp.float32), v_ref[0, 0].astype(jnp.float32)
        contract_d = (((1,), (1,)), ((), ()))
        s_GS = jax.lax.dot_general(q_GD, k_SD, contract_d, preferred_element_type=jnp.float32)
        slot_GS = j * block + jax.lax.broadcasted_iota(jnp.int32, s_GS.shape, 1)
        s_GS = jnp.where(slot_GS < length, s_GS * scale, -jnp.inf)
        max_G1 = jnp.maximum(max_ref[...], s_GS.max(axis=1, keepdims=True))
        p_GS = jnp.exp(s_GS - max_G1)
        rescale_G1 = jnp.exp(max_ref[...] - max_G1)
        sum_ref[...] = rescale_G1 * sum_ref[...] + p_GS.sum(axis=1, keepdims=True)
        contract_s = (((1,), (0,)), ((), ()))
        pv_GD = jax.lax.dot_general(p_GS, v_SD, contract_s, preferred_element_type=jnp.float32)
        acc_ref[...] = rescale_G1 * acc_ref[...] + pv_GD
        max_ref[...] = max_G1

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        total_G1 = sum_ref[...]
        out = jnp.where(total_G1 > 0, acc_ref[...] / jnp.where(total_G1 > 0, total_G1, 1.0), 0.0)
        out_ref[0, 0] = out.astype(out_ref.dtype)
