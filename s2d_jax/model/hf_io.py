"""Hugging Face checkpoints (config.json + safetensors) <-> (ModelConfig, params), both directions.

Loading reads tensor by tensor through memory-mapped safetensors (never pickle, never torch), so
host memory peaks near one stacked parameter, and each parameter can go straight onto a sharding.

    cfg, params = load_hf("/ckpt/Qwen3-1.7B", dtype=jnp.bfloat16, shardings=None)
    save_hf("/out/student", cfg, params)   # transformers.AutoModelForCausalLM loads it unchanged
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from s2d_jax.model import decoder

_LAYER_PREFIX = "model.layers.{}."
# ours -> (HF suffix within a layer, how the HF 2-D/1-D tensor maps to our layout)
_LAYER_TENSORS = {
    "attn_norm": ("input_layernorm.weight", "copy"),
    "wq": ("self_attn.q_proj.weight", "in_heads"),
    "wk": ("self_attn.k_proj.weight", "in_heads"),
    "wv": ("self_attn.v_proj.weight", "in_heads"),
    "wo": ("self_attn.o_proj.weight", "out_heads"),
    "bq": ("self_attn.q_proj.bias", "heads_bias"),
    "bk": ("self_attn.k_proj.bias", "heads_bias"),
    "bv": ("self_attn.v_proj.bias", "heads_bias"),
    "bo": ("self_attn.o_proj.bias", "copy"),
    "q_norm": ("self_attn.q_norm.weight", "copy"),
    "k_norm": ("self_attn.k_norm.weight", "copy"),
    "mlp_norm": ("post_attention_layernorm.weight", "copy"),
    "w_gate": ("mlp.gate_proj.weight", "transpose"),
    "w_up": ("mlp.up_proj.weight", "transpose"),
    "w_down": ("mlp.down_proj.weight", "transpose"),
}
_TOP_TENSORS = {
    "embed": ("model.embed_tokens.weight", "copy"),
    "final_norm": ("model.norm.weight", "copy"),
    "lm_head": ("lm_head.weight", "transpose"),
}
# Buffers some exporters write that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# config.json keys `ModelConfig.from_hf_config` cannot do without.
_REQUIRED_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


def _to_ours(hf_array: np.ndarray, how: str, shape: tuple[int, ...]) -> np.ndarray:
    """One HF tensor (torch Linear layout [out, in]) -> our layout of `shape` (layer axis removed)."""
    if how in ("copy", "heads_bias"):
        return hf_array.reshape(shape)
    # [H*Dh, D] -> [D, H, Dh]; [D, H*Dh] -> [H, Dh, D]; [F, D] -> [D, F]
    return hf_array.T.reshape(shape)


def _to_hf(ours: np.ndarray, how: str) -> np.ndarray:
    """Inverse of `_to_ours`: our layout -> HF layout."""
    if how == "copy":
        return ours
    if how == "heads_bias":
        return ours.reshape(-1)
    if how in ("in_heads", "transpose"):  # [D, H, Dh] -> [H*Dh, D]; [D, F] -> [F, D]
        return ours.reshape(ours.shape[0], -1).T
    if how == "out_heads":  # [H, Dh, D] -> [D, H*Dh]
        return ours.reshape(-1, ours.shape[-1]).T
    raise ValueError(how)


def _finite(array: np.ndarray, name: str, file: Path) -> np.ndarray:
    """`array`, checked: a NaN/Inf weight would train and evaluate to NaN without any error.
    Checked after the cast, so values the load dtype cannot hold are caught too."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"tensor {name!r} in {file} has {int(bad.sum())} non-finite values (first at index "
            f"{first} of our layout {array.shape}, dtype {array.dtype}); the checkpoint is damaged"
        )
    return array


def _hf_shape(shape: tuple[int, ...], how: str) -> tuple[int, ...]:
    return _to_hf(np.empty(shape, np.int8), how).shape


def _tensor_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = _load_json(index)["weight_map"]
        files = {name: path / fname for name, fname in weight_map.items()}
        for f in set(files.values()):
            if not f.exists():
                raise FileNotFoundError(f"{index} lists {f.name}, which does not exist in {path}")
        return files
    single = path / "model.safetensors"
    candidates = [single] if single.exists() else sorted(path.glob("*.safetensors"))
    if not candidates:
        found = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"no *.safetensors in {path} (found: {found}); expected model.safetensors or shards "
            "listed in model.safetensors.index.json (pickle formats such as .bin are never read)"
        )
    files = {}
    for f in candidates:
        with _open_safetensors(f) as handle:
            files.update({name: f for name in handle.keys()})
    return files


def _load_json(file: Path):
    """The parsed JSON of a checkpoint file, with an error naming the file and the place."""
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{file} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "a truncated download? Fetch it again"
        ) from None


def _open_safetensors(file: Path):
    """`safe_open`, with an error that names a truncated or damaged file."""
    try:
        return safe_open(file, "np")
    except Exception as err:  # SafetensorError and OSError: the header does not fit the file
        raise ValueError(
            f"{file} is not a readable safetensors file ({err}); a truncated download? "
            "Fetch it again"
        ) from None


def read_hf_config(path: str | Path) -> dict:
    """The parsed config.json of a checkpoint directory, with errors that name the path."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{config_file} is missing: a Hugging Face checkpoint needs config.json"
        )
    config = _load_json(config_file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} holds a {type(config).__name__}, expected a JSON object")
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in config]
    if "architectures" not in config and "model_type" not in config:
        missing.append("architectures or model_type")
    if missing:
        raise ValueError(f"{config_file} lacks {missing}: is it a causal LM's config.json?")
    return config


def load_hf(path: str | Path, dtype=jnp.float32, shardings=None, **config_overrides):
    """Load (ModelConfig, params) from a local HF directory (config.json + *.safetensors).

    `shardings`, if given, is a tree like the params of `jax.sharding.Sharding`s: each parameter
    is placed there as soon as it is read. `config_overrides` replace ModelConfig fields.
    """
    path = Path(path)
    dtype_name = jnp.dtype(dtype).name
    cfg = decoder.ModelConfig.from_hf_config(
        read_hf_config(path), param_dtype=dtype_name, compute_dtype=dtype_name, **config_overrides
    )
    files = _tensor_files(path)
    handles = {f: _open_safetensors(f) for f in set(files.values())}
    used: set[str] = set()

    def read(name: str, how: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in files:
            raise KeyError(
                f"tensor {name!r} is missing from {path} (expected HF shape {_hf_shape(shape, how)})"
            )
        array = handles[files[name]].get_tensor(name)
        expected = _hf_shape(shape, how)
        if tuple(array.shape) != expected:
            raise ValueError(
                f"tensor {name!r} in {files[name]} has shape {tuple(array.shape)}, expected {expected}"
            )
        used.add(name)
        return _finite(_to_ours(array, how, shape).astype(dtype), name, files[name])

    def place(array: np.ndarray, sharding):
        return jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)

    shapes = decoder.param_shapes(cfg)
    params: dict = {"layers": {}}
    for ours, (shape, _) in shapes["layers"].items():
        hf_suffix, how = _LAYER_TENSORS[ours]
        stacked = np.empty(shape, dtype)
        for i in range(cfg.n_layers):
            stacked[i] = read(_LAYER_PREFIX.format(i) + hf_suffix, how, shape[1:])
        params["layers"][ours] = place(stacked, shardings and shardings["layers"][ours])
        del stacked
    for ours, (hf_name, how) in _TOP_TENSORS.items():
        if ours in shapes:
            array = read(hf_name, how, shapes[ours][0])
            params[ours] = place(array, shardings and shardings[ours])
    extra = set(files) - used - {n for n in files if n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        extra.discard("lm_head.weight")  # some tied exports store the copy; the embedding wins
    if extra:
        raise ValueError(
            f"{path} holds tensors this {cfg.family} config does not use: {sorted(extra)[:10]}"
            + (" ..." if len(extra) > 10 else "")
        )
    return cfg, params


def hf_config_dict(cfg: decoder.ModelConfig, **extra) -> dict:
    """A config.json dict in the layout of the published checkpoints (rope_theta at top level)."""
    config = {
        "architectures": ["Qwen3ForCausalLM" if cfg.family == "qwen3" else "LlamaForCausalLM"],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.attention_bias,
        "max_position_embeddings": cfg.max_seq_len,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.rope_scaling is not None:
        factor, low, high, old_len = cfg.rope_scaling
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": old_len,
        }
    if cfg.family == "qwen3" and not cfg.qk_norm:
        raise ValueError("a Qwen3 checkpoint always has q/k norms; this config has qk_norm=False")
    if cfg.family == "llama" and cfg.qk_norm:
        raise ValueError("a Llama checkpoint has no q/k norms; this config has qk_norm=True")
    config.update(extra)
    return config


def save_hf(
    path: str | Path,
    cfg: decoder.ModelConfig,
    params,
    max_shard_bytes: int = 4 << 30,
    **config_extra,
):
    """Write config.json and safetensors (sharded above `max_shard_bytes`) loadable by transformers.

    `config_extra` adds config.json keys (e.g. bos_token_id, eos_token_id). Only process 0 should
    call this in a multi-host run; arrays are gathered to host one at a time.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    shapes = decoder.param_shapes(cfg)
    for ours in shapes["layers"]:
        hf_suffix, how = _LAYER_TENSORS[ours]
        stacked = np.asarray(jax.device_get(params["layers"][ours]))
        for i in range(cfg.n_layers):
            tensors[_LAYER_PREFIX.format(i) + hf_suffix] = np.ascontiguousarray(
                _to_hf(stacked[i], how)
            )
    for ours, (hf_name, how) in _TOP_TENSORS.items():
        if ours in shapes:
            tensors[hf_name] = np.ascontiguousarray(_to_hf(np.asarray(params[ours]), how))

    shards, current, size = [], {}, 0
    for name, array in tensors.items():
        if current and size + array.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = array
        size += array.nbytes
    shards.append(current)
    for stale in path.glob("model*.safetensors*"):
        stale.unlink()  # a previous export with another shard count must not be mixed in
    metadata = {"format": "pt"}  # transformers refuses safetensors without this marker
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata=metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / fname, metadata=metadata)
            weight_map.update({name: fname for name in shard})
        total = sum(a.nbytes for a in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(hf_config_dict(cfg, **config_extra), indent=2))
    return path
