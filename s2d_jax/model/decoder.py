"""The decoder: one pure-functional transformer for the Qwen3 and Llama 3 families.

Parameters are a plain nested dict; layers are stacked on a leading `layers` axis and run with
`lax.scan`, so compile time does not grow with the number of layers. Family differences (Qwen3
q/k RMSNorm, Llama 3 rope scaling, tied embeddings, attention biases) are `ModelConfig` fields.
`param_axes(cfg)` gives every parameter's logical axis names (see distributed/sharding.py); the
sampler reads the same weights one tree per layer (`cached_forward.PerLayerParams`).

    cfg = ModelConfig.preset("qwen3_1.7b")
    params = init_params(cfg, jax.random.key(0))
    logits_BTV = forward(cfg, params, tokens_BT, mask_BT)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp

from s2d_jax.model import attention as blocked
from s2d_jax.model.presets import PRESETS

Params = dict[str, Any]
ROW_MESH_AXES = ("data", "fsdp")  # split a batch's rows (sharding.BATCH_AXES reads it)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder. Hashable, so it can be a static jit argument."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    # Llama 3 frequency scaling: (factor, low_freq_factor, high_freq_factor, original_max_len).
    rope_scaling: tuple[float, float, float, int] | None = None
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qk_norm: bool = False
    attention_bias: bool = False
    max_seq_len: int = 4096
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    family: str = "qwen3"  # "qwen3" | "llama": which HF architecture `hf_io.save_hf` writes.
    # Training / scoring forward: 0 materialises [B, H, T, T] scores (`attention`); > 0 runs
    # `attention.blocked_attention` over blocks of this many tokens. Not the sampler's.
    attention_block: int = 0

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.family not in ("qwen3", "llama"):
            raise ValueError(f"family must be 'qwen3' or 'llama', got {self.family!r}")
        if self.attention_block < 0:
            raise ValueError(f"attention_block must be >= 0, got {self.attention_block}")
        for field in ("param_dtype", "compute_dtype"):
            if getattr(self, field) not in ("float32", "bfloat16"):
                raise ValueError(
                    f"{field} must be 'float32' or 'bfloat16', got {getattr(self, field)!r}"
                )

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named configuration (published dimensions for real models); `overrides` replace fields."""
        if name not in PRESETS:
            raise KeyError(
                f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
            )
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_hf_config(cls, hf: dict, **overrides) -> ModelConfig:
        """From a Hugging Face `config.json` dict (transformers v4 or v5 layout)."""
        arch = (hf.get("architectures") or [None])[0]
        model_type = hf.get("model_type")
        if model_type == "qwen3" or arch == "Qwen3ForCausalLM":
            family = "qwen3"
        elif model_type == "llama" or arch == "LlamaForCausalLM":
            family = "llama"
        else:
            raise ValueError(
                f"unsupported architecture {arch!r} (model_type {model_type!r}); "
                "supported: Qwen3ForCausalLM, LlamaForCausalLM"
            )
        if hf.get("mlp_bias"):
            raise ValueError(
                "mlp_bias=true is not supported (no Qwen3 or Llama 3 checkpoint uses it)"
            )
        # v5 keeps rope settings in `rope_parameters`; v4 in `rope_theta` + `rope_scaling`.
        rope = dict(hf.get("rope_scaling") or {})
        rope.update(hf.get("rope_parameters") or {})
        theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "llama3":
            scaling = (
                float(rope["factor"]),
                float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]),
                int(rope["original_max_position_embeddings"]),
            )
        elif rope_type == "default":
            scaling = None
        else:
            raise ValueError(f"unsupported rope_type {rope_type!r}; supported: default, llama3")
        n_heads = hf["num_attention_heads"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            mlp_dim=hf["intermediate_size"],
            rope_theta=float(theta),
            rope_scaling=scaling,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qk_norm=family == "qwen3",
            attention_bias=bool(hf.get("attention_bias", False)),
            max_seq_len=int(hf.get("max_position_embeddings", 4096)),
            family=family,
        )
        return cls(**{**fields, **overrides})


def _dtype(name: str):
    return jnp.dtype(name)


# ----------------------------------------------------------------------------- parameters


def param_shapes(cfg: ModelConfig) -> dict[str, Any]:
    """{name: (shape, logical axes)} for every parameter; the one place the layout is declared."""
    L, D, H, K, Dh, F, V = (
        cfg.n_layers,
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.mlp_dim,
        cfg.vocab_size,
    )
    layer = {
        "attn_norm": ((L, D), ("layers", "norm")),
        "wq": ((L, D, H, Dh), ("layers", "embed", "heads", "head_dim")),
        "wk": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wv": ((L, D, K, Dh), ("layers", "embed", "kv_heads", "head_dim")),
        "wo": ((L, H, Dh, D), ("layers", "heads", "head_dim", "embed")),
        "mlp_norm": ((L, D), ("layers", "norm")),
        "w_gate": ((L, D, F), ("layers", "embed", "mlp")),
        "w_up": ((L, D, F), ("layers", "embed", "mlp")),
        "w_down": ((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.qk_norm:
        layer["q_norm"] = ((L, Dh), ("layers", "norm"))
        layer["k_norm"] = ((L, Dh), ("layers", "norm"))
    if cfg.attention_bias:
        layer["bq"] = ((L, H, Dh), ("layers", "heads", "head_dim"))
        layer["bk"] = ((L, K, Dh), ("layers", "kv_heads", "head_dim"))
        layer["bv"] = ((L, K, Dh), ("layers", "kv_heads", "head_dim"))
        layer["bo"] = ((L, D), ("layers", "embed"))
    tree = {
        "embed": ((V, D), ("vocab", "embed")),
        "layers": layer,
        "final_norm": ((D,), ("norm",)),
    }
    if not cfg.tie_embeddings:
        tree["lm_head"] = ((D, V), ("embed", "vocab"))
    return tree


def _is_leaf(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)


def param_axes(cfg: ModelConfig) -> Params:
    """Same tree as the params; each leaf is the tuple of logical axis names of that parameter."""
    return jax.tree.map(lambda leaf: leaf[1], param_shapes(cfg), is_leaf=_is_leaf)


def abstract_params(cfg: ModelConfig) -> Params:
    """Params as `jax.ShapeDtypeStruct`s: shapes without memory (for checkpoints and compilation)."""
    dtype = _dtype(cfg.param_dtype)
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf[0], dtype), param_shapes(cfg), is_leaf=_is_leaf
    )


def init_params(cfg: ModelConfig, rng: jax.Array, std: float = 0.02) -> Params:
    """Random init: normal(std) matrices (output projections scaled by 1/sqrt(2L)), unit norms, zero biases."""
    shapes = param_shapes(cfg)
    dtype = _dtype(cfg.param_dtype)
    out_proj_std = std / math.sqrt(
        2 * cfg.n_layers
    )  # keeps the residual stream's scale depth-independent

    def init_one(path, leaf):
        (shape, axes), name = leaf, path[-1].key
        if axes[-1] == "norm":
            return jnp.ones(shape, dtype)
        if name in ("bq", "bk", "bv", "bo"):
            return jnp.zeros(shape, dtype)
        key = jax.random.fold_in(rng, zlib.crc32(jax.tree_util.keystr(path).encode()))
        scale = out_proj_std if name in ("wo", "w_down") else std
        return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return jax.tree_util.tree_map_with_path(init_one, shapes, is_leaf=_is_leaf)


def count_params(params: Params) -> int:
    """Total number of parameters in a params (or abstract params) tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """[..., D] -> [..., D]; statistics in float32 (as transformers), result in x.dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies [Dh/2] float32, with Llama 3 scaling when configured."""
    inv_freq = 1.0 / (
        cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim)
    )
    if cfg.rope_scaling is None:
        return inv_freq
    factor, low, high, old_len = cfg.rope_scaling
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_len / low, old_len / high
    # Long wavelengths are slowed by `factor`, short ones kept; the band between is interpolated.
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    interpolated = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, interpolated, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate [B, T, H, Dh] by positions [B, T] (rotate-half convention of transformers)."""
    angles_BTF = positions[..., None].astype(jnp.float32) * inv_freq  # F = Dh / 2 frequencies
    angles_BTD = jnp.concatenate([angles_BTF, angles_BTF], -1)
    cos_BT1D = jnp.cos(angles_BTD)[:, :, None, :]
    sin_BT1D = jnp.sin(angles_BTD)[:, :, None, :]
    x32_BTHD = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated_BTHD = jnp.concatenate([-x32_BTHD[..., half:], x32_BTHD[..., :half]], -1)
    return (x32_BTHD * cos_BT1D + rotated_BTHD * sin_BT1D).astype(x.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions [B, T] that count only real tokens, so left and right padding give equal logits."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def attention(q_BTHD, k, v, visible_BTS, kv_axes: str = "bskd") -> jax.Array:
    """Grouped-query softmax attention; scores in float32. Returns [B, T, H, Dh].

    k and v are [B, S, K, Dh] (kv_axes "bskd", as projected) or [B, K, S, Dh] ("bksd", the KV
    cache's layout); visible_BTS [B, T, S] says which key each query sees.
    """
    B, T, H, Dh = q_BTHD.shape
    K = k.shape[kv_axes.index("k")]
    q_BTKGD = q_BTHD.reshape(B, T, K, H // K, Dh)  # G = H / K query heads share a kv head
    scores_BKGTS = jnp.einsum(
        f"btkgd,{kv_axes}->bkgts", q_BTKGD, k, preferred_element_type=jnp.float32
    )
    scores_BKGTS = scores_BKGTS / math.sqrt(Dh)
    # A finite fill keeps fully-masked rows (padding queries) free of NaN.
    visible_B11TS = visible_BTS[:, None, None]
    scores_BKGTS = jnp.where(visible_B11TS, scores_BKGTS, jnp.finfo(jnp.float32).min)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v.dtype)
    out_BTKGD = jnp.einsum(f"bkgts,{kv_axes}->btkgd", probs_BKGTS, v)
    return out_BTKGD.reshape(B, T, H, Dh)


def attention_inputs(cfg: ModelConfig, x_BTD, p, positions_BT, inv_freq):
    """A block's first half: norm, q/k/v projections, q/k norms, rope -> q [B, T, H, Dh] and
    k, v [B, T, K, Dh] in x's dtype. `p` is one layer's params."""
    dt = x_BTD.dtype
    h_BTD = rms_norm(x_BTD, p["attn_norm"], cfg.norm_eps)
    q_BTHD = jnp.einsum("btd,dhk->bthk", h_BTD, p["wq"].astype(dt))
    k_BTKD = jnp.einsum("btd,dhk->bthk", h_BTD, p["wk"].astype(dt))
    v_BTKD = jnp.einsum("btd,dhk->bthk", h_BTD, p["wv"].astype(dt))
    if cfg.attention_bias:
        q_BTHD = q_BTHD + p["bq"].astype(dt)
        k_BTKD = k_BTKD + p["bk"].astype(dt)
        v_BTKD = v_BTKD + p["bv"].astype(dt)
    if cfg.qk_norm:
        q_BTHD = rms_norm(q_BTHD, p["q_norm"], cfg.norm_eps)
        k_BTKD = rms_norm(k_BTKD, p["k_norm"], cfg.norm_eps)
    q_BTHD = apply_rope(q_BTHD, positions_BT, inv_freq)
    return q_BTHD, apply_rope(k_BTKD, positions_BT, inv_freq), v_BTKD


def attention_output_and_mlp(cfg: ModelConfig, x_BTD, attn_BTHD, p):
    """A block's second half: output projection and residual, then the gated MLP -> [B, T, D]."""
    dt = x_BTD.dtype
    out_BTD = jnp.einsum("bthk,hkd->btd", attn_BTHD, p["wo"].astype(dt))
    if cfg.attention_bias:
        out_BTD = out_BTD + p["bo"].astype(dt)
    x_BTD = x_BTD + out_BTD
    h_BTD = rms_norm(x_BTD, p["mlp_norm"], cfg.norm_eps)
    gate_BTF = jnp.einsum("btd,df->btf", h_BTD, p["w_gate"].astype(dt))
    up_BTF = jnp.einsum("btd,df->btf", h_BTD, p["w_up"].astype(dt))
    mlp_BTF = jax.nn.silu(gate_BTF) * up_BTF
    return x_BTD + jnp.einsum("btf,fd->btd", mlp_BTF, p["w_down"].astype(dt))


def row_axes(mesh, rows: int) -> tuple[str, ...]:
    """The leading ROW_MESH_AXES of `mesh` that split `rows` rows evenly; () if none does."""
    axes, size = [], 1
    for axis in ROW_MESH_AXES:
        if axis not in mesh.axis_names or rows % (size * mesh.shape[axis]):
            break
        axes, size = axes + [axis], size * mesh.shape[axis]
    return tuple(axes) if size > 1 else ()


def constrain_rows(x_B):
    """`x_B` with its rows split over the row axes of the mesh traced under (the jitted steps set
    it), else unchanged: else the partitioner may gather a micro-batch's rows onto each device."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else row_axes(mesh, x_B.shape[0])
    return jax.lax.with_sharding_constraint(x_B, jax.sharding.PartitionSpec(axes)) if axes else x_B


def _run_layers(cfg, params, tokens_BT, positions_BT, attention_mask_BT):
    """Embedding, the scanned decoder blocks (rematerialised) and the final norm -> [B, T, D]."""
    dt = _dtype(cfg.compute_dtype)
    visible_BTS = None if cfg.attention_block else _causal_visible(attention_mask_BT)

    def attend(q_BTHD, k_BTKD, v_BTKD):
        if cfg.attention_block:
            return blocked.blocked_attention(
                q_BTHD, k_BTKD, v_BTKD, attention_mask_BT, block=cfg.attention_block
            )
        return attention(q_BTHD, k_BTKD, v_BTKD, visible_BTS)

    x_BTD = constrain_rows(params["embed"].astype(dt)[tokens_BT])
    inv_freq = rope_frequencies(cfg)

    # Recompute each layer in the backward pass instead of keeping its attention activations
    # (the [B, H, T, T] float32 scores among them) for all L layers at once.
    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable)
    def body(x_BTD, p):
        q_BTHD, k_BTKD, v_BTKD = attention_inputs(cfg, x_BTD, p, positions_BT, inv_freq)
        attn_BTHD = attend(q_BTHD, k_BTKD, v_BTKD)
        return constrain_rows(attention_output_and_mlp(cfg, x_BTD, attn_BTHD, p)), None

    x_BTD, _ = jax.lax.scan(body, x_BTD, params["layers"])
    return rms_norm(x_BTD, params["final_norm"], cfg.norm_eps)


def unembedding(cfg: ModelConfig, params: Params) -> jax.Array:
    """The output projection [D, V] (the transposed embedding when tied)."""
    return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def logits_from_hidden(cfg: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """[..., D] -> [..., V] float32 logits."""
    w_DV = unembedding(cfg, params).astype(hidden.dtype)
    return jnp.einsum("...d,dv->...v", hidden, w_DV, preferred_element_type=jnp.float32)


def _causal_visible(attention_mask_BT: jax.Array) -> jax.Array:
    T = attention_mask_BT.shape[1]
    causal_TT = jnp.tril(jnp.ones((T, T), bool))
    return causal_TT[None] & attention_mask_BT[:, None, :].astype(bool)


def forward_hidden(cfg: ModelConfig, params: Params, tokens: jax.Array, attention_mask: jax.Array):
    """Final-normed hidden states [B, T, D] (compute dtype) for tokens [B, T] and mask [B, T]."""
    positions_BT = positions_from_mask(attention_mask)
    return _run_layers(cfg, params, tokens, positions_BT, attention_mask)


def forward(cfg: ModelConfig, params: Params, tokens: jax.Array, attention_mask: jax.Array):
    """Logits [B, T, V] float32 for tokens [B, T] int32 with attention_mask [B, T] bool.

    Positions follow the mask (left or right padding give the same logits on real tokens); rows
    at padding positions are finite but meaningless.
    """
    return logits_from_hidden(cfg, params, forward_hidden(cfg, params, tokens, attention_mask))
