"""Checkpoint loading and saving against `transformers` (torch, CPU) as the independent reference.

The random weights are made *sensitive* (ENV_NOTES "a trap"): matrices with std 0.15 instead of 0.02 and
random norm gains, so attention is peaked and a wrong rope_theta or layout shows up in the logits.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from s2d_jax.model import decoder, hf_io  # noqa: E402

SMALL = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
)
VARIANTS = {
    "qwen3_tied": ("qwen3", dict(rope_theta=10_000.0, tie_word_embeddings=True)),
    "qwen3_bias": ("qwen3", dict(rope_theta=1_000_000.0, attention_bias=True)),
    "llama3_scaled": (
        "llama",
        dict(
            rope_theta=500_000.0,
            tie_word_embeddings=False,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
}


def make_hf_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    kwargs = {**SMALL, **overrides}
    if family == "qwen3":
        config = transformers.Qwen3Config(**kwargs)
        hf = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**kwargs)
        hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))  # 7x the usual 0.02: peaked attention
    return hf.eval()


def padded_batch(vocab: int, seed: int = 0):
    """Tokens [3, 24] with left padding, right padding and none; mask [3, 24]."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(3, 24))
    mask = np.ones((3, 24), bool)
    mask[0, :7] = False  # left padded
    mask[1, 18:] = False  # right padded
    return tokens, mask


def hf_logits(hf, tokens, mask):
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)  # what `generate` passes for padded rows
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    family, overrides = VARIANTS[request.param]
    hf = make_hf_model(family, **overrides)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, path


def test_logits_match_transformers_float32(checkpoint):
    hf, path = checkpoint
    cfg, params = hf_io.load_hf(path)
    tokens, mask = padded_batch(cfg.vocab_size)
    ours = np.asarray(decoder.forward(cfg, params, jnp.asarray(tokens), jnp.asarray(mask)))
    ref = hf_logits(hf, tokens, mask)
    assert np.abs(ref).max() > 3.0  # the weights are large enough for attention to matter
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4, rtol=0)


def test_wrong_rope_theta_is_detected(checkpoint):
    """The parity test must be able to fail: a rope_theta off by 10x moves the logits visibly."""
    hf, path = checkpoint
    cfg, params = hf_io.load_hf(path)
    wrong = hf_io.load_hf(path, rope_theta=cfg.rope_theta * 10)[0]
    tokens, mask = padded_batch(cfg.vocab_size)
    ours = np.asarray(decoder.forward(wrong, params, jnp.asarray(tokens), jnp.asarray(mask)))
    assert np.abs(ours[mask] - hf_logits(hf, tokens, mask)[mask]).max() > 1e-2


def test_logits_bfloat16_close(checkpoint):
    hf, path = checkpoint
    cfg, params = hf_io.load_hf(path, dtype=jnp.bfloat16)
    assert jax.tree.leaves(params)[0].dtype == jnp.bfloat16
    tokens, mask = padded_batch(cfg.vocab_size)
    ours = np.asarray(decoder.forward(cfg, params, jnp.asarray(tokens), jnp.asarray(mask)))
    ref = hf_logits(hf, tokens, mask)
    # Weights and activations rounded to bf16 (8 significant bits, relative error 2^-9 each) through
    # two layers of ~10 roundings: a few percent of the logit scale, never order-of-magnitude off.
    assert np.abs(ours[mask] - ref[mask]).max() < 0.05 * np.abs(ref).max()


def test_save_round_trip_loads_in_transformers(tmp_path):
    for family, extra in [
        ("qwen3", {}),
        ("llama", dict(qk_norm=False, rope_scaling=(8.0, 1.0, 4.0, 32))),
    ]:
        cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=61, family=family, **extra)
        params = decoder.init_params(cfg, jax.random.key(5), std=0.2)
        out = hf_io.save_hf(tmp_path / family, cfg, params)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        tokens, mask = padded_batch(cfg.vocab_size, seed=1)
        ours = np.asarray(decoder.forward(cfg, params, jnp.asarray(tokens), jnp.asarray(mask)))
        np.testing.assert_allclose(ours[mask], hf_logits(hf, tokens, mask)[mask], atol=1e-4, rtol=0)
        cfg2, params2 = hf_io.load_hf(out)
        assert cfg2 == cfg
        jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_sharded_save_writes_index_and_reloads(tmp_path):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=61)
    params = decoder.init_params(cfg, jax.random.key(6))
    hf_io.save_hf(tmp_path, cfg, params, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, params2 = hf_io.load_hf(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_load_onto_shardings(tmp_path):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=64)
    params = decoder.init_params(cfg, jax.random.key(7))
    hf_io.save_hf(tmp_path, cfg, params)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    spec = jax.sharding.PartitionSpec
    shardings = jax.tree.map(
        lambda p: jax.sharding.NamedSharding(mesh, spec("fsdp") if p.shape[0] % 2 == 0 else spec()),
        params,
    )
    _, loaded = hf_io.load_hf(tmp_path, shardings=shardings)
    assert loaded["embed"].sharding == shardings["embed"]
    jax.tree.map(np.testing.assert_array_equal, params, loaded)


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def saved(tmp_path):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=64)
    params = decoder.init_params(cfg, jax.random.key(8))
    hf_io.save_hf(tmp_path, cfg, params)
    return tmp_path, cfg, params


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hf_io.load_hf(tmp_path / "nowhere")


def test_missing_config(saved):
    path, *_ = saved
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf_io.load_hf(path)


def test_pickle_checkpoints_are_never_read(saved):
    path, *_ = saved
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        hf_io.load_hf(path)


def _rewrite(path, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(saved):
    path, *_ = saved
    _rewrite(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(64, 32\)"):
        hf_io.load_hf(path)


def test_extra_tensor_is_named(saved):
    path, *_ = saved
    _rewrite(path, lambda t: t.update({"model.layers.0.mystery.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="mystery"):
        hf_io.load_hf(path)


def test_misshaped_tensor_is_named(saved):
    path, *_ = saved
    _rewrite(path, lambda t: t.update({"model.norm.weight": np.zeros(31, np.float32)}))
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*\(31,\).*\(32,\)"):
        hf_io.load_hf(path)


def test_non_finite_weight_is_named(saved):
    path, *_ = saved

    def poison(tensors):
        tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan

    _rewrite(path, poison)
    # up_proj [F, D] is stored [D, F] here: HF index (3, 5) is our (5, 3)
    with pytest.raises(
        ValueError,
        match=r"'model\.layers\.1\.mlp\.up_proj\.weight' in .*model\.safetensors has 1 "
        r"non-finite values \(first at index \(5, 3\)",
    ):
        hf_io.load_hf(path)


def test_truncated_safetensors_is_named(saved):
    path, *_ = saved
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        hf_io.load_hf(path)


def test_malformed_config_names_file_and_line(saved):
    path, *_ = saved
    (path / "config.json").write_text('{\n  "vocab_size": 64,\n  "hidden_size": ')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON \(line 3"):
        hf_io.load_hf(path)


def test_incomplete_config_names_missing_keys(saved):
    path, *_ = saved
    config = json.loads((path / "config.json").read_text())
    del config["num_attention_heads"], config["model_type"], config["architectures"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"config\.json lacks \['num_attention_heads', 'architectures or model_type'\]",
    ):
        hf_io.load_hf(path)
