"""The decoder on its own: presets, causality, padding invariance, KV-cache decoding, errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2d_jax.model import cached_forward, decoder

# Published config.json values, copied by hand from each Hugging Face release (the source is the key).
PUBLISHED = {
    "Qwen/Qwen3-0.6B": (
        "qwen3_0.6b",
        dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=1024,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=3072,
            rope_theta=1000000,
            rms_norm_eps=1e-06,
            tie_word_embeddings=True,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
    ),
    "Qwen/Qwen3-1.7B": (
        "qwen3_1.7b",
        dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=2048,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=6144,
            rope_theta=1000000,
            rms_norm_eps=1e-06,
            tie_word_embeddings=True,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
    ),
    "Qwen/Qwen3-4B": (
        "qwen3_4b",
        dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=2560,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=9728,
            rope_theta=1000000,
            rms_norm_eps=1e-06,
            tie_word_embeddings=True,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
    ),
    "Qwen/Qwen3-8B": (
        "qwen3_8b",
        dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=4096,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=12288,
            rope_theta=1000000,
            rms_norm_eps=1e-06,
            tie_word_embeddings=False,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
    ),
    "Qwen/Qwen3-14B": (
        "qwen3_14b",
        dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=5120,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=17408,
            rope_theta=1000000,
            rms_norm_eps=1e-06,
            tie_word_embeddings=False,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
    ),
    "Qwen/Qwen3-32B": (
        "qwen3_32b",
        dict(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=5120,
            num_hidden_layers=64,
            num_attention_heads=64,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=25600,
            rope_theta=1000000,
            rms_norm_eps=1e-06,
            tie_word_embeddings=False,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
    ),
    "meta-llama/Llama-3.1-8B-Instruct": (
        "llama3_8b",
        dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=128256,
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            rope_theta=500000.0,
            rope_scaling=dict(
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
                rope_type="llama3",
            ),
            rms_norm_eps=1e-05,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            max_position_embeddings=131072,
        ),
    ),
    "meta-llama/Llama-3.3-70B-Instruct": (
        "llama3_70b",
        dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=128256,
            hidden_size=8192,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            intermediate_size=28672,
            rope_theta=500000.0,
            rope_scaling=dict(
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
                rope_type="llama3",
            ),
            rms_norm_eps=1e-05,
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            max_position_embeddings=131072,
        ),
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": (
        "smollm2_135m",
        dict(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=49152,
            hidden_size=576,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            intermediate_size=1536,
            rope_theta=100000,
            rms_norm_eps=1e-05,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            max_position_embeddings=8192,
        ),
    ),
}


@pytest.mark.parametrize("source", sorted(PUBLISHED))
def test_preset_matches_published_config(source):
    preset_name, hf_config = PUBLISHED[source]
    assert decoder.ModelConfig.preset(preset_name) == decoder.ModelConfig.from_hf_config(hf_config)


def test_published_parameter_counts():
    # Headline sizes of the releases (tied embeddings counted once).
    expected_billions = {
        "qwen3_0.6b": 0.596,
        "qwen3_8b": 8.19,
        "llama3_8b": 8.03,
        "llama3_70b": 70.55,
    }
    for name, billions in expected_billions.items():
        n = decoder.count_params(decoder.abstract_params(decoder.ModelConfig.preset(name)))
        assert abs(n / 1e9 - billions) < 0.01, (name, n)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="qwen3_1.7b"):
        decoder.ModelConfig.preset("qwen3_1.8b")


def test_unsupported_architecture_is_named():
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        decoder.ModelConfig.from_hf_config(
            {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
        )


def _tiny(**overrides):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=50, **overrides)
    return cfg, decoder.init_params(cfg, jax.random.key(0), std=0.2)


def test_param_axes_match_param_shapes():
    cfg, params = _tiny(attention_bias=True)
    axes = decoder.param_axes(cfg)
    jax.tree.map(lambda p, a: np.testing.assert_equal(p.ndim, len(a)), params, axes)


def test_causality():
    cfg, params = _tiny()
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    mask = jnp.ones((2, 12), bool)
    base = decoder.forward(cfg, params, tokens, mask)
    changed = decoder.forward(
        cfg, params, tokens.at[:, 7].set((tokens[:, 7] + 1) % cfg.vocab_size), mask
    )
    np.testing.assert_array_equal(base[:, :7], changed[:, :7])
    assert np.abs(base[:, 7:] - changed[:, 7:]).max() > 1e-3


def test_left_and_right_padding_match_unpadded():
    cfg, params = _tiny()
    seq = np.asarray(jax.random.randint(jax.random.key(2), (9,), 0, cfg.vocab_size))
    alone = decoder.forward(cfg, params, jnp.asarray(seq[None]), jnp.ones((1, 9), bool))[0]
    pad = 4
    left = np.concatenate([np.zeros(pad, int), seq])[None]
    right = np.concatenate([seq, np.zeros(pad, int)])[None]
    left_mask = np.arange(13)[None] >= pad
    right_mask = np.arange(13)[None] < 9
    left_logits = decoder.forward(cfg, params, jnp.asarray(left), jnp.asarray(left_mask))[0]
    right_logits = decoder.forward(cfg, params, jnp.asarray(right), jnp.asarray(right_mask))[0]
    np.testing.assert_allclose(left_logits[pad:], alone, atol=1e-5)
    np.testing.assert_allclose(right_logits[:9], alone, atol=1e-5)
    assert np.isfinite(left_logits).all()


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_cached_decoding_matches_forward(family):
    """A prefill reading only the prompt slots, then one token at a time through the KV cache
    (on the per-layer weights) gives `forward`'s logits at every real position."""
    extra = {} if family == "qwen3" else dict(qk_norm=False, rope_scaling=(8.0, 1.0, 4.0, 16))
    cfg, params = _tiny(family=family, **extra)
    B, P, N = 3, 6, 5
    tokens = jax.random.randint(jax.random.key(3), (B, P + N), 0, cfg.vocab_size)
    prompt_len = np.array([6, 3, 4])
    mask = np.ones((B, P + N), bool)
    mask[:, :P] = np.arange(P)[None] >= (P - prompt_len)[:, None]  # left padding
    full = decoder.forward(cfg, params, tokens, jnp.asarray(mask))
    positions = decoder.positions_from_mask(jnp.asarray(mask))

    @functools.partial(jax.jit, static_argnames="read_length")
    def run(params, tokens, positions, cache, slot, kv_mask, read_length=None):
        hidden, cache = cached_forward.forward_cached(
            cfg, params, tokens, positions, cache, slot, kv_mask, read_length
        )
        return cached_forward.logits_from_hidden(cfg, params, hidden), cache

    weights = cached_forward.unstack_layers(params)
    cache = cached_forward.init_cache(cfg, B, P + N)
    kv_mask = jnp.zeros((B, P + N), bool).at[:, :P].set(mask[:, :P])
    logits, cache = run(weights, tokens[:, :P], positions[:, :P], cache, 0, kv_mask, P)
    np.testing.assert_allclose(logits[mask[:, :P]], full[:, :P][mask[:, :P]], atol=1e-4)
    for t in range(P, P + N):
        kv_mask = kv_mask.at[:, t].set(True)
        token, position = tokens[:, t : t + 1], positions[:, t : t + 1]
        step, cache = run(weights, token, position, cache, t, kv_mask)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-4)


def test_bfloat16_compute_is_close_to_float32():
    cfg, params = _tiny()
    cfg16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, cfg.vocab_size)
    mask = jnp.ones((2, 10), bool)
    ref = decoder.forward(cfg, params, tokens, mask)
    low = decoder.forward(cfg16, params, tokens, mask)
    assert low.dtype == jnp.float32
    # bf16 keeps 8 significant bits (relative step 2^-8 ~ 0.4%); two layers compound a few of those.
    assert np.abs(low - ref).max() < 0.05 * np.abs(ref).max()
