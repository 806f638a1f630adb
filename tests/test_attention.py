"""Blocked (online-softmax) attention against the dense reference, `decoder.attention`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2d_jax.model import attention, decoder

# Left padding on row 0, right padding on row 1, none on row 2: the decoder's masks.
LENGTHS = ((3, 13), (0, 9), (0, 13))  # (first real token, end of real tokens) per row


def _masks(T):
    return np.stack([(np.arange(T) >= a) & (np.arange(T) < b) for a, b in LENGTHS])


def _qkv(T, H=4, K=2, Dh=8):
    q, k, v = jax.random.normal(jax.random.key(0), (3, len(LENGTHS), T, H, Dh))
    return q, k[:, :, :K], v[:, :, :K]


def _dense(q, k, v, mask):
    return decoder.attention(q, k, v, decoder._causal_visible(mask))


@pytest.mark.parametrize("block", [4, 5, 13, 16])  # 5, 16: T is not a multiple (padded)
def test_blocked_matches_dense_values_and_gradients(block):
    T = 13
    q, k, v = _qkv(T)
    mask = jnp.asarray(_masks(T))
    # Only real queries count: rows that see no key are meaningless in both paths.
    weights = jax.random.normal(jax.random.key(1), q.shape) * mask[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    blocked = lambda q, k, v: attention.blocked_attention(q, k, v, mask, block=block)
    dense = lambda q, k, v: _dense(q, k, v, mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(blocked(q, k, v)[real], dense(q, k, v)[real], atol=1e-5)
    grads_b = jax.grad(lambda *a: loss(blocked, *a), argnums=(0, 1, 2))(q, k, v)
    grads_d = jax.grad(lambda *a: loss(dense, *a), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads_b, grads_d, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.isfinite(blocked(q, k, v)).all()


def test_decoder_forward_and_gradients_match_with_blocked_attention():
    """The whole decoder (GQA, q/k norms, padding) with attention_block set vs the dense path."""
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=50)
    params = decoder.init_params(cfg, jax.random.key(0), std=0.2)
    T = 13
    tokens = jax.random.randint(jax.random.key(2), (len(LENGTHS), T), 0, cfg.vocab_size)
    mask = jnp.asarray(_masks(T))
    blocked_cfg = dataclasses.replace(cfg, attention_block=4)
    real = np.asarray(mask)

    def loss(cfg, params):
        logits = decoder.forward(cfg, params, tokens, mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * mask)

    want = decoder.forward(cfg, params, tokens, mask)
    got = decoder.forward(blocked_cfg, params, tokens, mask)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
    grads_d = jax.grad(loss, argnums=1)(cfg, params)
    grads_b = jax.grad(loss, argnums=1)(blocked_cfg, params)
    jax.tree.map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5), grads_b, grads_d
    )


def test_negative_attention_block_is_refused():
    with pytest.raises(ValueError, match="attention_block"):
        decoder.ModelConfig.preset("toy_tiny", attention_block=-1)
