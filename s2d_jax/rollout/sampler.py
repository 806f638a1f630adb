"""Batched KV-cache sampler for rollouts: one jitted prefill, one jitted decode loop, log-probs.

    out = generate(cfg, params, [[1, 5, 7], [1, 9]], max_new_tokens=64, temperature=1.0,
                   eos_id=(151645, 151643), pad_id=151643, num_samples=8)
    out.tokens [B, P+N], out.completion_mask [B, N], out.logprobs [B, N]  (B = prompts * samples)

Prompts are left-padded to a length `bucket` P (16, 24, 32, 48, 64, ...) and the cache holds
P + N_bucket slots, so one stage compiles the prefill and the decode loop once per bucket, not
once per batch. The prefill runs the first P - 1 prompt slots (its logits are never materialised);
the decode loop then feeds one token per step, starting with the last prompt token, so every
sampled token comes out of the same single-token step function. Those two jitted phases and the
state they pass on are in phases.py; this module pads and checks the inputs and calls them.

The decode reads the weights as `cached_forward.PerLayerParams`; `generate` also takes the
stacked training params and unstacks them itself (`sampling_weights`).

A row's randomness is `fold_in(fold_in(key(seed), row), step)`: it depends on the seed, its row
index and its own prompt only, never on the other rows of the batch or on their lengths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from s2d_jax.model import decoder
from s2d_jax.model.cached_forward import PerLayerParams, unstack_layers
from s2d_jax.rollout.phases import (
    DataAxis,
    SamplerState,
    Settings,
    decode_loop_jit,
    prefill_jit,
)

MIN_BUCKET = 16


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
    """Bytes of the K and V caches (`cached_forward.init_cache`) for `batch` rows of `length`
    slots."""
    itemsize = jnp.dtype(cfg.compute_dtype).itemsize
    return 2 * cfg.n_layers * batch * length * cfg.n_kv_heads * cfg.head_dim * itemsize


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


_to_rollout_jit = jax.jit(to_rollout, static_argnames=("rows", "max_new_tokens"))
_unstack_layers_jit = jax.jit(unstack_layers, static_argnames=("dtype",))


# ----------------------------------------------------------------------------- entry point


def sampling_weights(
    cfg: decoder.ModelConfig, params: decoder.Params | PerLayerParams
) -> PerLayerParams:
    """The weights as the decode reads them: `PerLayerParams` as they are; stacked params
    (`decoder.init_params`' layout) copied into per-layer buffers in the compute dtype, by one
    jitted `cached_forward.unstack_layers`.

    Decoding off stacked weights would slice each layer out of them inside the decode loop, and
    XLA copies those slices at every step; the per-layer copy is made once a call instead, at the
    cost of the weights' memory once more while it lives.
    """
    if isinstance(params, PerLayerParams):
        return params
    return _unstack_layers_jit(params, dtype=cfg.compute_dtype)


def _check_weights(params) -> None:
    if not isinstance(params, PerLayerParams):
        raise TypeError(
            "prefill and decode take cached_forward.PerLayerParams (sampling_weights(cfg, params) "
            f"of stacked params); got {type(params).__name__}"
        )


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


def padded_rows(rows: int, mesh: jax.sharding.Mesh | None, data_axis: DataAxis) -> int:
    """`rows` rounded up to a multiple of the data axes' total size: the batch the jitted phases
    run, idle rows included (`rows` itself without a mesh)."""
    shards = 1 if mesh is None else math.prod(mesh.shape[a] for a in _axes(data_axis))
    return math.ceil(rows / shards) * shards


def _left_pad(prompts, width: int, pad_id: int):
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, prompt in enumerate(prompts):
        tokens[i, width - len(prompt) :] = prompt
        mask[i, width - len(prompt) :] = True
    return tokens, mask


def prefill(
    cfg: decoder.ModelConfig,
    params: PerLayerParams,
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

    `params` per layer (`sampling_weights`); `decode` must get the same. With a mesh the batch
    is padded with idle rows to a multiple of the data axes' size.
    """
    _check_weights(params)
    _check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis)
    pad_id = settings.pad_id
    width = bucket(max(len(p) for p in prompts))
    tokens, mask = _left_pad(prompts, width, pad_id)
    tokens, mask = np.repeat(tokens, num_samples, 0), np.repeat(mask, num_samples, 0)
    rows = tokens.shape[0]
    batch = padded_rows(rows, mesh, data_axis)
    extra = batch - rows
    tokens = np.concatenate([tokens, np.full((extra, width), pad_id, np.int32)])
    mask = np.concatenate([mask, np.ones((extra, width), bool)])  # a finite dummy prompt
    active = np.arange(batch) < rows
    if mesh is not None:
        batch_sharding = NamedSharding(mesh, Spec(_axes(data_axis)))
        tokens, mask, active = jax.device_put((tokens, mask, active), batch_sharding)
    state = prefill_jit(
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
    params: decoder.Params | PerLayerParams,
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
) -> Rollout:
    """Sample up to max_new_tokens tokens after each prompt (a list of token-id lists).

    Each prompt yields `num_samples` rows, prompt-major (the GRPO group layout). A row stops at
    its first token in `eos_id` (one id or several; an empty tuple never stops early): that EOS
    token is part of the completion (mask True, log-prob recorded), every later slot holds pad_id
    with mask False. Sampling is `token_selection.sample_tokens` (temperature, then top-k, then top-p); the
    log-probs are of the untruncated tempered distribution (see there why). `params` may be
    sharded or replicated on `mesh`; the rows are then sharded over `data_axis` (one mesh axis
    or a tuple of them, e.g. ("data", "fsdp")), padded with idle rows to a multiple of the
    product of their sizes.

    `params` are the stacked training params, copied for the call into per-layer buffers in the
    compute dtype (`sampling_weights` says why), or `PerLayerParams` made beforehand
    (`cached_forward.unstack_layers`, `placement.sampling_params`), used as they are (the call
    copies nothing).
    """
    settings = make_settings(
        cfg, temperature=temperature, top_p=top_p, top_k=top_k, eos_id=eos_id, pad_id=pad_id
    )
    _check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis)  # before unstacking
    params = sampling_weights(cfg, params)
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


def decode(cfg: decoder.ModelConfig, params: PerLayerParams, state: SamplerState) -> SamplerState:
    """Run the jitted decode loop on a state from `prefill`; the state's buffers are donated.

    `params` as given to `prefill`.
    """
    _check_weights(params)
    return decode_loop_jit(state, params, cfg=cfg)
