"""The decoder's forward pass over a KV cache: the one cached path (sampler, fit tool, tests).

`decoder.forward` is the training path (layers scanned, rematerialised). This one keeps one
[B, K, S, Dh] buffer per layer, written one slot at a time, and unrolls the layers: each layer
then writes and reads its own buffer in place, where scanning a stacked [L, ...] cache rebuilt
the whole cache every step (100-160 ms a step on a CPU instead of ~40). The block's arithmetic is
model.py's (`attention_inputs`, `attention`, `attention_output_and_mlp`); tests/test_sampler.py
checks tokens against transformers and log-probs against `decoder.forward`.

    cache = init_cache(cfg, batch, slots)
    hidden_BTD, cache = forward_cached(cfg, params, tokens_BT, positions_BT, cache, 0, kv_mask_BS)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s2d_jax.model import decoder

# Logical axes of a cache leaf [B, K, S, Dh] (see sharding.py's rules tables).
CACHE_LEAF_AXES = ("act_batch", "act_kv_heads", "act_len", "head_dim")


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


def unstack_layers(params, dtype: str | None = None) -> dict:
    """Params with `layers` as a tuple of per-layer dicts (a copy of the layer weights), every
    weight cast to `dtype` when given (the compute dtype: a decode step reads each weight once
    per token, so float32 masters would double the bytes it reads in bfloat16 compute).

    `forward_cached` runs the layers as unrolled code. Given stacked [L, ...] weights it slices
    layer l out of them inside the decode loop, and XLA (CPU and GPU) copies each slice at every
    step (one extra read and write of all layer weights per token); per-layer buffers avoid that
    for one copy per `sampler.generate` call.
    """
    if dtype is not None:
        params = jax.tree.map(lambda w: w.astype(dtype), params)
    if isinstance(params["layers"], tuple):
        return params
    n_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = tuple(jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(n_layers))
    return {**params, "layers": layers}


def _block(cfg, x_BTD, p, positions_BT, inv_freq, kv, slot, visible_BTS, read_length):
    """One decoder block writing its K/V at `slot` of its cache `kv`, then attending over the
    first `read_length` slots of it."""
    dt = x_BTD.dtype
    q, k, v = decoder.attention_inputs(cfg, x_BTD, p, positions_BT, inv_freq)
    kv = {
        name: jax.lax.dynamic_update_slice(
            kv[name], new.transpose(0, 2, 1, 3).astype(kv[name].dtype), (0, 0, slot, 0)
        )
        for name, new in (("k", k), ("v", v))
    }
    k, v = (kv[name][:, :, :read_length].astype(dt) for name in ("k", "v"))
    attn = decoder.attention(q, k, v, visible_BTS[:, :, :read_length], kv_axes="bksd")
    return decoder.attention_output_and_mlp(cfg, x_BTD, attn, p), kv


def forward_cached(
    cfg: decoder.ModelConfig,
    params,
    tokens,
    positions,
    cache,
    slot,
    kv_mask,
    read_length: int | None = None,
):
    """Final-normed hidden [B, T, D] of tokens [B, T] written at cache slots slot..slot+T-1.

    `params` with stacked layers or from `unstack_layers`; positions [B, T] are rope positions;
    `cache` from `init_cache`; kv_mask [B, S] marks the real slots, this call's included; a query
    at slot s sees slots <= s. `read_length` (static, >= slot + T) limits the attention to the
    first read_length slots (the prefill's prompt slots); None reads all S. Returns (hidden,
    new cache). The layers are unrolled (compile time grows with L) so each updates its own
    buffer in place.

    A decode step reads the whole cache, unfilled slots included: in a one-off A/B on an H100
    (Qwen3-1.7B, batch 64, 768 slots; the script was not kept, so treat the figures as a lead),
    choosing a filled prefix per step with `lax.switch` cost more than it saved
    (4.97 ms a step instead of 4.38: the prefix slices are copied before the dots, and
    multiply-and-reduce attention, which reads a slice in place, is slower than the dots) and
    compiled ~10x slower (100 s instead of 9).
    """
    T, S = tokens.shape[1], kv_mask.shape[1]
    read_length = S if read_length is None else read_length
    visible_TS = jnp.arange(S)[None, :] <= slot + jnp.arange(T)[:, None]
    visible_BTS = visible_TS[None] & kv_mask[:, None, :]
    inv_freq = decoder.rope_frequencies(cfg)
    x = params["embed"].astype(jnp.dtype(cfg.compute_dtype))[tokens]
    layers, new_cache = params["layers"], []
    for i, kv in enumerate(cache):
        p = layers[i] if isinstance(layers, tuple) else jax.tree.map(lambda w, i=i: w[i], layers)
        x, kv = _block(cfg, x, p, positions, inv_freq, kv, slot, visible_BTS, read_length)
        new_cache.append(kv)
    return decoder.rms_norm(x, params["final_norm"], cfg.norm_eps), tuple(new_cache)
