"""The decoder's forward pass over a KV cache: the one cached path (sampler, fit tool, tests).

`decoder.forward` is the training path (layers scanned, rematerialised). This one keeps one
[B, K, S, Dh] buffer per layer, written one slot at a time, and unrolls the layers: each layer
then writes and reads its own buffer in place, where scanning a stacked [L, ...] cache would
rebuild the whole cache at every step. It reads the weights in the sampling layout,
`PerLayerParams` (`unstack_layers` of the stacked training params). The block's arithmetic is
decoder.py's (`attention_inputs`, `attention`, `attention_output_and_mlp`); tests/test_sampler.py
checks tokens against transformers and log-probs against `decoder.forward`.

    weights = unstack_layers(params, dtype=cfg.compute_dtype)
    cache = init_cache(cfg, batch, slots)
    hidden_BTD, cache = forward_cached(cfg, weights, tokens_BT, positions_BT, cache, 0, kv_mask_BS)
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from s2d_jax.model import decode_kernels, decoder

# Logical axes of a cache leaf [B, K, S, Dh] (see distributed/sharding.py's rules tables).
CACHE_LEAF_AXES = ("act_batch", "act_kv_heads", "act_len", "head_dim")


@flax.struct.dataclass
class PerLayerParams:
    """The params in the sampling layout: each layer's weights in buffers of their own.

    layers: L trees, layer l's slice of the stacked params' `layers` tree (the same names, the
      leading layer axis dropped).
    rest: every other parameter (embed, final_norm, and lm_head when untied), as in the stacked
      params, so `decoder.logits_from_hidden(cfg, weights.rest, hidden)` reads it.

    A pytree: jit, device_put and sharding trees take it as they take the params dict.
    """

    layers: tuple[decoder.Params, ...]
    rest: decoder.Params


def init_cache(cfg: decoder.ModelConfig, batch: int, length: int) -> tuple[dict, ...]:
    """Zeroed KV cache: per layer {"k", "v"} of [B, K, S, Dh], in the compute dtype.

    One buffer per layer (not a stacked [L, ...] array), so that a decode step writes each
    layer's new slot in place and its attention reads the buffer without slicing a copy out of a
    stacked array; heads come before slots so the attention dots batch over (B, K) without a
    transpose.
    """
    shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
    dt = jnp.dtype(cfg.compute_dtype)
    return tuple(
        {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)
    )


def cache_axes(cfg: decoder.ModelConfig) -> tuple[dict, ...]:
    """The tree of `init_cache` with each leaf replaced by its logical axis names."""
    return tuple({"k": CACHE_LEAF_AXES, "v": CACHE_LEAF_AXES} for _ in range(cfg.n_layers))


def unstack_layers(params: decoder.Params, dtype: str | None = None) -> PerLayerParams:
    """Stacked params (`decoder.init_params`' layout) -> `PerLayerParams`: a copy of the layer
    weights, one tree per layer, every weight cast to `dtype` when given (the compute dtype: a
    decode step reads each weight once per token, so float32 masters would double the bytes it
    reads in bfloat16 compute).

    `forward_cached` runs the layers as unrolled code. Slicing layer l out of stacked [L, ...]
    weights inside the decode loop makes XLA (CPU and GPU) copy each slice at every step (one
    extra read and write of all layer weights per token); per-layer buffers avoid that for one
    copy per `sampler.generate` call.
    """
    if dtype is not None:
        params = jax.tree.map(lambda w: w.astype(dtype), params)
    n_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = tuple(jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(n_layers))
    return PerLayerParams(layers=layers, rest={k: v for k, v in params.items() if k != "layers"})


def _write_slots(kv_BKSD, new_BTKD, slot):
    """kv_BKSD with new_BTKD written at slots slot..slot+T-1: one slot for every row (a scalar,
    one dynamic_update_slice) or one per row (slot [B]: a scatter, in place in a loop carry)."""
    new_BKTD = new_BTKD.transpose(0, 2, 1, 3).astype(kv_BKSD.dtype)
    if jnp.ndim(slot) == 0:
        return jax.lax.dynamic_update_slice(kv_BKSD, new_BKTD, (0, 0, slot, 0))

    def write_row(kv_KSD, new_KTD, slot):
        return jax.lax.dynamic_update_slice(kv_KSD, new_KTD, (0, slot, 0))

    return jax.vmap(write_row)(kv_BKSD, new_BKTD, slot)


def cached_attention(
    q_BTHD, k_BKSD, v_BKSD, visible_BTS, read_length: int, length_B=None, kernel="reference"
):
    """Attention of the queries over the first `read_length` cache slots: the one place the
    cached path picks its attention. "reference" is the pure-JAX path: the slots past
    read_length are never read, those before it are read whether filled or not (visible_BTS
    masks them). A kernel of `decode_kernels` reads each row's slots 0..length_B-1 only (one
    query per row, every row's prompt written from slot 0)."""
    if kernel != "reference":
        k_BKSD, v_BKSD = (x[:, :, :read_length] for x in (k_BKSD, v_BKSD))
        return decode_kernels.decode_attention(q_BTHD, k_BKSD, v_BKSD, length_B, kernel)
    dt = q_BTHD.dtype
    k_BKSD, v_BKSD = (x[:, :, :read_length].astype(dt) for x in (k_BKSD, v_BKSD))
    visible_BTS = visible_BTS[:, :, :read_length]
    return decoder.attention(q_BTHD, k_BKSD, v_BKSD, visible_BTS, kv_axes="bksd")


def _block(cfg, x_BTD, p, positions_BT, inv_freq, kv_BKSD, slot, visible_BTS, read_length,
           kernel):  # fmt: skip
    """One decoder block writing its K/V at `slot` of its cache `kv_BKSD` ({"k", "v"}), then
    attending over the first `read_length` slots of it (`cached_attention` with `kernel`)."""
    q_BTHD, k_BTKD, v_BTKD = decoder.attention_inputs(cfg, x_BTD, p, positions_BT, inv_freq)
    kv_BKSD = {
        name: _write_slots(kv_BKSD[name], new_BTKD, slot)
        for name, new_BTKD in (("k", k_BTKD), ("v", v_BTKD))
    }
    T = x_BTD.shape[1]
    length_B = slot + T  # a row's filled slots once this call's are written (slot [B])
    attn_BTHD = cached_attention(
        q_BTHD, kv_BKSD["k"], kv_BKSD["v"], visible_BTS, read_length, length_B, kernel
    )
    return decoder.attention_output_and_mlp(cfg, x_BTD, attn_BTHD, p), kv_BKSD


def forward_cached(
    cfg: decoder.ModelConfig,
    params: PerLayerParams,
    tokens,
    positions,
    cache,
    slot,
    kv_mask,
    read_length: int | None = None,
    decode_attention: str = "reference",
):
    """Final-normed hidden [B, T, D] of tokens [B, T] written at cache slots slot..slot+T-1.

    `params` from `unstack_layers`; positions [B, T] are rope positions; `cache` from
    `init_cache`; `slot` is one slot for every row (a scalar, the static sampler's layout) or
    one per row ([B] int32: rows at different lengths, the continuous engine's slot pool). A
    query at slot s sees slots <= s; kv_mask [B, S] also marks the real slots (this call's
    included), or None when every slot <= s is real (prompts written from slot 0, no padding).
    `read_length` (static, >= the largest slot + T) limits the attention to the first
    read_length slots (`cached_attention`); None reads all S. `decode_attention` names its
    kernel (`decode_kernels.DECODE_ATTENTION`): a kernel takes one token per row, slot [B] and
    no kv_mask (every row's prompt from slot 0). Returns (hidden, new cache). The
    layers are unrolled (compile time grows with L) so each updates its own buffer in place.

    Choosing the read length per step inside a compiled loop with `lax.switch` was tried and
    cost more than it saved, and compiled far slower: the prefix slices are copied before the
    dots. A caller bounds the read length instead by compiling a loop per read-length bucket
    (the continuous engine's decode windows, rollout/slots.py).
    """
    tokens_BT, positions_BT = tokens, positions
    (B, T), S = tokens_BT.shape, cache[0]["k"].shape[2]
    if decode_attention != "reference" and (T != 1 or kv_mask is not None or jnp.ndim(slot) != 1):
        raise ValueError(
            f"decode_attention={decode_attention!r} takes one token per row at slot [B] with no "
            f"kv_mask (prompts from slot 0); got T={T}, kv_mask={kv_mask is not None}"
        )
    read_length = S if read_length is None else read_length
    first_B = jnp.broadcast_to(jnp.asarray(slot, jnp.int32), (B,))
    query_slot_BT = first_B[:, None] + jnp.arange(T)[None, :]
    visible_BTS = jnp.arange(S)[None, None, :] <= query_slot_BT[:, :, None]
    if kv_mask is not None:
        visible_BTS = visible_BTS & kv_mask[:, None, :]
    inv_freq = decoder.rope_frequencies(cfg)
    x_BTD = params.rest["embed"].astype(jnp.dtype(cfg.compute_dtype))[tokens_BT]
    new_cache = []
    for p, kv_BKSD in zip(params.layers, cache, strict=True):
        x_BTD, kv_BKSD = _block(
            cfg, x_BTD, p, positions_BT, inv_freq, kv_BKSD, slot, visible_BTS, read_length,
            decode_attention,
        )  # fmt: skip
        new_cache.append(kv_BKSD)
    return decoder.rms_norm(x_BTD, params.rest["final_norm"], cfg.norm_eps), tuple(new_cache)


def logits_from_hidden(cfg: decoder.ModelConfig, params: PerLayerParams, hidden):
    """`decoder.logits_from_hidden` on per-layer params: [..., D] -> [..., V] float32."""
    return decoder.logits_from_hidden(cfg, params.rest, hidden)
