"""The continuous engine's jitted phases over a fixed pool of decode slots (engine.py drives them).

A slot is one row in flight: its KV cache row holds the prompt from slot 0 (no padding, so a
token's cache slot is its rope position) and then its completion, token i fed at slot
prompt_len - 1 + i. Rows in the pool are at different lengths, so every decode step writes one
cache slot per row (`forward_cached` with slot [B]).

    pool = new_pool_jit(seed, max_new_tokens, cfg=cfg, slots=B, length=S, mesh=m, data_axis=a)
    pool = prefill_jit(pool, weights, prompt_UP, dest_U, cfg=cfg, mesh=m, data_axis=a)
    pool = admit_jit(pool, source_A, dest_A, row_A, prompt_len_A, last_token_A,
                     prompt_width=P, mesh=m, data_axis=a)
    pool, tokens_BW, logprobs_BW = window_jit(pool.replace(settings=settings), weights,
                                              cfg=cfg, read_length=R, steps=W, kernel=k)
    pool = compact(pool, keep_HC, mesh=m, data_axis=a)  # one jitted copy per cache layer

Every index array is padded to a shape bucket by the caller; a destination index of B (past the
pool) marks a padding entry, dropped by the scatters. Each phase compiles once per shape
(pool size B, cache length S, prompt width P, bucket of U / A / C, read length R, steps W), and
the phases donate the pool (`compact` frees it layer by layer), so the cache is updated in place.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from s2d_jax.model.cached_forward import (
    PerLayerParams,
    forward_cached,
    init_cache,
    logits_from_hidden,
)
from s2d_jax.rollout.phases import Settings, constrain_rows
from s2d_jax.rollout.token_selection import sample_tokens


@flax.struct.dataclass
class SlotPool:
    """The decode slots: the KV cache and, per slot, the row it holds and how far it got.

    A free slot is `done`; a slot keeps its prompt's KV (cache slots < prompt_len - 1) until it
    is given a new row, which is how a later sample of the same prompt forks from it.
    """

    cache: tuple  # init_cache layout: per layer {"k", "v"} [B, K, S, Dh]
    last_token_B: jax.Array  # int32: the token fed at the next step
    prompt_len_B: jax.Array  # int32: real prompt tokens (cache slots 0..prompt_len-1)
    index_B: jax.Array  # int32: tokens sampled so far, the next one's index
    row_B: jax.Array  # int32: the request's row (prompt * num_samples + sample)
    done_B: jax.Array  # bool: free, or ended (EOS or max_new_tokens)
    seed: jax.Array  # [] uint32
    max_new_tokens: jax.Array  # [] int32 (dynamic: every length shares a compile)
    settings: Settings | None = flax.struct.field(pytree_node=False)


def _map_rows(pool: SlotPool, fn) -> SlotPool:
    """`fn` applied to every per-slot array (leading dimension B), the cache included."""
    per_slot = ("cache", "last_token_B", "prompt_len_B", "index_B", "row_B", "done_B")
    return pool.replace(**{name: jax.tree.map(fn, getattr(pool, name)) for name in per_slot})


def _rows_split(pool: SlotPool, mesh, data_axis) -> SlotPool:
    return _map_rows(pool, lambda x: constrain_rows(x, mesh, data_axis))


def _new_pool(seed, max_new_tokens, *, cfg, slots, length, mesh, data_axis) -> SlotPool:
    """`slots` free slots of `length` cache slots each, split over the data axes."""
    B = slots
    pool = SlotPool(
        cache=init_cache(cfg, B, length),
        last_token_B=jnp.zeros((B,), jnp.int32),
        prompt_len_B=jnp.ones((B,), jnp.int32),
        index_B=jnp.zeros((B,), jnp.int32),
        row_B=jnp.zeros((B,), jnp.int32),
        done_B=jnp.ones((B,), bool),
        seed=jnp.asarray(seed, jnp.uint32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
        settings=None,
    )
    return _rows_split(pool, mesh, data_axis)


def _prefill(pool: SlotPool, params: PerLayerParams, prompt_UP, dest_U, *, cfg, mesh, data_axis):
    """Prefill U prompts [U, P] (right-padded) and write their cache slots 0..P-1 into slots
    dest_U of the pool.

    Each prompt runs once, however many samples it has: `admit` copies its KV to the others.
    The last prompt token is fed again by the first decode step (it samples the first token),
    and the padding's KV lies past it, so both are overwritten before any query reads them.
    """
    U, P = prompt_UP.shape
    prompt_UP = constrain_rows(prompt_UP, mesh, data_axis)
    positions_UT = jnp.broadcast_to(jnp.arange(P - 1, dtype=jnp.int32), (U, P - 1))
    staged = jax.tree.map(lambda c: constrain_rows(c, mesh, data_axis), init_cache(cfg, U, P))
    _, staged = forward_cached(cfg, params, prompt_UP[:, :-1], positions_UT, staged, 0, None, P)

    def write(c_BKSD, s_UKPD):
        return c_BKSD.at[dest_U, :, :P].set(s_UKPD, mode="drop")

    return _rows_split(pool.replace(cache=jax.tree.map(write, pool.cache, staged)), mesh, data_axis)


def _admit(
    pool, source_A, dest_A, row_A, prompt_len_A, last_token_A, *, prompt_width, mesh, data_axis
):
    """Give slots dest_A their rows: fork the prompt's KV (cache slots 0..P-1) from slot
    source_A (a slot holding that prompt: just prefilled, or an earlier sample's), reset the
    row's counters. All copies read the cache before any is written."""
    P = prompt_width

    def fork(c_BKSD):
        return c_BKSD.at[dest_A, :, :P].set(c_BKSD[source_A, :, :P], mode="drop")

    def put(x_B, value):
        return x_B.at[dest_A].set(value, mode="drop")

    pool = pool.replace(
        cache=jax.tree.map(fork, pool.cache),
        last_token_B=put(pool.last_token_B, last_token_A),
        prompt_len_B=put(pool.prompt_len_B, prompt_len_A),
        index_B=put(pool.index_B, 0),
        row_B=put(pool.row_B, row_A),
        done_B=put(pool.done_B, False),
    )
    return _rows_split(pool, mesh, data_axis)


def _decode_step(pool: SlotPool, params: PerLayerParams, cfg, read_length: int, kernel: str):
    """Feed each slot's last token at its own cache slot, sample the next; (pool, tokens [B],
    logprobs [B]), pad and 0 for done slots.

    A row's key is fold_in(fold_in(key(seed), row), index): the static engine's, so neither
    the slot a row sits in nor the rows beside it change what it samples.
    """
    slot_B = pool.prompt_len_B - 1 + pool.index_B
    hidden_B1D, cache = forward_cached(
        cfg, params, pool.last_token_B[:, None], slot_B[:, None], pool.cache, slot_B, None,
        read_length, kernel,
    )  # fmt: skip
    logits_BV = logits_from_hidden(cfg, params, hidden_B1D[:, 0])
    row_keys_B = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(pool.seed), pool.row_B)
    keys_B = jax.vmap(jax.random.fold_in)(row_keys_B, pool.index_B)
    s = pool.settings
    token_B, logprob_B = sample_tokens(
        logits_BV, keys_B, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p
    )
    token_B = jnp.where(pool.done_B, s.pad_id, token_B)
    logprob_B = jnp.where(pool.done_B, 0.0, logprob_B)
    is_eos_B = jnp.zeros_like(pool.done_B)
    for eos in s.eos_ids:
        is_eos_B = is_eos_B | (token_B == eos)
    index_B = pool.index_B + (~pool.done_B).astype(jnp.int32)
    done_B = pool.done_B | is_eos_B | (index_B >= pool.max_new_tokens)
    pool = pool.replace(cache=cache, last_token_B=token_B, index_B=index_B, done_B=done_B)
    return pool, token_B, logprob_B


def _window(
    pool: SlotPool, params: PerLayerParams, *, cfg, read_length: int, steps: int, kernel: str
):
    """Up to `steps` decode steps (one `lax.while_loop`, left early once every slot is done),
    attending over the first `read_length` cache slots (by the `kernel` of
    `cached_forward.cached_attention`); returns (pool, tokens [B, steps],
    logprobs [B, steps]): step j's token of each slot in column j."""
    B = pool.row_B.shape[0]
    tokens_BW = jnp.full((B, steps), pool.settings.pad_id, jnp.int32)
    logprobs_BW = jnp.zeros((B, steps), jnp.float32)

    def running(carry):
        step, pool, _, _ = carry
        return (step < steps) & ~jnp.all(pool.done_B)

    def body(carry):
        step, pool, tokens_BW, logprobs_BW = carry
        pool, token_B, logprob_B = _decode_step(pool, params, cfg, read_length, kernel)
        tokens_BW = jax.lax.dynamic_update_slice(tokens_BW, token_B[:, None], (0, step))
        logprobs_BW = jax.lax.dynamic_update_slice(logprobs_BW, logprob_B[:, None], (0, step))
        return step + 1, pool, tokens_BW, logprobs_BW

    carry = (jnp.zeros((), jnp.int32), pool, tokens_BW, logprobs_BW)
    _, pool, tokens_BW, logprobs_BW = jax.lax.while_loop(running, body, carry)
    return pool, tokens_BW, logprobs_BW


def _take_rows(tree, keep_HC, *, mesh, data_axis):
    """Of each of the H data shards' slots in `tree` (arrays [B, ...]), its slots keep_HC[h]:
    arrays [H x C, ...]. Each shard keeps its own rows, so the copy stays on its device
    (gathering across the pool would make XLA assemble the whole new pool on every device)."""
    H, C = keep_HC.shape
    keep_HC = constrain_rows(keep_HC, mesh, data_axis)

    def take(x):
        x_HB = constrain_rows(x.reshape(H, x.shape[0] // H, *x.shape[1:]), mesh, data_axis)
        kept_HC = jax.vmap(lambda x_B, keep_C: x_B[keep_C])(x_HB, keep_HC)
        return constrain_rows(kept_HC.reshape(H * C, *x.shape[1:]), mesh, data_axis)

    return jax.tree.map(take, tree)


# Module-level jits, so their compile caches live as long as the process.
_SPLIT = ("mesh", "data_axis")
new_pool_jit = jax.jit(_new_pool, static_argnames=("cfg", "slots", "length", *_SPLIT))
prefill_jit = jax.jit(_prefill, static_argnames=("cfg", *_SPLIT), donate_argnames=("pool",))
admit_jit = jax.jit(_admit, static_argnames=("prompt_width", *_SPLIT), donate_argnames=("pool",))
window_jit = jax.jit(
    _window, static_argnames=("cfg", "read_length", "steps", "kernel"), donate_argnames=("pool",)
)
take_rows_jit = jax.jit(_take_rows, static_argnames=_SPLIT)


def compact(pool: SlotPool, keep_HC, *, mesh, data_axis) -> SlotPool:
    """A pool of H x C slots: of each data shard's slots, its slots keep_HC[h] (the rows still
    running, then free slots), so later windows compute only for those. `pool` is consumed.

    One jitted copy per cache layer, each layer's old buffers deleted before the next layer is
    copied: the old and the new pool are never held whole at once (the peak is the old pool and
    one layer of the new), so compaction stays within the KV budget.
    """
    split = dict(mesh=mesh, data_axis=data_axis)
    per_slot = ("last_token_B", "prompt_len_B", "index_B", "row_B", "done_B")
    small = take_rows_jit({name: getattr(pool, name) for name in per_slot}, keep_HC, **split)
    cache = []
    for layer in pool.cache:
        cache.append(take_rows_jit(layer, keep_HC, **split))
        for x in jax.tree.leaves(layer):
            x.delete()
    return pool.replace(cache=tuple(cache), **small)
