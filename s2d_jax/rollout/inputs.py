"""The sampler's inputs: checked arguments (errors name the argument), shape buckets, padding.

Both engines (sampler.py's static one, engine.py's continuous one) take their arguments through
here, so a bad argument fails the same way whichever runs, and both round shapes with `bucket`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from s2d_jax.model import decoder
from s2d_jax.model.cached_forward import PerLayerParams
from s2d_jax.rollout.phases import DataAxis, Settings

MIN_BUCKET = 16


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


def check_weights(params) -> None:
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


def check_batch(cfg, prompts, max_new_tokens, num_samples, mesh, data_axis):
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
        names = axes(data_axis)
        missing = [a for a in names if a not in mesh.shape]
        if missing or not names or len(set(names)) != len(names):
            raise ValueError(
                f"data_axis={data_axis!r} must name distinct axes of the mesh, which has axes "
                f"{tuple(mesh.shape)}; missing: {missing}"
            )


def axes(data_axis: DataAxis) -> tuple[str, ...]:
    return (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)


def padded_rows(rows: int, mesh: jax.sharding.Mesh | None, data_axis: DataAxis) -> int:
    """`rows` rounded up to a multiple of the data axes' total size: the batch the jitted phases
    run, idle rows included (`rows` itself without a mesh)."""
    shards = data_shards(mesh, data_axis)
    return math.ceil(rows / shards) * shards


def data_shards(mesh: jax.sharding.Mesh | None, data_axis: DataAxis) -> int:
    """How many parts rows are split into: the product of the data axes' sizes (1 without a
    mesh)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in axes(data_axis))


def left_pad(prompts, width: int, pad_id: int):
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, prompt in enumerate(prompts):
        tokens[i, width - len(prompt) :] = prompt
        mask[i, width - len(prompt) :] = True
    return tokens, mask
