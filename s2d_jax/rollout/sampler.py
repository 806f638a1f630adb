"""Batched KV-cache sampler for rollouts: one jitted prefill, one jitted decode loop, log-probs.

    out = generate(cfg, params, [[1, 5, 7], [1, 9]], max_new_tokens=64, temperature=1.0,
                   eos_id=(151645, 151643), pad_id=151643, num_samples=8)
    out.tokens [B, P+N], out.completion_mask [B, N], out.logprobs [B, N]  (B = prompts * samples)

Prompts are left-padded to a length `bucket` P (16, 24, 32, 48, 64, ...) and the cache holds
P + N_bucket slots, so one stage compiles the prefill and the decode loop once per bucket, not
once per batch. The prefill runs the first P - 1 prompt slots (its logits are never materialised);
the decode loop then feeds one token per step, starting with the last prompt token, so every
sampled token comes out of the same single-token step function.

A row's randomness is `fold_in(fold_in(key(seed), row), step)`: it depends on the seed, its row
index and its own prompt only, never on the other rows of the batch or on their lengths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from s2d_jax.model import decoder
from s2d_jax.model.cached_forward import forward_cached, init_cache, unstack_layers
from s2d_jax.rollout.token_selection import sample_tokens

MIN_BUCKET = 16
DataAxis = str | tuple[str, ...]  # one mesh axis, or several that rows are split over together


@flax.struct.dataclass
class Rollout:
    """Generated rows (prompt-major: prompt 0's samples first), all on device.

    tokens [B, P+N] int32: the left-padded prompt (P = prompt bucket), then N = max_new_tokens
      completion slots. After a row's EOS the slots hold pad_id.
    prompt_mask [B, P] bool: real prompt tokens.
    completion_mask [B, N] bool: sampled tokens, the EOS token included (True), pad after it False.
    logprobs [B, N] float32: log-prob of each sampled token under log_softmax(logits / temperature)
      (plain log_softmax(logits) when temperature == 0), 0 where the mask is False.
    lengths [B] int32: completion tokens per row, EOS included.
    truncated [B] bool: the row reached max_new_tokens without emitting EOS.
    """

    tokens: jax.Array
    prompt_mask: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    truncated: jax.Array

    @property
    def attention_mask(self) -> jax.Array:
        """[B, P+N] bool: real tokens of the whole sequence (what `decoder.forward` takes)."""
        return jnp.concatenate([self.prompt_mask, self.completion_mask], axis=1)


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


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The padded length for `n` tokens: the smallest power of two or 1.5 x power of two that is
    >= max(n, minimum) (16, 24, 32, 48, 64, 96, 128, 192, ...).

    Jitted functions compile once per shape, so lengths are rounded up to a few buckets: two per
    octave keep padding under a third of a row (powers of two alone waste up to half).
    """
    power = max(minimum, 1 << (max(n, 1) - 1).bit_length())
    three_quarters = power * 3 // 4
    return three_quarters if three_quarters >= max(n, minimum) else power


def cache_bytes(cfg: decoder.ModelConfig, batch: int, length: int) -> int:
    """Bytes of the K and V caches (`init_cache`) for `batch` rows of `length` slots."""
    itemsize = jnp.dtype(cfg.compute_dtype).itemsize
    return 2 * cfg.n_layers * batch * length * cfg.n_kv_heads * cfg.head_dim * itemsize


# ----------------------------------------------------------------------------- jitted phases


def _constrain(x, mesh, data_axis: DataAxis):
    """Shard x's leading (batch) dimension over the data axes (no-op without a mesh); the other
    dimensions are left to XLA (e.g. kv heads split like tensor-parallel K/V weights)."""
    if mesh is None:
        return x
    spec = Spec(data_axis, *[Spec.UNCONSTRAINED] * (x.ndim - 1))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _prefill_arrays(
    params,
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
):
    """Fill the cache with prompt slots 0..P-2 [B, P] and build the decode loop's initial state.

    The sampling settings are left out (None), so that one prefill compile serves them all.
    """
    B, P = prompt_BP.shape
    S = P + gen_bucket
    kv_mask_BS = jnp.concatenate([prompt_mask_BP, jnp.ones((B, gen_bucket), bool)], axis=1)
    positions_BP = decoder.positions_from_mask(prompt_mask_BP)
    cache = init_cache(cfg, B, S)
    cache = jax.tree.map(lambda c: _constrain(c, mesh, data_axis), cache)
    # The prompt's attention reads only the P prompt slots, not the S - P completion slots.
    _, cache = forward_cached(
        cfg, params, prompt_BP[:, :-1], positions_BP[:, :-1], cache, 0, kv_mask_BS, P
    )
    rows = _constrain(jnp.arange(B), mesh, data_axis)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), rows)
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
        row_keys=row_keys,
        step=jnp.zeros((), jnp.int32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
        settings=None,
    )


def _decode_step(state: SamplerState, params, cfg) -> SamplerState:
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
    logits_BV = decoder.logits_from_hidden(cfg, params, hidden_B1D[:, 0])
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


def decode_loop(state: SamplerState, params, cfg: decoder.ModelConfig) -> SamplerState:
    """Decode until every row is done or max_new_tokens steps ran (one `lax.while_loop`)."""

    def running(s):
        return (s.step < s.max_new_tokens) & ~jnp.all(s.done)

    return jax.lax.while_loop(running, lambda s: _decode_step(s, params, cfg), state)


def to_rollout(state: SamplerState, rows: int, max_new_tokens: int) -> Rollout:
    """The first `rows` rows and max_new_tokens completion slots of a finished state (static)."""
    N = max_new_tokens
    P = state.prompt.shape[1]
    lengths = state.lengths[:rows]
    completion_mask = jnp.arange(N)[None, :] < lengths[:, None]
    return Rollout(
        tokens=jnp.concatenate([state.prompt[:rows], state.completion[:rows, :N]], axis=1),
        prompt_mask=state.kv_mask[:rows, :P],
        completion_mask=completion_mask,
        logprobs=jnp.where(completion_mask, state.logprobs[:rows, :N], 0.0),
        lengths=lengths,
        truncated=~state.done[:rows],
    )


def _jit_prefill(fn):
    """The prefill's jit: one compile per (config, buckets, batch size, mesh)."""
    return jax.jit(fn, static_argnames=("cfg", "gen_bucket", "mesh", "data_axis"))


def _jit_decode_loop(fn):
    """The decode loop's jit: state donated, so the cache is updated in place across calls."""
    return jax.jit(fn, static_argnames=("cfg",), donate_argnames=("state",))


# Module-level jits, so their compile caches live as long as the process (tests swap in counters).
_prefill_jit = _jit_prefill(_prefill_arrays)
_decode_loop_jit = _jit_decode_loop(decode_loop)
_to_rollout_jit = jax.jit(to_rollout, static_argnames=("rows", "max_new_tokens"))
_unstack_layers_jit = jax.jit(unstack_layers, static_argnames=("dtype",))


# ----------------------------------------------------------------------------- entry point


def make_settings(cfg, *, temperature, top_p, top_k, eos_id, pad_id) -> Settings:
    """Checked `Settings` (errors name the argument); eos_id is one id or a sequence of ids."""
    eos_ids = (eos_id,) if isinstance(eos_id, int | np.integer) else tuple(eos_id)
    eos_ids = tuple(int(e) for e in eos_ids)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = no top-k cut), got {top_k}")
    for name, ids in (("eos_id", eos_ids), ("pad_id", (pad_id,))):
        if any(not 0 <= i < cfg.vocab_size for i in ids):
            raise ValueError(f"{name} must be token ids in [0, {cfg.vocab_size}), got {ids}")
    return Settings(float(temperature), int(top_k), float(top_p), eos_ids, int(pad_id))


def _check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis):
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    V = cfg.vocab_size
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
        ids = np.asarray(prompt)
        if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= V:
            raise ValueError(f"prompts[{i}] must hold integer token ids in [0, {V}), got {prompt}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest > cfg.max_seq_len:
        raise ValueError(
            f"longest prompt + max_new_tokens = {longest} exceeds the model's max_seq_len "
            f"{cfg.max_seq_len}"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if mesh is not None:
        axes = _axes(data_axis)
        missing = [a for a in axes if a not in mesh.shape]
        if missing or not axes or len(set(axes)) != len(axes):
            raise ValueError(
                f"data_axis={data_axis!r} must name distinct axes of the mesh, which has axes "
                f"{tuple(mesh.shape)}; missing: {missing}"
            )


def _axes(data_axis: DataAxis) -> tuple[str, ...]:
    return (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)


def _left_pad(prompts, width: int, pad_id: int):
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, prompt in enumerate(prompts):
        tokens[i, width - len(prompt) :] = prompt
        mask[i, width - len(prompt) :] = True
    return tokens, mask


def prefill(
    cfg: decoder.ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    settings: Settings,
    *,
    max_new_tokens: int,
    seed: int = 0,
    num_samples: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: DataAxis = "data",
) -> SamplerState:
    """Left-pad the prompts to their bucket and run the jitted prefill (arguments as `generate`).

    `params` stacked or from `unstack_layers`; `decode` must get the same. With a mesh the
    batch is padded with idle rows to a multiple of the data axes' size.
    """
    _check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis)
    pad_id = settings.pad_id
    width = bucket(max(len(p) for p in prompts))
    tokens, mask = _left_pad(prompts, width, pad_id)
    tokens, mask = np.repeat(tokens, num_samples, 0), np.repeat(mask, num_samples, 0)
    rows = tokens.shape[0]
    shards = 1 if mesh is None else math.prod(mesh.shape[a] for a in _axes(data_axis))
    padded_rows = math.ceil(rows / shards) * shards
    extra = padded_rows - rows
    tokens = np.concatenate([tokens, np.full((extra, width), pad_id, np.int32)])
    mask = np.concatenate([mask, np.ones((extra, width), bool)])  # a finite dummy prompt
    active = np.arange(padded_rows) < rows
    if mesh is not None:
        batch_sharding = NamedSharding(mesh, Spec(_axes(data_axis)))
        tokens, mask, active = jax.device_put((tokens, mask, active), batch_sharding)
    state = _prefill_jit(
        params,
        tokens,
        mask,
        active,
        np.uint32(seed),
        max_new_tokens,
        pad_id,
        cfg=cfg,
        gen_bucket=bucket(max_new_tokens),
        mesh=mesh,
        data_axis=_axes(data_axis),  # hashable: a static argument
    )
    return state.replace(settings=settings)


def generate(
    cfg: decoder.ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_id: int | Sequence[int],
    pad_id: int,
    seed: int = 0,
    num_samples: int = 1,
    mesh: jax.sharding.Mesh | None = None,
    data_axis: DataAxis = "data",
    unstack: bool = True,
) -> Rollout:
    """Sample up to max_new_tokens tokens after each prompt (a list of token-id lists).

    Each prompt yields `num_samples` rows, prompt-major (the GRPO group layout). A row stops at
    its first token in `eos_id` (one id or several; an empty tuple never stops early): that EOS
    token is part of the completion (mask True, log-prob recorded), every later slot holds pad_id
    with mask False. Sampling is `sample_tokens` (temperature, then top-k, then top-p); the
    log-probs are of the untruncated tempered distribution (see there why). `params` may be
    sharded or replicated on `mesh`; the rows are then sharded over `data_axis` (one mesh axis
    or a tuple of them, e.g. ("data", "fsdp")), padded with idle rows to a multiple of the
    product of their sizes. `unstack` copies the layer weights into per-layer buffers for the call
    (`unstack_layers`, a few ms): XLA would otherwise copy slices of the stacked weights at every
    step (a one-off H100 A/B, script not kept: 7.2 ms a step stacked, 5.0 unstacked), at the
    cost of that memory; turn it off when it won't fit.
    """
    settings = make_settings(
        cfg, temperature=temperature, top_p=top_p, top_k=top_k, eos_id=eos_id, pad_id=pad_id
    )
    _check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis)  # before unstacking
    if unstack:
        params = _unstack_layers_jit(params, dtype=cfg.compute_dtype)
    state = prefill(
        cfg,
        params,
        prompts,
        settings,
        max_new_tokens=max_new_tokens,
        seed=seed,
        num_samples=num_samples,
        mesh=mesh,
        data_axis=data_axis,
    )
    state = decode(cfg, params, state)
    return _to_rollout_jit(state, len(prompts) * num_samples, max_new_tokens)


def decode(cfg: decoder.ModelConfig, params, state: SamplerState) -> SamplerState:
    """Run the jitted decode loop on a state from `prefill`; the state's buffers are donated.

    `params` as given to `prefill`.
    """
    return _decode_loop_jit(state, params, cfg=cfg)
