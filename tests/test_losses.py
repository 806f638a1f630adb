"""Losses against plain NumPy formulas (float64), and the chunked forms against the unchunked ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2d_jax.learn import kl_chunked, losses

SHAPES = [(1, 1, 3), (3, 4, 50)]  # (B, T, V)
DTYPES = [jnp.float32, jnp.bfloat16]


# ----------------------------------------------------------------------------- NumPy references


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_masked_mean(x, mask):
    mask = np.asarray(mask, np.float64)
    return (x * mask).sum() / max(mask.sum(), 1.0)


def np_grpo(lp, old, adv, mask, ref, clip_lo, clip_hi, kl_coef, estimator, aggregation):
    lp, old, adv = (np.asarray(a, np.float64) for a in (lp, old, adv))
    mask = np.asarray(mask, bool)
    ratio = np.exp(np.where(mask, lp - old, 0.0))
    A = adv[:, None]
    per_token = -np.minimum(ratio * A, np.clip(ratio, 1 - clip_lo, 1 + clip_hi) * A)
    kl = None
    if ref is not None:
        d = np.where(mask, np.asarray(ref, np.float64) - lp, 0.0)
        kl = {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[estimator]
        per_token = per_token + kl_coef * kl
    m = mask.astype(np.float64)
    if aggregation == "token":
        loss = (per_token * m).sum() / max(m.sum(), 1)
    elif aggregation == "sequence":
        n = m.sum(1)
        rows = [(per_token[i] * m[i]).sum() / n[i] for i in range(len(n)) if n[i] > 0]
        loss = np.mean(rows) if rows else 0.0
    else:
        loss = (per_token * m).sum() / (m.shape[0] * m.shape[1])
    clip_high = mask & (A > 0) & (ratio > 1 + clip_hi)
    clip_low = mask & (A < 0) & (ratio < 1 - clip_lo)
    return loss, kl, clip_high, clip_low


def random_inputs(shape, dtype, seed=0, zero_row=True):
    """Student/teacher logits [B, T, V] (as dtype), targets [B, T], mask [B, T] with an empty row."""
    B, T, V = shape
    rng = np.random.default_rng(seed)
    s = jnp.asarray(rng.normal(size=shape) * 2, dtype)
    t = jnp.asarray(rng.normal(size=shape) * 2, dtype)
    targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
    mask = rng.random((B, T)) < 0.7
    mask[0, 0] = True
    if zero_row and B > 1:
        mask[1] = False
    return s, t, targets, jnp.asarray(mask)


def as64(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


# ----------------------------------------------------------------------------- token log-probs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_token_logprobs(shape, dtype):
    s, _, targets, _ = random_inputs(shape, dtype)
    got = losses.token_logprobs(s, targets)
    assert got.dtype == jnp.float32 and got.shape == shape[:2]
    want = np.take_along_axis(np_log_softmax(as64(s)), np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- group advantages


@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages(normalize_std):
    rng = np.random.default_rng(1)
    rewards = rng.integers(0, 2, size=(4, 8)).astype(np.float64)
    rewards[0] = 1.0  # an all-equal group
    rewards[1] = 0.1  # all equal, and not exactly representable
    got = losses.group_advantages(jnp.asarray(rewards.reshape(-1)), 8, normalize_std)
    centred = rewards - rewards.mean(1, keepdims=True)
    want = centred / (rewards.std(1, ddof=1, keepdims=True) + 1e-6) if normalize_std else centred
    want[:2] = 0.0
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[:16] == 0.0)


def test_group_advantages_rejects_bad_group_size():
    with pytest.raises(ValueError, match="group_size"):
        losses.group_advantages(jnp.zeros(10), 4)


# ----------------------------------------------------------------------------- GRPO


def grpo_inputs(B=4, T=6, seed=2, spread=0.4):
    rng = np.random.default_rng(seed)
    old = rng.normal(size=(B, T)) - 2
    lp = old + rng.normal(size=(B, T)) * spread
    ref = old + rng.normal(size=(B, T)) * spread
    adv = rng.normal(size=B)
    mask = rng.random((B, T)) < 0.75
    mask[0, 0] = True
    mask[2] = False  # a sequence with no valid token
    lp[~mask] = np.inf  # garbage off-mask must not leak into the loss or its gradient
    return lp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
@pytest.mark.parametrize("clip_high,dtype", [(None, jnp.float32), (0.28, jnp.bfloat16)])
def test_grpo_loss_matches_numpy(aggregation, clip_high, dtype):
    lp, old, ref, adv, mask = grpo_inputs()
    args = [jnp.asarray(x, dtype) for x in (lp, old, adv, ref)]
    # The reference sees the same rounded inputs as the code under test.
    lp64, old64, adv64, ref64 = (as64(x) for x in args)
    for estimator in losses.KL_ESTIMATORS:
        loss, metrics = losses.grpo_loss(
            *args[:3],
            jnp.asarray(mask),
            clip_eps=0.2,
            clip_eps_high=clip_high,
            ref_logprobs=args[3],
            kl_coef=0.1,
            kl_estimator=estimator,
            aggregation=aggregation,
        )
        want, kl, clip_hi, clip_lo = np_grpo(
            lp64, old64, adv64, mask, ref64, 0.2, clip_high or 0.2, 0.1, estimator, aggregation
        )
        np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6, err_msg=estimator)
        np.testing.assert_allclose(
            metrics["grpo/kl"], np_masked_mean(kl, mask), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(metrics["grpo/clip_frac_high"], np_masked_mean(clip_hi, mask))
        np.testing.assert_allclose(metrics["grpo/clip_frac_low"], np_masked_mean(clip_lo, mask))


def test_grpo_gradient_ignores_garbage_off_mask():
    lp, old, ref, adv, mask = grpo_inputs()  # lp is +inf off-mask
    fn = lambda x: losses.grpo_loss(
        x, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), clip_eps=0.2,
        ref_logprobs=jnp.asarray(ref), kl_coef=0.1,
    )[0]  # fmt: skip
    grad = np.asarray(jax.jit(jax.grad(fn))(jnp.asarray(lp)))
    assert np.isfinite(grad).all() and np.all(grad[~mask] == 0)


@pytest.mark.parametrize("aggregation", losses.AGGREGATIONS)
def test_grpo_ratio_one_is_minus_mean_advantage(aggregation):
    _, old, _, adv, mask = grpo_inputs()
    loss, _ = losses.grpo_loss(
        jnp.asarray(old), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), clip_eps=0.2,
        aggregation=aggregation,
    )  # fmt: skip
    n = mask.sum(1)
    if aggregation == "token":  # each sequence's advantage weighted by its valid tokens
        want = -(adv * n).sum() / n.sum()
    elif aggregation == "sequence":  # plain mean over the sequences that have tokens
        want = -adv[n > 0].mean()
    else:
        want = -(adv * n).sum() / mask.size
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_grpo_clipping_region():
    """Gradient is zero exactly where the clipped branch is the smaller one."""
    ratios = np.array([0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0])
    B = 2
    old = np.zeros((B, len(ratios)))
    lp = np.log(np.broadcast_to(ratios, old.shape))
    adv = np.array([1.5, -0.5])
    mask = np.ones_like(old, bool)
    grad = jax.grad(lambda x: losses.grpo_loss(x, jnp.asarray(old), jnp.asarray(adv),
                                               jnp.asarray(mask), clip_eps=0.2)[0])(jnp.asarray(lp))  # fmt: skip
    clipped = np.stack([ratios > 1.2, ratios < 0.8])  # A > 0 clips above, A < 0 below
    n = mask.sum()
    want = np.where(clipped, 0.0, -adv[:, None] * ratios / n)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)
    _, metrics = losses.grpo_loss(
        jnp.asarray(lp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), clip_eps=0.2
    )
    np.testing.assert_allclose(metrics["grpo/clip_frac"], clipped.mean(), rtol=1e-6)


def test_k3_zero_iff_equal():
    rng = np.random.default_rng(3)
    lp = jnp.asarray(rng.normal(size=(3, 5)))
    np.testing.assert_array_equal(losses.kl_penalty(lp, lp, "k3"), 0.0)
    other = lp + jnp.asarray(rng.normal(size=(3, 5)))
    assert np.all(np.asarray(losses.kl_penalty(lp, other, "k3")) > 0)
    with pytest.raises(ValueError, match="kl_estimator"):
        losses.kl_penalty(lp, lp, "k4")


def test_grpo_rejects_kl_without_reference():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="ref_logprobs"):
        losses.grpo_loss(x, x, jnp.zeros(1), x > -1, clip_eps=0.2, kl_coef=0.1)


# ----------------------------------------------------------------------------- full-vocabulary KLs


def np_kl_reference(s, t, targets, mask):
    lp_s, lp_t = np_log_softmax(s), np_log_softmax(t)
    p_s, p_t = np.exp(lp_s), np.exp(lp_t)
    fkl = (p_t * (lp_t - lp_s)).sum(-1)
    rkl = (p_s * (lp_s - lp_t)).sum(-1)
    ent = -(p_s * lp_s).sum(-1)
    idx = np.asarray(targets)[..., None]
    log_ratio = (np.take_along_axis(lp_t, idx, -1) - np.take_along_axis(lp_s, idx, -1))[..., 0]
    m = np.asarray(mask, bool)
    count = max(m.sum(), 1)
    grads = {
        "forward": (p_s - p_t) * m[..., None] / count,
        "reverse": p_s * (lp_s - lp_t - rkl[..., None]) * m[..., None] / count,
    }
    lr = log_ratio[m]
    metrics = {
        "kl/forward": np_masked_mean(fkl, m),
        "kl/reverse": np_masked_mean(rkl, m),
        "kl/student_entropy": np_masked_mean(ent, m),
        "kl/logratio_mean": lr.mean() if lr.size else 0.0,
        "kl/logratio_var": lr.var() if lr.size else 0.0,
    }
    return metrics, grads


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_losses_match_numpy(shape, dtype, direction):
    s, t, targets, mask = random_inputs(shape, dtype)
    fn = losses.forward_kl_loss if direction == "forward" else losses.reverse_kl_loss
    vg = jax.value_and_grad(lambda x: fn(x, t, mask, targets), has_aux=True)
    (loss, metrics), grad = jax.jit(vg)(s)
    want, want_grads = np_kl_reference(as64(s), as64(t), targets, mask)
    np.testing.assert_allclose(loss, want[f"kl/{direction}"], rtol=1e-5, atol=1e-6)
    for key, value in want.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    # The forward-KL gradient is (softmax(s) - softmax(t)) * mask / count per token.
    tol = 1e-4 if dtype == jnp.float32 else 8e-3  # the gradient is rounded to the input's dtype
    np.testing.assert_allclose(as64(grad), want_grads[direction], rtol=tol, atol=1e-6)
    assert grad.dtype == s.dtype


def test_kl_empty_mask_is_zero_and_finite():
    s, t, targets, _ = random_inputs((2, 3, 5), jnp.float32)
    mask = jnp.zeros((2, 3), bool)
    for fn in (losses.forward_kl_loss, losses.reverse_kl_loss):
        vg = jax.value_and_grad(lambda x: fn(x, t, mask, targets), has_aux=True)  # noqa: B023
        (loss, _), grad = jax.jit(vg)(s)
        assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_teacher_gets_no_gradient():
    s, t, _, mask = random_inputs((2, 3, 5), jnp.float32)
    for fn in (losses.forward_kl_loss, losses.reverse_kl_loss):
        grad_t = jax.grad(lambda x: fn(s, x, mask)[0])(t)  # noqa: B023
        assert np.all(np.asarray(grad_t) == 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampled_reverse_kl_matches_numpy(dtype):
    lp, old, teacher, _, mask = grpo_inputs(seed=5)
    args = tuple(jnp.asarray(x, dtype) for x in (lp, old, teacher))
    (loss, metrics), grad = jax.value_and_grad(
        lambda x: losses.sampled_reverse_kl_loss(x, *args[1:], jnp.asarray(mask)), has_aux=True
    )(args[0])
    lp64, old64, t64 = (as64(x) for x in args)
    adv = np.where(mask, t64 - lp64, 0.0)
    ratio = np.exp(np.where(mask, lp64 - old64, 0.0))
    count = mask.sum()
    np.testing.assert_allclose(loss, -(ratio * adv * mask).sum() / count, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl/reverse_sampled"], -adv[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl/logratio_var"], adv[mask].var(), rtol=1e-4)
    # d/dlp of -ratio * sg(A): -ratio * A / count (the advantage itself is not differentiated).
    np.testing.assert_allclose(as64(grad), -ratio * adv * mask / count, rtol=2e-2, atol=1e-6)


def test_sampled_reverse_kl_on_policy_gradient():
    lp, _, teacher, _, mask = grpo_inputs(seed=6)
    lp = np.where(mask, lp, 0.0)
    grad = jax.grad(
        lambda x: losses.sampled_reverse_kl_loss(x, jnp.asarray(lp), jnp.asarray(teacher),
                                                 jnp.asarray(mask))[0]
    )(jnp.asarray(lp))  # fmt: skip
    want = -np.where(mask, teacher - lp, 0.0) / mask.sum()
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_nll_loss():
    lp, _, _, _, mask = grpo_inputs(seed=7)
    loss, _ = losses.nll_loss(jnp.asarray(lp), jnp.asarray(mask))
    np.testing.assert_allclose(loss, -lp[mask].mean(), rtol=1e-6)


# ----------------------------------------------------------------------------- chunked == unchunked


def hidden_inputs(B, T, D, DT, V, dtype, seed=0):
    rng = np.random.default_rng(seed)
    h_s = jnp.asarray(rng.normal(size=(B, T, D)), dtype)
    w_s = jnp.asarray(rng.normal(size=(D, V)) / np.sqrt(D) * 3, dtype)
    h_t = jnp.asarray(rng.normal(size=(B, T, DT)), dtype)
    w_t = jnp.asarray(rng.normal(size=(DT, V)) / np.sqrt(DT) * 3, dtype)
    targets = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
    mask = jnp.asarray(rng.random((B, T)) < 0.7).at[-1].set(False)
    return h_s, w_s, h_t, w_t, targets, mask


def logits(h, w):
    return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)


@pytest.mark.parametrize(
    "direction,dtype,chunk_size,vocab_chunk",
    [
        ("forward", jnp.float32, 4, 8),  # 3 time chunks (last one padded), 5 vocabulary slices
        ("reverse", jnp.float32, 3, 10),
        ("forward", jnp.bfloat16, 64, None),  # one chunk, no slicing
        ("reverse", jnp.bfloat16, 5, 3),  # 40 has no divisor near 3: falls back to one slice
    ],
)
def test_chunked_kl_equals_unchunked(direction, dtype, chunk_size, vocab_chunk):
    h_s, w_s, h_t, w_t, targets, mask = hidden_inputs(2, 11, 6, 5, 40, dtype)
    chunked = getattr(kl_chunked, f"{direction}_kl_loss_chunked")
    plain = getattr(losses, f"{direction}_kl_loss")

    def f_chunked(h, w):
        return chunked(
            h, w, h_t, w_t, mask, targets, chunk_size=chunk_size, vocab_chunk=vocab_chunk
        )

    def f_plain(h, w):
        return plain(logits(h, w), logits(h_t, w_t), mask, targets)

    (loss_c, m_c), g_c = jax.jit(jax.value_and_grad(f_chunked, (0, 1), has_aux=True))(h_s, w_s)
    (loss_p, m_p), g_p = jax.jit(jax.value_and_grad(f_plain, (0, 1), has_aux=True))(h_s, w_s)
    np.testing.assert_allclose(loss_c, loss_p, rtol=1e-5, atol=1e-6)
    for key in m_p:
        np.testing.assert_allclose(m_c[key], m_p[key], rtol=1e-5, atol=1e-6, err_msg=key)
    tol = 1e-5 if dtype == jnp.float32 else 1e-2  # bfloat16 gradients are rounded on output
    for a, b in zip(g_c, g_p, strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(as64(a), as64(b), rtol=tol, atol=tol)
    g_teacher = jax.jit(
        jax.grad(
            lambda ht, wt: chunked(
                h_s, w_s, ht, wt, mask, chunk_size=chunk_size, vocab_chunk=vocab_chunk
            )[0],
            (0, 1),
        )
    )(h_t, w_t)
    assert all(np.all(np.asarray(g) == 0) for g in g_teacher)


@pytest.mark.parametrize("chunk_size,vocab_chunk", [(4, 8), (16, None)])
def test_chunked_token_logprobs_equals_unchunked(chunk_size, vocab_chunk):
    h_s, w_s, _, _, targets, mask = hidden_inputs(3, 10, 6, 5, 40, jnp.float32, seed=1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=targets.shape)) * mask

    def f_chunked(h, w):
        lp = kl_chunked.token_logprobs_chunked(
            h, w, targets, chunk_size=chunk_size, vocab_chunk=vocab_chunk
        )
        return jnp.sum(lp * weights), lp

    def f_plain(h, w):
        lp = losses.token_logprobs(logits(h, w), targets)
        return jnp.sum(lp * weights), lp

    (_, lp_c), g_c = jax.jit(jax.value_and_grad(f_chunked, (0, 1), has_aux=True))(h_s, w_s)
    (_, lp_p), g_p = jax.jit(jax.value_and_grad(f_plain, (0, 1), has_aux=True))(h_s, w_s)
    np.testing.assert_allclose(lp_c, lp_p, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_c, g_p, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_stats_without_gradient():
    h_s, w_s, h_t, w_t, targets, _ = hidden_inputs(2, 7, 6, 5, 40, jnp.float32, seed=3)
    got = jax.jit(kl_chunked.kl_token_stats_chunked, static_argnames=("chunk_size", "vocab_chunk"))(
        h_s, w_s, h_t, w_t, targets, chunk_size=3, vocab_chunk=0
    )
    want = jax.jit(losses.kl_token_stats)(logits(h_s, w_s), logits(h_t, w_t), targets)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="chunk_size"):
        kl_chunked.token_logprobs_chunked(h_s, w_s, targets, chunk_size=0, vocab_chunk=0)
