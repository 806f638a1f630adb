"""The decoder's forward pass with a per-layer KV cache, for the sampler's decode loop.

`model.forward` is the training path (layers scanned, rematerialised); this is the sampling path:
one [B, K, S, Dh] buffer per layer written one slot at a time and layers unrolled, which on a CPU
runs a decode step in ~40 ms where scanning a stacked cache took 100-160 ms (it rebuilt the whole
cache every step). It reuses model.py's norm, rope and logits; tests/test_sampler.py checks its
tokens and log-probs against `model.forward` and transformers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from s2d_jax import model


def init_cache(cfg: model.ModelConfig, batch: int, length: int) -> tuple[dict, ...]:
    """Zeroed sampler KV cache: per layer {"k", "v"} of [B, K, S, Dh], in the compute dtype.

    One buffer per layer (not `model.init_cache`'s stacked [L, ...]), so that a decode step
    writes each layer's new slot in place and its attention reads the buffer without slicing a
    copy out of a stacked array; heads come before slots so the attention dots batch over (B, K)
    without a transpose.
    """
    shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
    dt = jnp.dtype(cfg.compute_dtype)
    return tuple(
        {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in range(cfg.n_layers)
    )


def unstack_layers(params) -> dict:
    """Params with `layers` as a tuple of per-layer dicts (a copy of the layer weights).

    `forward_cached` runs the layers as unrolled code. Given stacked [L, ...] weights it slices
    layer l out of them inside the decode loop, and XLA on a CPU copies each slice at every step
    (one extra read and write of all layer weights per token); per-layer buffers avoid that.
    `generate(unstack=True)` pays for it with a transient copy of the layer weights.
    """
    if isinstance(params["layers"], tuple):
        return params
    n_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = tuple(jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(n_layers))
    return {**params, "layers": layers}


def _attention(q_BTHD, k_BKSD, v_BKSD, visible_BTS):
    """Grouped-query attention over a [B, K, S, Dh] cache; scores in float32. -> [B, T, H, Dh]."""
    B, T, H, Dh = q_BTHD.shape
    K = k_BKSD.shape[1]
    q_BTKGD = q_BTHD.reshape(B, T, K, H // K, Dh)
    scores = jnp.einsum("btkgd,bksd->bkgts", q_BTKGD, k_BKSD, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(Dh)
    scores = jnp.where(visible_BTS[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSD.dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs, v_BKSD).reshape(B, T, H, Dh)


def _block(cfg, x_BTD, p, positions_BT, inv_freq, kv, slot, visible_BTS):
    """One decoder block (as `model._layer`) writing its K/V at `slot` of its cache `kv`."""
    dt = x_BTD.dtype
    h = model.rms_norm(x_BTD, p["attn_norm"], cfg.norm_eps)
    q = jnp.einsum("btd,dhk->bthk", h, p["wq"].astype(dt))
    k = jnp.einsum("btd,dhk->bthk", h, p["wk"].astype(dt))
    v = jnp.einsum("btd,dhk->bthk", h, p["wv"].astype(dt))
    if cfg.attention_bias:
        q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
    if cfg.qk_norm:
        q = model.rms_norm(q, p["q_norm"], cfg.norm_eps)
        k = model.rms_norm(k, p["k_norm"], cfg.norm_eps)
    q = model.apply_rope(q, positions_BT, inv_freq)
    k = model.apply_rope(k, positions_BT, inv_freq)
    kv = {
        name: jax.lax.dynamic_update_slice(
            kv[name], new.transpose(0, 2, 1, 3).astype(kv[name].dtype), (0, 0, slot, 0)
        )
        for name, new in (("k", k), ("v", v))
    }
    attn = _attention(q, kv["k"].astype(dt), kv["v"].astype(dt), visible_BTS)
    out = jnp.einsum("bthk,hkd->btd", attn, p["wo"].astype(dt))
    if cfg.attention_bias:
        out = out + p["bo"].astype(dt)
    x_BTD = x_BTD + out
    h = model.rms_norm(x_BTD, p["mlp_norm"], cfg.norm_eps)
    gate = jnp.einsum("btd,df->btf", h, p["w_gate"].astype(dt))
    up = jnp.einsum("btd,df->btf", h, p["w_up"].astype(dt))
    x_BTD = x_BTD + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["w_down"].astype(dt))
    return x_BTD, kv


def forward_cached(cfg: model.ModelConfig, params, tokens, positions, cache, slot, kv_mask):
    """`model.decode` for the sampler: final-normed hidden [B, T, D] and the updated cache.

    `params` with stacked layers or from `unstack_layers`; tokens, positions [B, T] go to slots
    slot..slot+T-1 of `cache` (see `init_cache`); kv_mask [B, S] marks real slots, those of this
    call included; a query at slot s sees slots <= s. The layers are unrolled (compile time grows
    with L) so that each reads and writes its own cache buffer in place. Tests check the results
    against `model.forward`.
    """
    T, S = tokens.shape[1], kv_mask.shape[1]
    visible_TS = jnp.arange(S)[None, :] <= slot + jnp.arange(T)[:, None]
    visible_BTS = visible_TS[None] & kv_mask[:, None, :]
    inv_freq = model.rope_frequencies(cfg)
    x = params["embed"].astype(jnp.dtype(cfg.compute_dtype))[tokens]
    layers, new_cache = params["layers"], []
    for i, kv in enumerate(cache):
        p = layers[i] if isinstance(layers, tuple) else jax.tree.map(lambda w, i=i: w[i], layers)
        x, kv = _block(cfg, x, p, positions, inv_freq, kv, slot, visible_BTS)
        new_cache.append(kv)
    return model.rms_norm(x, params["final_norm"], cfg.norm_eps), tuple(new_cache)
