"""Real pretrained weights (SmolLM2-135M-Instruct) through hf_io + model, against transformers.

Random-weight parity can pass while a model is wrong (ENV_NOTES "a trap"); a real checkpoint on
real chat-formatted prompts cannot. The checkpoint comes from `ensure_smollm2()`: built once
(about a minute), then read from the user cache; skipped only when the registry is unreachable and
nothing is cached.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import s2d_jax.data  # noqa: E402
from s2d_jax.model import decoder, hf_io  # noqa: E402
from s2d_jax.tools import get_smollm2  # noqa: E402

# The GSM8K test file shipped with the package.
GSM8K_TEST = Path(s2d_jax.data.__file__).parent / "files" / "gsm8k_test.jsonl"
N_PROMPTS = 4


@pytest.fixture(scope="module")
def smollm2_dir():
    try:
        return get_smollm2.ensure_smollm2()
    except get_smollm2.RegistryError as e:
        pytest.skip(f"SmolLM2 is not cached and could not be fetched: {e}")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def prompt_batch(tokenizer):
    """Tokens [4, T] of chat-formatted GSM8K test questions, left-padded; mask [4, T]."""
    with GSM8K_TEST.open() as f:
        questions = [json.loads(next(f))["question"] for _ in range(N_PROMPTS)]
    rows = []
    for question in questions:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    width = max(map(len, rows))
    tokens = np.full((len(rows), width), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) :] = row
        mask[i, width - len(row) :] = True
    assert mask.sum(1).min() < width  # at least one row is really padded
    return tokens, mask


@pytest.fixture(scope="module")
def reference_logits(smollm2_dir, prompt_batch):
    """transformers float32 logits [4, T, V], with the position ids `generate` uses for padding."""
    tokens, mask = prompt_batch
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            position_ids=torch.tensor(positions),
        )
    return out.logits.float().numpy()


def _max_error(cfg, params, prompt_batch, reference):
    tokens, mask = prompt_batch
    forward = jax.jit(decoder.forward, static_argnums=0)
    ours = np.asarray(forward(cfg, params, jnp.asarray(tokens), jnp.asarray(mask)))
    return np.abs(ours[mask] - reference[mask]).max()


def test_checkpoint_directory_is_plain_hf(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    cfg = decoder.ModelConfig.from_hf_config(hf_io.read_hf_config(smollm2_dir))
    expected = dict(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64, mlp_dim=1536)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert (cfg.vocab_size, cfg.rope_theta, cfg.tie_embeddings) == (49152, 1e5, True)
    assert get_smollm2.ensure_smollm2() == smollm2_dir  # idempotent: the cached directory


def test_tokenizer_and_chat_template(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2  # special tokens stay single ids
    assert tokenizer.decode(ids) == text


def test_logits_match_transformers(smollm2_dir, prompt_batch, reference_logits):
    cfg, params = hf_io.load_hf(smollm2_dir)
    scale = np.abs(reference_logits[prompt_batch[1]]).max()
    error = _max_error(cfg, params, prompt_batch, reference_logits)
    assert error <= 1e-4 * scale, f"max |logit diff| {error:.3g} vs max |logit| {scale:.3g}"


def test_wrong_rope_theta_fails_the_bound(smollm2_dir, prompt_batch, reference_logits):
    """The comparison above can fail: rope_theta 1e4 instead of 1e5 misses it by far."""
    wrong, params = hf_io.load_hf(smollm2_dir, rope_theta=1e4)
    scale = np.abs(reference_logits[prompt_batch[1]]).max()
    assert _max_error(wrong, params, prompt_batch, reference_logits) > 100 * 1e-4 * scale


@pytest.fixture(scope="module")
def greedy_runs(smollm2_dir, prompt_batch, tokenizer):
    """(ours, transformers') greedy continuations [4, 48] of the chat prompts, and our rollout."""
    from s2d_jax.rollout import sampler

    tokens, mask = prompt_batch
    prompts = [row[m].tolist() for row, m in zip(tokens, mask, strict=True)]
    cfg, params = hf_io.load_hf(smollm2_dir)
    rollout = sampler.generate(
        cfg, params, prompts, max_new_tokens=48, temperature=0.0, eos_id=(), pad_id=0
    )
    ours = np.asarray(rollout.tokens)[:, rollout.prompt_mask.shape[1] :]
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask.astype(np.int64)),
            max_new_tokens=48,
            min_new_tokens=48,  # no early stop: all 48 positions are compared
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return ours, out[:, tokens.shape[1] :].numpy(), (cfg, params, rollout)


def test_greedy_generation_matches_transformers(greedy_runs):
    ours, theirs, _ = greedy_runs
    np.testing.assert_array_equal(ours, theirs)


def test_sampler_logprobs_match_trainer_on_real_weights(greedy_runs):
    """The sampler's log-probs of its tokens equal a fresh forward pass over the sequences."""
    from s2d_jax.learn import losses

    _, _, (cfg, params, rollout) = greedy_runs
    logits = decoder.forward(cfg, params, rollout.tokens, rollout.attention_mask)
    P = rollout.prompt_mask.shape[1]
    trainer = losses.token_logprobs(logits[:, :-1], rollout.tokens[:, 1:])[:, P - 1 :]
    mask = np.asarray(rollout.completion_mask)
    np.testing.assert_allclose(
        np.asarray(rollout.logprobs)[mask], np.asarray(trainer)[mask], atol=1e-4
    )
