"""The rollout sampler against independent references: transformers' greedy `generate`, the
trainer-side log-probs of `decoder.forward`, NumPy's truncated distributions, and itself under
re-batching, re-sharding and re-seeding.

Models are tiny random HF models with weights scaled up (ENV_NOTES "a trap"), so greedy decoding
is not degenerate and a wrong rope, cache slot or mask changes the tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_io import make_hf_model  # noqa: E402

from s2d_jax.distributed import sharding as sh  # noqa: E402
from s2d_jax.model import cached_forward, decode_kernels, decoder, hf_io  # noqa: E402
from s2d_jax.rollout import engine, phases, sampler, slots, token_selection  # noqa: E402

FAMILIES = {
    "qwen3": dict(rope_theta=10_000.0, tie_word_embeddings=True),
    "llama": dict(
        rope_theta=500_000.0,
        tie_word_embeddings=False,
        attention_bias=True,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
}
PAD = 0
N_NEW = 32


def _greedy_settings(cfg):
    return sampler.make_settings(cfg, temperature=0.0, top_p=1.0, top_k=0, eos_id=(), pad_id=PAD)


def _random_prompts(lengths, vocab, seed):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(1, vocab, n)] for n in lengths]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request, tmp_path_factory):
    """(hf torch model, cfg, params) with the same weights."""
    hf = make_hf_model(request.param, **FAMILIES[request.param])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    cfg, params = hf_io.load_hf(path)
    return hf, cfg, params


def _hf_greedy(hf, prompts, eos):
    """transformers' greedy completions [B, N_NEW] (pad after EOS, and past an early stop)."""
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), PAD)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
    with torch.no_grad():
        out = hf.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            max_new_tokens=N_NEW,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=eos,
        ).numpy()[:, width:]
    return np.pad(out, ((0, 0), (0, N_NEW - out.shape[1])), constant_values=PAD)


def _check_eos_layout(rollout, eos_ids):
    """EOS ends a row (included, mask True), pad and mask False after; truncated = no EOS."""
    P = rollout.prompt_mask.shape[1]
    completion = np.asarray(rollout.tokens)[:, P:]
    mask, lengths = np.asarray(rollout.completion_mask), np.asarray(rollout.lengths)
    for row, n in zip(completion, lengths, strict=True):
        is_eos = np.isin(row, eos_ids)
        first = int(np.argmax(is_eos)) if is_eos.any() else None
        if first is None:
            assert n == completion.shape[1]
        else:
            assert n == first + 1
        assert (row[n:] == PAD).all()
    np.testing.assert_array_equal(mask, np.arange(completion.shape[1])[None] < lengths[:, None])
    ends_in_eos = np.isin(completion[np.arange(len(lengths)), lengths - 1], eos_ids)
    np.testing.assert_array_equal(np.asarray(rollout.truncated), ~ends_in_eos)
    assert (np.asarray(rollout.logprobs)[~mask] == 0).all()


def _reference_logprobs(cfg, params, rollout, temperature):
    """log_softmax(forward(full sequence) / T) at each completion token [B, N] (the trainer's)."""
    logits = jax.jit(decoder.forward, static_argnums=0)(
        cfg, params, rollout.tokens, rollout.attention_mask
    )
    if temperature > 0:
        logits = logits / temperature
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    per_token = jnp.take_along_axis(logp, rollout.tokens[:, 1:, None], axis=-1)[..., 0]
    P = rollout.prompt_mask.shape[1]
    return np.asarray(per_token[:, P - 1 :])


PROMPT_LENGTHS = [5, 11, 8, 1]  # one prompt bucket (16) for every test below, so they share
# compiled prefills; 1 token is the edge case of a prompt that is only its last token.
SAMPLED = dict(
    max_new_tokens=N_NEW,
    temperature=0.7,
    top_k=20,
    top_p=0.9,
    eos_id=(5, 17, 33),  # frequent enough that some rows stop early, rare enough that some don't
    pad_id=PAD,
)


def test_greedy_matches_transformers(family_model):
    hf, cfg, params = family_model
    prompts = _random_prompts(PROMPT_LENGTHS, cfg.vocab_size, seed=1)
    ref = _hf_greedy(hf, prompts, eos=None)
    assert len(np.unique(ref)) > 10  # the scaled weights make decoding varied, not one token
    # Two EOS ids taken from that output, so that rows stop at different steps; transformers
    # pads after EOS as the sampler does.
    eos = [int(ref[1, 9]), int(ref[2, 20])]
    ref = _hf_greedy(hf, prompts, eos=eos)
    out = sampler.generate(
        cfg, params, prompts, max_new_tokens=N_NEW, temperature=0.0, eos_id=eos, pad_id=PAD
    )
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, 16:], ref)
    _check_eos_layout(out, eos)
    assert np.asarray(out.lengths).min() < N_NEW
    # Greedy log-probs are the plain log_softmax of the trainer's logits.
    mask = np.asarray(out.completion_mask)
    trainer = _reference_logprobs(cfg, params, out, temperature=0.0)
    np.testing.assert_allclose(np.asarray(out.logprobs)[mask], trainer[mask], atol=1e-4, rtol=0)


def test_sampled_logprobs_match_trainer(family_model):
    _, cfg, params = family_model
    prompts = _random_prompts(PROMPT_LENGTHS, cfg.vocab_size, seed=2)
    out = sampler.generate(cfg, params, prompts, seed=3, **SAMPLED)
    assert out.tokens.shape == (4, 16 + N_NEW) and out.logprobs.shape == (4, N_NEW)
    _check_eos_layout(out, SAMPLED["eos_id"])
    truncated = np.asarray(out.truncated)
    assert truncated.any() and not truncated.all()  # padding after EOS is exercised
    mask = np.asarray(out.completion_mask)
    ref = _reference_logprobs(cfg, params, out, SAMPLED["temperature"])
    np.testing.assert_allclose(np.asarray(out.logprobs)[mask], ref[mask], atol=1e-4, rtol=0)
    # Reproducible by seed, and the seed matters.
    again = sampler.generate(cfg, params, prompts, seed=3, **SAMPLED)
    np.testing.assert_array_equal(out.tokens, again.tokens)
    np.testing.assert_array_equal(out.logprobs, again.logprobs)
    other = sampler.generate(cfg, params, prompts, seed=4, **SAMPLED)
    assert not np.array_equal(out.tokens, other.tokens)


def _truncated_reference(logits, temperature, top_k, top_p):
    """The distribution sampling should follow, from the definitions, in NumPy float64."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    keep[order[: top_k or len(p)]] = True
    p = np.where(keep, p, 0.0) / p[keep].sum()
    sorted_p = p[order]
    mass_before = np.concatenate([[0.0], np.cumsum(sorted_p)[:-1]])
    keep_p = np.zeros_like(p, bool)
    keep_p[order[mass_before < top_p]] = True
    p = np.where(keep_p & keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 4, 1.0), (0.7, 0, 0.8), (1.5, 6, 0.7), (1.0, 0, 1.0)]
)
def test_sampling_frequencies_match_truncated_distribution(temperature, top_k, top_p):
    logits = jnp.array([2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, 0.9, 1.1, -2.0])
    n = 4000
    keys = jax.random.split(jax.random.key(11), n)
    tokens, logprobs = token_selection.sample_tokens(
        jnp.broadcast_to(logits, (n, logits.size)),
        keys,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    freq = np.bincount(np.asarray(tokens), minlength=logits.size) / n
    p = _truncated_reference(logits, temperature, top_k, top_p)
    assert (freq[p == 0] == 0).all()  # a truncated token is never drawn
    # Each count is Binomial(n, p): |freq - p| beyond 5 standard errors has probability < 6e-7
    # per token, so with 10 tokens a correct sampler fails this about once in 10^5 seeds.
    bound = 5 * np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) <= bound + 1e-12).all(), (freq, p)
    # Log-probs are of the tempered, untruncated distribution.
    z = np.asarray(logits, np.float64) / temperature
    untruncated = z - np.log(np.exp(z).sum())
    np.testing.assert_allclose(logprobs, untruncated[np.asarray(tokens)], atol=1e-5)


def test_top_p_keeps_the_sorted_prefix_on_a_large_vocabulary():
    """The sort-free top-p cut keeps exactly the smallest most-likely prefix reaching top_p."""
    rng = np.random.default_rng(12)
    logits = rng.normal(0.0, 3.0, (32, 5000)).astype(np.float32)  # ties have probability ~0
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    # float32 masses: a top_p within ~1e-6 of a prefix mass could round either way; these aren't.
    for top_p in (0.05, 0.5, 0.9, 0.99):
        floor = token_selection._top_p_floor(jnp.asarray(probs), top_p)
        kept = probs >= np.asarray(floor)[:, None]
        for row, p in zip(kept, probs.astype(np.float64), strict=True):
            order = np.argsort(-p)
            before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]]) / p.sum()
            expect = np.zeros_like(row)
            expect[order[before < top_p]] = True
            np.testing.assert_array_equal(row, expect)


def test_sample_tokens_greedy_is_first_argmax():
    logits = jnp.array([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 2.0, 5.0]])
    tokens, logprobs = token_selection.sample_tokens(
        logits, jax.random.split(jax.random.key(0), 2), temperature=0.0, top_k=0, top_p=1.0
    )
    np.testing.assert_array_equal(tokens, [1, 0])  # numpy's argmax: first among ties
    ref = jax.nn.log_softmax(logits)[np.arange(2), np.array([1, 0])]
    np.testing.assert_allclose(logprobs, ref, atol=1e-6)


def test_batch_equals_each_prompt_alone(family_model):
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices: this checks the sampler's batching, not the model")
    prompts = _random_prompts(PROMPT_LENGTHS, cfg.vocab_size, seed=4)
    greedy = dict(SAMPLED, temperature=0.0)
    batch = sampler.generate(cfg, params, prompts, **greedy)
    for i, prompt in enumerate(prompts):
        alone = sampler.generate(cfg, params, [prompt], **greedy)
        np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0])
        np.testing.assert_allclose(batch.logprobs[i], alone.logprobs[0], atol=1e-5)
    # Sampled: a row depends on the seed, its row index and its own prompt only, so other
    # prompts of other lengths (other left padding) beside it change nothing.
    batch = sampler.generate(cfg, params, prompts, seed=5, **SAMPLED)
    others = _random_prompts([15, 2, 9, 6], cfg.vocab_size, seed=6)
    mixed = [others[0], prompts[1], prompts[2], others[3]]
    swapped = sampler.generate(cfg, params, mixed, seed=5, **SAMPLED)
    np.testing.assert_array_equal(batch.tokens[1:3], swapped.tokens[1:3])
    np.testing.assert_allclose(batch.logprobs[1:3], swapped.logprobs[1:3], atol=1e-5)
    assert not np.array_equal(batch.tokens[0], swapped.tokens[0])


def test_stacked_and_per_layer_params_give_the_same_tokens(family_model):
    """generate unstacks stacked params itself, and takes `PerLayerParams` as they are."""
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices")
    prompts = _random_prompts(PROMPT_LENGTHS, cfg.vocab_size, seed=11)
    per_layer = cached_forward.unstack_layers(params, dtype=cfg.compute_dtype)
    assert isinstance(per_layer, cached_forward.PerLayerParams)
    assert len(per_layer.layers) == cfg.n_layers and "layers" not in per_layer.rest
    assert sampler.sampling_weights(cfg, per_layer) is per_layer
    stacked = sampler.generate(cfg, params, prompts, seed=1, **SAMPLED)
    unstacked = sampler.generate(cfg, per_layer, prompts, seed=1, **SAMPLED)
    np.testing.assert_array_equal(stacked.tokens, unstacked.tokens)
    np.testing.assert_allclose(stacked.logprobs, unstacked.logprobs, atol=1e-6)
    with pytest.raises(TypeError, match="PerLayerParams"):  # the phases never take stacked ones
        sampler.prefill(cfg, params, prompts, _greedy_settings(cfg), max_new_tokens=4)


def test_num_samples_rows_are_prompt_major(family_model):
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices")
    prompts = _random_prompts([3, 7], cfg.vocab_size, seed=7)
    out = sampler.generate(cfg, params, prompts, seed=8, num_samples=2, **SAMPLED)
    tokens = np.asarray(out.tokens)
    for row in range(4):
        np.testing.assert_array_equal(
            tokens[row, 16 - len(prompts[row // 2]) : 16], prompts[row // 2]
        )
    assert not np.array_equal(tokens[0], tokens[1])  # the samples of a prompt draw independently
    # Rows keep their keys: the 4 rows of 2 prompts x 2 samples are those of 4 listed prompts.
    listed = sampler.generate(
        cfg, params, [p for p in prompts for _ in range(2)], seed=8, **SAMPLED
    )
    np.testing.assert_array_equal(tokens, listed.tokens)


def test_mesh_of_8_devices_gives_single_device_tokens(family_model):
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices: this checks the sampler's sharding, not the model")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated = jax.device_put(
        params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    prompts = _random_prompts(PROMPT_LENGTHS, cfg.vocab_size, seed=10)
    for kw in (dict(SAMPLED, temperature=0.0), SAMPLED):  # 4 rows, padded to 8 on the mesh
        single = sampler.generate(cfg, params, prompts, **kw)
        sharded = sampler.generate(cfg, replicated, prompts, mesh=mesh, **kw)
        assert sharded.tokens.shape == single.tokens.shape  # batch-padding rows are dropped
        assert len(sharded.tokens.sharding.device_set) == 8
        np.testing.assert_array_equal(sharded.tokens, single.tokens)
        np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5)


def test_rows_over_two_mesh_axes_give_single_device_tokens(family_model):
    """data_axis=("data", "fsdp") on a (2, 2, 2) mesh, weights split over tensor (SAMPLE_RULES):
    rows are spread over 4 shards (6 rows padded to 8) and the tokens equal one device's."""
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices: this checks the sampler's sharding, not the model")
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    placed = jax.device_put(params, sh.param_shardings(mesh, cfg, sh.SAMPLE_RULES))
    prompts = _random_prompts([5, 11, 8, 1, 3, 16], cfg.vocab_size, seed=13)
    axes = ("data", "fsdp")
    state = sampler.prefill(
        cfg,
        sampler.sampling_weights(cfg, placed),
        prompts,
        _greedy_settings(cfg),
        max_new_tokens=N_NEW,
        mesh=mesh,
        data_axis=axes,
    )
    assert state.prompt.shape[0] == 8
    assert state.cache[0]["k"].sharding.shard_shape(state.cache[0]["k"].shape)[0] == 2
    for kw in (dict(SAMPLED, temperature=0.0), SAMPLED):
        single = sampler.generate(cfg, params, prompts, **kw)
        sharded = sampler.generate(cfg, placed, prompts, mesh=mesh, data_axis=axes, **kw)
        np.testing.assert_array_equal(sharded.tokens, single.tokens)
        np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5)


def test_prefill_and_decode_loop_traced_once_per_bucket(family_model, monkeypatch):
    """The static engine's module-level jits of `phases` trace (and compile) once per (prompt bucket, new-token
    bucket): a trace calls `forward_cached`, so a counter in its place logs every trace."""
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices")
    traced = []

    def counted_forward_cached(cfg, params, tokens, *args, **kwargs):
        traced.append(tokens.shape)  # [B, P - 1] in the prefill, [B, 1] in the decode step
        return cached_forward.forward_cached(cfg, params, tokens, *args, **kwargs)

    monkeypatch.setattr(phases, "forward_cached", counted_forward_cached)
    jax.clear_caches()  # every jit cache empty: the next calls trace
    kw = dict(SAMPLED, eos_id=(), engine="static")  # no EOS: every row runs to max_new_tokens
    # Prompt lengths 1..16 share bucket 16; 25 and 32 new tokens share bucket 32.
    a = sampler.generate(cfg, params, _random_prompts([3, 5], 97, 1), **dict(kw, max_new_tokens=25))
    b = sampler.generate(cfg, params, _random_prompts([9, 16], 97, 2), **kw)
    assert traced == [(2, 15), (2, 1)]
    assert a.tokens.shape == (2, 16 + 25) and b.tokens.shape == (2, 16 + 32)
    assert (np.asarray(a.lengths) == 25).all() and np.asarray(a.truncated).all()
    sampler.generate(cfg, params, _random_prompts([17, 1], 97, 3), **kw)
    assert traced[2:] == [(2, 23), (2, 1)]  # prompt bucket 24 traces both again


def _pool_budget(cfg, slots_B, prompts, max_new_tokens):
    """A kv_budget_bytes that holds exactly `slots_B` rows of this call's cache length."""
    return sampler.cache_bytes(cfg, slots_B, engine.cache_length(prompts, max_new_tokens))


def test_rows_do_not_depend_on_the_schedule(family_model, monkeypatch):
    """Pools of 4 and 64 slots and the static engine give the same rows on a workload whose
    rows end at different steps: a row's randomness is a function of (seed, row, token index)
    only. With 4 slots the 64 requests go through many refills, a prompt's 4 samples span
    refills and fork from a slot whose row may have ended; with 64 the pool is compacted as rows
    end. Each prompt is prefilled once whatever the pool.

    Tokens are equal; log-probs to 1e-5, not bitwise: XLA:CPU's matmuls round differently for
    different row counts (1 vs 64 rows of the same product differ by ~1e-6), so a row's float
    arithmetic depends on how many rows share its step in any engine."""
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices: this checks the scheduling, not the model")
    prompt_lengths = [5, 11, 8, 1, 16, 3, 9, 2, 14, 6, 12, 4, 7, 15, 10, 13]
    prompts = _random_prompts(prompt_lengths, cfg.vocab_size, seed=14)
    kw = dict(SAMPLED, eos_id=(5, 17, 33, 40, 41, 60), seed=9, num_samples=4)
    prefilled = []

    def counted_prefill(pool, params, prompt_UP, dest_U, **statics):
        prefilled.extend(np.asarray(prompt_UP)[np.asarray(dest_U) < pool.row_B.shape[0]].tolist())
        return prefill_jit(pool, params, prompt_UP, dest_U, **statics)

    prefill_jit = slots.prefill_jit
    monkeypatch.setattr(slots, "prefill_jit", counted_prefill)
    static = sampler.generate(cfg, params, prompts, engine="static", **kw)
    lengths = np.asarray(static.lengths)
    assert len(set(lengths.tolist())) > 5 and lengths.max() == N_NEW  # rows end at many steps
    for slots_B in (4, 64):
        prefilled.clear()
        budget = _pool_budget(cfg, slots_B, prompts, N_NEW)
        out = sampler.generate(cfg, params, prompts, kv_budget_bytes=budget, **kw)
        for name in ("tokens", "prompt_mask", "completion_mask", "lengths", "truncated"):
            np.testing.assert_array_equal(getattr(out, name), getattr(static, name), name)
        np.testing.assert_allclose(out.logprobs, static.logprobs, atol=1e-5, rtol=0)
        assert sorted(p[: len(q)] for p, q in zip(prefilled, prompts, strict=False)) == sorted(
            prompts
        ) and len(prefilled) == len(prompts)  # each prompt prefilled once, not once per sample
    _check_eos_layout(out, kw["eos_id"])


def test_decode_window_traced_once_per_shape_bucket(family_model, monkeypatch):
    """The continuous engine's window traces once per (pool size, read length): the second
    window of a call, and a second call with other prompts in the same buckets, reuse it."""
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices")
    traced = []

    def counted_forward_cached(cfg, params, tokens, positions, cache, slot, kv_mask, *rest):
        traced.append((tokens.shape, rest[0]))  # [U, P - 1] in a prefill, [B, 1] in a window
        return cached_forward.forward_cached(
            cfg, params, tokens, positions, cache, slot, kv_mask, *rest
        )

    monkeypatch.setattr(slots, "forward_cached", counted_forward_cached)
    jax.clear_caches()
    # No EOS and 16 new tokens: every row runs one whole 16-step window, reading
    # bucket(5 + 15) = 24 of 16 + 16 cache slots. 2 prompts x 4 samples in 4 slots: two windows.
    kw = dict(SAMPLED, eos_id=(), max_new_tokens=16, num_samples=4)
    first = _random_prompts([3, 5], cfg.vocab_size, seed=15)
    budget = _pool_budget(cfg, 4, first, 16)
    a = sampler.generate(cfg, params, first, kv_budget_bytes=budget, **kw)
    assert (np.asarray(a.lengths) == 16).all()
    assert traced == [((1, 15), 16), ((4, 1), 24)]  # one prefill, one window: both traced once
    second = _random_prompts([5, 4], cfg.vocab_size, seed=16)  # reads 24 slots too
    sampler.generate(cfg, params, second, kv_budget_bytes=budget, seed=1, **kw)
    assert traced == [((1, 15), 16), ((4, 1), 24)]


INTERPRETED_KERNELS = ("pallas_gpu_interpret", "pallas_tpu_interpret")


@pytest.mark.parametrize("kind", INTERPRETED_KERNELS)
def test_decode_kernel_reads_each_rows_length_as_the_reference_masks_it(kind):
    """model/decode_kernels.py (Pallas' GPU decode attention, and the TPU kernel, interpreted
    here) against `cached_attention`'s pure-JAX path on the same cache: rows of many lengths, one
    empty; 768 slots are 3 TPU blocks, so rows end inside the first, second and last."""
    rng = np.random.default_rng(3)
    B, K, G, S, D = 6, 2, 3, 768, 16
    q_BTHD = jnp.asarray(rng.normal(size=(B, 1, K * G, D)), jnp.float32)
    k_BKSD, v_BKSD = (jnp.asarray(rng.normal(size=(B, K, S, D)), jnp.float32) for _ in "kv")
    length_B = jnp.array([1, 17, 768, 300, 513, 0])
    visible_B1S = (jnp.arange(S)[None, :] < length_B[:, None])[:, None, :]
    want = cached_forward.cached_attention(q_BTHD, k_BKSD, v_BKSD, visible_B1S, S)
    got = cached_forward.cached_attention(q_BTHD, k_BKSD, v_BKSD, visible_B1S, S, length_B, kind)
    np.testing.assert_allclose(got[:5], want[:5], atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(got[5], 0.0)  # nothing to attend to: 0, not NaN


@pytest.mark.parametrize("kind", INTERPRETED_KERNELS)
def test_a_decode_kernel_under_a_mesh_runs_on_each_devices_rows(kind):
    """Rows over 8 devices: traced under the mesh (as the engine traces its windows), the kernel
    runs on each device's own rows, with no all-gather of the cache (opaque to the partitioner,
    it would gather them onto every device otherwise), and gives one device's values."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(5)
    B, K, G, S, D = 8, 2, 2, 512, 16
    q_BTHD = rng.normal(size=(B, 1, K * G, D)).astype(np.float32)
    k_BKSD, v_BKSD = (rng.normal(size=(B, K, S, D)).astype(np.float32) for _ in "kv")
    length_B = (np.arange(B) * 60 + 1).astype(np.int32)
    attend = jax.jit(functools.partial(decode_kernels.decode_attention, kind=kind))
    placed = [jax.device_put(x, rows) for x in (q_BTHD, k_BKSD, v_BKSD, length_B)]
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        assert "all-gather" not in attend.lower(*placed).compile().as_text()
        got = attend(*placed)
    assert got.sharding.spec == jax.sharding.PartitionSpec("data")
    want = decode_kernels.decode_attention(q_BTHD, k_BKSD, v_BKSD, length_B, kind)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


def test_the_tpu_decode_kernel_lowers_for_a_tpu(monkeypatch):
    """What can be checked of the compiled TPU kernel without a TPU: Pallas' Mosaic lowering
    (block shapes, prefetched lengths, scratch) for a TPU v5p, at Qwen3-1.7B's decode shapes
    (8 KV heads of 2 queries, head_dim 128, 2k + 16k slots, bfloat16). Pallas reads the chip's
    parameters from the device it lowers on; a CPU is given a v5p's."""
    tpu_info = pytest.importorskip("jax._src.pallas.mosaic.tpu_info")
    if not hasattr(tpu_info, "registry"):
        pytest.skip("this jax's Pallas reads TPU parameters differently")
    v5p = functools.partial(tpu_info.get_tpu_info_for_chip, tpu_info.ChipVersion.TPU_V5P, 1)
    monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind, v5p)
    B, K, H, S, D = 4, 8, 16, 18432, 128
    shapes = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((B, 1, H, D), (B, K, S, D))]
    length = jax.ShapeDtypeStruct((B,), jnp.int32)
    attend = functools.partial(decode_kernels.decode_attention, kind="pallas_tpu")
    lowered = jax.jit(attend).trace(shapes[0], shapes[1], shapes[1], length)
    text = lowered.lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text


def test_decode_kernel_blocks():
    assert decode_kernels.kernel_blocks(256) == (16, 16)
    assert decode_kernels.kernel_blocks(18432) == (16, 128)  # 2k prompt + 16k response slots
    with pytest.raises(ValueError, match="multiple of 16 cache slots"):
        decode_kernels.kernel_blocks(40)
    assert decode_kernels.tpu_block_slots(768) == 256
    assert decode_kernels.tpu_block_slots(18432) == 512
    with pytest.raises(ValueError, match="multiple of 256 cache slots"):
        decode_kernels.tpu_block_slots(320)


@pytest.mark.parametrize("kind", INTERPRETED_KERNELS)
def test_the_engine_with_the_decode_kernel_samples_the_reference_rows(family_model, kind):
    """The continuous engine with an interpreted kernel: the same rows as the pure-JAX path."""
    _, cfg, params = family_model
    if cfg.family != "qwen3":
        pytest.skip("one family suffices")
    prompts = _random_prompts([5, 11, 3], cfg.vocab_size, seed=21)
    kw = dict(SAMPLED, eos_id=(5, 17, 33), seed=4, num_samples=2, max_new_tokens=12)
    budget = _pool_budget(cfg, 4, prompts, 12)
    want = sampler.generate(cfg, params, prompts, kv_budget_bytes=budget, **kw)
    got = sampler.generate(
        cfg, params, prompts, decode_attention=kind, **kw,
        kv_budget_bytes=sampler.cache_bytes(cfg, 4, engine.cache_length(prompts, 12, kind)),
    )  # fmt: skip
    for name in ("tokens", "completion_mask", "lengths", "truncated"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), name)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="continuous engine only"):
        sampler.generate(cfg, params, prompts, engine="static", decode_attention="pallas_gpu", **kw)
    if kind == "pallas_tpu_interpret":  # the engine on 8 devices traces its windows under the mesh
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
        replicated = jax.device_put(
            params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        )
        sharded = sampler.generate(cfg, replicated, prompts, mesh=mesh, decode_attention=kind, **kw)
        np.testing.assert_array_equal(sharded.tokens, want.tokens)
        np.testing.assert_allclose(sharded.logprobs, want.logprobs, atol=1e-5, rtol=0)


def test_pool_size_follows_the_budget_not_the_rows():
    cfg = decoder.ModelConfig.preset("toy_tiny")
    row = sampler.cache_bytes(cfg, 1, 48)
    assert engine.pool_slots(cfg, 10_000, 48, 100 * row) == 64  # the power of two that fits
    assert engine.pool_slots(cfg, 1_000_000, 48, 100 * row) == 64  # more rows: same memory
    assert engine.pool_slots(cfg, 5, 48, 100 * row) == 5  # no more than the rows need
    assert engine.pool_slots(cfg, 5, 48, 100 * row, shards=4) == 8  # their share per shard
    assert engine.pool_slots(cfg, 10_000, 48, 100 * row, shards=4) == 256  # a budget per shard
    with pytest.raises(ValueError, match="kv_budget_bytes"):
        engine.pool_slots(cfg, 4, 48, row - 1)
    assert engine.default_kv_budget_bytes() == engine.CPU_KV_BUDGET_BYTES  # no memory stats
    assert engine.cache_length([[1] * 5, [2] * 17], 100) == 24 + 128


def test_slot_pool_is_split_over_the_data_axes():
    cfg = decoder.ModelConfig.preset("toy_tiny")
    mesh = sh.make_mesh(sh.MeshConfig(2, 2, 2))
    pool = slots.new_pool_jit(
        np.uint32(0), 8, cfg=cfg, slots=8, length=24, mesh=mesh, data_axis=("data", "fsdp")
    )
    k = pool.cache[0]["k"]
    assert k.sharding.shard_shape(k.shape)[0] == 2 and pool.row_B.sharding.shard_shape((8,)) == (2,)


def test_cache_bytes_and_buckets():
    cfg = decoder.ModelConfig.preset("toy_tiny", compute_dtype="bfloat16")
    cache = cached_forward.init_cache(cfg, 3, 48)
    assert {x.dtype for x in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
    assert sampler.cache_bytes(cfg, 3, 48) == sum(x.nbytes for x in jax.tree.leaves(cache))
    sizes = (1, 16, 17, 24, 25, 33, 100, 128, 129, 193)
    assert [sampler.bucket(n) for n in sizes] == [16, 16, 24, 24, 32, 48, 128, 128, 192, 256]
    assert sampler.bucket(5, minimum=8) == 8 and sampler.bucket(9, minimum=8) == 12


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(prompts=[[1, 2], []]), r"prompts\[1\] is empty"),
        (dict(prompts=[[1, 40]]), r"prompts\[0\].*\[0, 40\)"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=-1.0), "temperature"),
        (dict(eos_id=(3, 99)), "eos_id"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=300), "max_seq_len"),
        (dict(num_samples=0), "num_samples"),
        (dict(engine="paged"), "engine"),
        (dict(window_steps=0), "window_steps"),
        (dict(kv_budget_bytes=1), "kv_budget_bytes"),
    ],
)
def test_bad_arguments_are_named(change, match):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=40)
    params = decoder.abstract_params(cfg)
    kw = dict(prompts=[[1, 2]], max_new_tokens=4, eos_id=3, pad_id=PAD)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        sampler.generate(cfg, params, kw.pop("prompts"), **kw)


@pytest.mark.parametrize("data_axis", ["data", ("fsdp", "data"), ("fsdp", "fsdp")])
def test_mesh_without_data_axis_is_named(data_axis):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=40)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    with pytest.raises(ValueError, match="data_axis=.* must name distinct axes of the mesh"):
        sampler.generate(
            cfg,
            decoder.abstract_params(cfg),
            [[1]],
            max_new_tokens=4,
            eos_id=3,
            pad_id=0,
            mesh=mesh,
            data_axis=data_axis,
        )


@pytest.mark.parametrize(
    "V, excluded_tail",
    [
        (1000 + token_selection.CDF_BLOCK // 3, token_selection.CDF_BLOCK),  # two levels
        (22, 3),  # one block (the toy's vocabulary): the flat draw
    ],
)
def test_inverse_cdf_draw_matches_a_float64_flat_cdf(V, excluded_tail):
    """The CDF draw gives the token a flat float64 CDF gives for the same uniform (V not a
    multiple of the block, excluded tokens, a whole excluded block, never drawn), except within
    rounding of a boundary."""
    rng = np.random.default_rng(13)
    B = 64
    logits = rng.normal(0.0, 2.0, (B, V)).astype(np.float32)
    logits[:, rng.random(V) < 0.3] = -np.inf  # excluded tokens
    logits[:, -excluded_tail:] = -np.inf
    keys = jax.random.split(jax.random.key(14), B)
    drawn = np.asarray(token_selection._inverse_cdf_draw(jnp.asarray(logits), keys))
    u = np.asarray(jax.vmap(jax.random.uniform)(keys), np.float64)
    p = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1) / p.sum(axis=-1, keepdims=True)
    expect = (cdf <= u[:, None]).sum(axis=-1)
    near = np.abs(cdf - u[:, None]).min(axis=-1) < 1e-5
    assert np.isfinite(logits[np.arange(B), drawn]).all()
    np.testing.assert_array_equal(drawn[~near], expect[~near])
    assert (~near).sum() > B - 4
