"""Rollouts with log-probs: `generate`, prompts in, sampled rows out, by one of two engines.

    out = generate(cfg, params, [[1, 5, 7], [1, 9]], max_new_tokens=64, temperature=1.0,
                   eos_id=(151645, 151643), pad_id=151643, num_samples=8)
    out.tokens [B, P+N], out.completion_mask [B, N], out.logprobs [B, N]  (B = prompts * samples)

engine="continuous" (the default, engine.py): a pool of decode slots sized by a KV memory
budget, fed by a queue of (prompt, sample) requests, decoding in fused windows that attend only
over the filled cache slots; each prompt is prefilled once and its samples fork from its KV.

engine="static" (this module, phases.py): all B rows as one batch. Prompts are left-padded to a
length `bucket` P (16, 24, 32, 48, 64, ...) and the cache holds P + N_bucket slots, so one stage
compiles the prefill and the decode loop once per bucket, not once per batch. The prefill runs
the first P - 1 prompt slots (its logits are never materialised); the decode loop then feeds one
token per step, starting with the last prompt token, so every sampled token comes out of the
same single-token step function. Every step attends over all P + N_bucket slots and the batch
runs until its longest row ends.

Both read the weights as `cached_forward.PerLayerParams`; `generate` also takes the stacked
training params and unstacks them itself (`sampling_weights`).

A row's randomness is `fold_in(fold_in(key(seed), row), step)` in both engines: it depends on
the seed, its row index and its own prompt only, never on the other rows, their lengths, or (in
the continuous engine) the pool size and the order slots are refilled in.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as Spec

from s2d_jax.model import decoder
from s2d_jax.model.cached_forward import PerLayerParams, unstack_layers
from s2d_jax.model.decode_kernels import DECODE_ATTENTION
from s2d_jax.rollout import engine as continuous
from s2d_jax.rollout.inputs import (  # noqa: F401  (bucket, cache_bytes, padded_rows: public here)
    MIN_BUCKET,
    axes,
    bucket,
    cache_bytes,
    check_batch,
    check_weights,
    left_pad,
    make_settings,
    padded_rows,
)
from s2d_jax.rollout.phases import (
    DataAxis,
    SamplerState,
    Settings,
    decode_loop_jit,
    prefill_jit,
)

ENGINES = ("continuous", "static")


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
    check_weights(params)
    check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis)
    pad_id = settings.pad_id
    width = bucket(max(len(p) for p in prompts))
    tokens, mask = left_pad(prompts, width, pad_id)
    tokens, mask = np.repeat(tokens, num_samples, 0), np.repeat(mask, num_samples, 0)
    rows = tokens.shape[0]
    batch = padded_rows(rows, mesh, data_axis)
    extra = batch - rows
    tokens = np.concatenate([tokens, np.full((extra, width), pad_id, np.int32)])
    mask = np.concatenate([mask, np.ones((extra, width), bool)])  # a finite dummy prompt
    active = np.arange(batch) < rows
    if mesh is not None:
        batch_sharding = NamedSharding(mesh, Spec(axes(data_axis)))
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
        data_axis=axes(data_axis),  # hashable: a static argument
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
    engine: str = "continuous",
    kv_budget_bytes: int | None = None,
    window_steps: int = continuous.WINDOW_STEPS,
    decode_attention: str = "reference",
) -> Rollout:
    """Sample up to max_new_tokens tokens after each prompt (a list of token-id lists).

    Each prompt yields `num_samples` rows, prompt-major (the GRPO group layout). A row stops at
    its first token in `eos_id` (one id or several; an empty tuple never stops early): that EOS
    token is part of the completion (mask True, log-prob recorded), every later slot holds pad_id
    with mask False. Sampling is `token_selection.sample_tokens` (temperature, then top-k, then
    top-p); the log-probs are of the untruncated tempered distribution (see there why). `params`
    may be sharded or replicated on `mesh`; the rows (the continuous engine's slot pool, the
    static engine's batch padded with idle rows) are then split over `data_axis` (one mesh axis
    or a tuple of them, e.g. ("data", "fsdp")), a multiple of the product of their sizes.

    engine: "continuous" (engine.py) or "static" (one batch): the same rows, up to rounding.
    kv_budget_bytes (continuous): KV cache bytes per data shard; the pool holds the largest
      power of two of rows that fits, at most the call's rows. None: the device kind's default
      (`engine.default_kv_budget_bytes`). window_steps: decode steps per fused window.
    decode_attention (continuous): "reference" (pure JAX) or a kernel of model/decode_kernels.py
      reading each row's own length ("pallas_gpu", "pallas_tpu"; their "_interpret" forms on any
      device, slowly).
    `params`: the stacked training params (copied for the call into per-layer buffers in the
    compute dtype, `sampling_weights`) or `PerLayerParams` (`placement.sampling_params`).
    """
    settings = make_settings(
        cfg, temperature=temperature, top_p=top_p, top_k=top_k, eos_id=eos_id, pad_id=pad_id
    )
    check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis)
    kv_budget_bytes = _checked_budget(cfg, prompts, max_new_tokens, num_samples, mesh, engine,
                                      kv_budget_bytes, window_steps, decode_attention)  # fmt: skip
    params = sampling_weights(cfg, params)
    kw = dict(
        max_new_tokens=max_new_tokens, seed=seed, num_samples=num_samples, mesh=mesh,
        data_axis=data_axis,
    )  # fmt: skip
    if engine == "static":
        state = decode(cfg, params, prefill(cfg, params, prompts, settings, **kw))
        return _to_rollout_jit(state, len(prompts) * num_samples, max_new_tokens)
    fields = continuous.run(
        cfg, params, prompts, settings, kv_budget_bytes=kv_budget_bytes,
        window_steps=window_steps, decode_attention=decode_attention, **kw,
    )  # fmt: skip
    return _on_device(Rollout(**fields), mesh)


def _checked_budget(
    cfg, prompts, max_new_tokens, num_samples, mesh, engine, kv_budget_bytes, window_steps,
    decode_attention,
) -> int:  # fmt: skip
    """The continuous engine's KV budget (the default when None), the engine's arguments
    checked: a budget holding no row fails here."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if decode_attention not in DECODE_ATTENTION:
        raise ValueError(
            f"decode_attention must be one of {DECODE_ATTENTION}, got {decode_attention!r}"
        )
    if engine == "static" and decode_attention != "reference":
        raise ValueError("decode_attention kernels run in the continuous engine only")
    if window_steps < 1:
        raise ValueError(f"window_steps must be >= 1, got {window_steps}")
    if kv_budget_bytes is None:
        kv_budget_bytes = continuous.default_kv_budget_bytes(mesh)
    if engine == "continuous":
        length = continuous.cache_length(prompts, max_new_tokens, decode_attention)
        continuous.pool_slots(cfg, len(prompts) * num_samples, length, kv_budget_bytes)
    return kv_budget_bytes


def _on_device(rollout: Rollout, mesh: jax.sharding.Mesh | None) -> Rollout:
    """Host arrays onto the device, or replicated over the mesh (the same on every process,
    each putting only its own devices' copies)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, rollout)
    replicated = NamedSharding(mesh, Spec())
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index]),
        rollout,
    )


def decode(cfg: decoder.ModelConfig, params: PerLayerParams, state: SamplerState) -> SamplerState:
    """Run the jitted decode loop on a state from `prefill`; the state's buffers are donated.

    `params` as given to `prefill`.
    """
    check_weights(params)
    return decode_loop_jit(state, params, cfg=cfg)
