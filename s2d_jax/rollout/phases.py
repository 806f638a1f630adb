"""The sampler's jitted phases: the prefill, which builds the decode state, and the decode loop.

`sampler.py` calls them (its `prefill` and `decode`); tools/fit.py compiles these same jitted
functions ahead of time for its memory figures. Both read the weights as
`cached_forward.PerLayerParams`. The state `SamplerState` holds the prompt, the KV cache and what
has been sampled so far; `Settings` (how tokens are picked) are static, part of the decode
loop's jit cache key, and left out of the prefill's.

    state = prefill_jit(weights, prompt_BP, prompt_mask_BP, active_B, seed, max_new_tokens,
                        pad_id, cfg=cfg, gen_bucket=N, mesh=None, data_axis=("data",))
    state = decode_loop_jit(state.replace(settings=settings), weights, cfg=cfg)
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from s2d_jax.model import decoder
from s2d_jax.model.cached_forward import (
    PerLayerParams,
    forward_cached,
    init_cache,
    logits_from_hidden,
)
from s2d_jax.rollout.token_selection import sample_tokens

DataAxis = str | tuple[str, ...]  # one mesh axis, or several that rows are split over together


@dataclasses.dataclass(frozen=True)
class Settings:
    """How tokens are picked and when a row ends; static (hashed into the jit cache key)."""

    temperature: float
    top_k: int
    top_p: float
    eos_ids: tuple[int, ...]
    pad_id: int


@flax.struct.dataclass
class SamplerState:
    """Carry of the decode loop. Static settings are part of the jit cache key, not arrays.

    S = P + N_bucket cache slots; the token fed at step i sits in slot P - 1 + i.
    """

    prompt: jax.Array  # [B, P] int32 left-padded prompt tokens
    completion: jax.Array  # [B, N_bucket] int32 sampled tokens, pad_id where none
    logprobs: jax.Array  # [B, N_bucket] float32
    last_token: jax.Array  # [B] int32: the token fed at the next step
    positions: jax.Array  # [B] int32: its rope position
    done: jax.Array  # [B] bool: emitted EOS (or is a batch-padding row)
    lengths: jax.Array  # [B] int32
    kv_mask: jax.Array  # [B, S] bool: real prompt slots, and every completion slot
    cache: tuple  # init_cache layout: per layer {"k", "v"} [B, K, S, Dh]
    row_keys: jax.Array  # [B] PRNG keys
    step: jax.Array  # [] int32
    max_new_tokens: jax.Array  # [] int32 (dynamic, so every length in a bucket shares a compile)
    settings: Settings | None = flax.struct.field(pytree_node=False)


def constrain_rows(x, mesh, data_axis: DataAxis):
    """Shard x's leading (batch) dimension over the data axes (no-op without a mesh); the other
    dimensions are left to XLA (e.g. kv heads split like tensor-parallel K/V weights)."""
    if mesh is None:
        return x
    spec = Spec(data_axis, *[Spec.UNCONSTRAINED] * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _prefill(
    params: PerLayerParams,
    prompt_BP,
    prompt_mask_BP,
    active_B,
    seed,
    max_new_tokens,
    pad_id,
    *,
    cfg,
    gen_bucket,
    mesh,
    data_axis,
) -> SamplerState:
    """Fill the cache with prompt slots 0..P-2 [B, P] and build the decode loop's initial state.

    The sampling settings are left out (None), so that one prefill compile serves them all.
    """
    B, P = prompt_BP.shape
    S = P + gen_bucket
    kv_mask_BS = jnp.concatenate([prompt_mask_BP, jnp.ones((B, gen_bucket), bool)], axis=1)
    positions_BP = decoder.positions_from_mask(prompt_mask_BP)
    cache = init_cache(cfg, B, S)
    cache = jax.tree.map(lambda c: constrain_rows(c, mesh, data_axis), cache)
    # The prompt's attention reads only the P prompt slots, not the S - P completion slots.
    _, cache = forward_cached(
        cfg, params, prompt_BP[:, :-1], positions_BP[:, :-1], cache, 0, kv_mask_BS, P
    )
    rows_B = constrain_rows(jnp.arange(B), mesh, data_axis)
    row_keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), rows_B)
    return SamplerState(
        prompt=prompt_BP,
        completion=jnp.full((B, gen_bucket), pad_id, jnp.int32),
        logprobs=jnp.zeros((B, gen_bucket), jnp.float32),
        last_token=prompt_BP[:, -1],
        positions=positions_BP[:, -1],
        done=~active_B,
        lengths=jnp.zeros((B,), jnp.int32),
        kv_mask=kv_mask_BS,
        cache=cache,
        row_keys=row_keys_B,
        step=jnp.zeros((), jnp.int32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
        settings=None,
    )


def _decode_step(state: SamplerState, params: PerLayerParams, cfg) -> SamplerState:
    """Feed last_token [B] at slot P-1+step, sample the next token, record it."""
    hidden_B1D, cache = forward_cached(
        cfg,
        params,
        state.last_token[:, None],
        state.positions[:, None],
        state.cache,
        state.prompt.shape[1] - 1 + state.step,
        state.kv_mask,
    )
    logits_BV = logits_from_hidden(cfg, params, hidden_B1D[:, 0])
    keys_B = jax.vmap(jax.random.fold_in, (0, None))(state.row_keys, state.step)
    settings = state.settings
    token_B, logprob_B = sample_tokens(
        logits_BV,
        keys_B,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
    )
    token_B = jnp.where(state.done, settings.pad_id, token_B)
    logprob_B = jnp.where(state.done, 0.0, logprob_B)
    is_eos_B = jnp.zeros_like(state.done)
    for eos in settings.eos_ids:
        is_eos_B = is_eos_B | (token_B == eos)
    return state.replace(
        completion=jax.lax.dynamic_update_slice(
            state.completion, token_B[:, None], (0, state.step)
        ),
        logprobs=jax.lax.dynamic_update_slice(state.logprobs, logprob_B[:, None], (0, state.step)),
        last_token=token_B,
        positions=state.positions + 1,
        done=state.done | is_eos_B,
        lengths=state.lengths + (~state.done).astype(jnp.int32),
        cache=cache,
        step=state.step + 1,
    )


def decode_loop(
    state: SamplerState, params: PerLayerParams, cfg: decoder.ModelConfig
) -> SamplerState:
    """Decode until every row is done or max_new_tokens steps ran (one `lax.while_loop`)."""

    def running(s):
        return (s.step < s.max_new_tokens) & ~jnp.all(s.done)

    return jax.lax.while_loop(running, lambda s: _decode_step(s, params, cfg), state)


# Module-level jits, so their compile caches live as long as the process.
# The prefill: one compile per (config, buckets, batch size, mesh).
prefill_jit = jax.jit(_prefill, static_argnames=("cfg", "gen_bucket", "mesh", "data_axis"))
# The decode loop: state donated, so the cache is updated in place across calls.
decode_loop_jit = jax.jit(decode_loop, static_argnames=("cfg",), donate_argnames=("state",))
