"""Train steps on a tiny decoder: accumulation, NaN skipping, loss descent, tracing, scoring."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import records

from s2d_jax.learn import losses, objectives, optimizer, steps
from s2d_jax.model import decoder

CFG = decoder.ModelConfig.preset("toy_tiny", vocab_size=48)
TEACHER_CFG = dataclasses.replace(CFG, d_model=40, head_dim=10, n_layers=1)
# eps = 1 makes Adam's first update ~ lr * g (instead of lr * sign(g)), so comparing params
# after one update compares gradients; no clipping or decay to blur it.
LINEAR_OPT = records.optimizer_config(lr=0.1, eps=1.0, weight_decay=0.0, grad_clip=0.0)
B, T = 16, 10  # two rows per fake device
# Compiling a step (mostly the decoder's backward pass) dominates the run time of this file, so
# tests share these configurations and the cached jitted steps below, compiled with XLA's backend
# optimisations off (half the compile time; the same numbers).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
GRPO = records.step_config(
    "grpo",
    LINEAR_OPT,
    records.grpo_config(aggregation="sequence", kl_coef=0.1),
    chunk_size=4,
    vocab_chunk=16,
)
FKL = records.step_config("forward_kl", LINEAR_OPT, chunk_size=4, vocab_chunk=16)


def numpy_init(cfg, seed, std):
    """Random params from NumPy: unit norm weights, normal(std) matrices. (decoder.init_params would
    compile a random kernel per parameter shape, seconds each on a busy CPU.)"""
    rng = np.random.default_rng(seed)

    def one(abstract, axes):
        if axes[-1] == "norm":
            return np.ones(abstract.shape, np.float32)
        return (rng.normal(size=abstract.shape) * std).astype(np.float32)

    return jax.tree.map(one, decoder.abstract_params(cfg), decoder.param_axes(cfg))


@functools.cache
def params_and_teacher():
    # A larger scale makes the teacher peaked, so the KLs start well above zero.
    return numpy_init(CFG, 0, 0.02), numpy_init(TEACHER_CFG, 1, 0.3)


SFT = dataclasses.replace(FKL, objective="sft")


@functools.partial(jax.jit, donate_argnames=("state",), compiler_options=FAST_COMPILE)
@chex.assert_max_traces(n=1)
def sft_step(state, batch):
    return steps.train_step(state, batch, cfg=SFT, model_cfg=CFG)


GRPO4 = dataclasses.replace(GRPO, micro_batches=4)


@functools.cache
def shardings():
    """(replicated, rows over the 8 fake devices)."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    spec = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(mesh, spec()), jax.sharding.NamedSharding(mesh, spec("data"))


@functools.cache
def jitted_step(cfg: steps.StepConfig):
    """The step of cfg, jitted once per configuration with the state donated."""
    if cfg == SFT:  # the one whose traces chex counts (its counter is per function definition)
        return sft_step
    if cfg == GRPO4:  # the public helper, with the batch sharded over the devices
        replicated, rows = shardings()
        return steps.jit_train_step(
            cfg, CFG, state_sharding=replicated, batch_sharding=rows, compiler_options=FAST_COMPILE
        )
    if cfg.needs_teacher:
        fn = functools.partial(steps.distill_step, model_cfg=CFG, teacher_cfg=TEACHER_CFG, cfg=cfg)
    else:
        fn = functools.partial(steps.train_step, cfg=cfg, model_cfg=CFG)
    return jax.jit(fn, donate_argnames=("state",), compiler_options=FAST_COMPILE)


def run_step(cfg, state, batch):
    """One update; batches carry only the keys the objective reads (one trace per step)."""
    batch = {k: batch[k] for k in cfg.batch_keys()}
    if cfg == GRPO4:  # inputs placed as the step expects them: one compiled executable
        state, batch = jax.device_put((state, batch), shardings())
    if cfg.needs_teacher:
        return jitted_step(cfg)(state, params_and_teacher()[1], batch)
    return jitted_step(cfg)(state, batch)


def make_batch(seed=0):
    """Left-padded prompts of random length, a completion of random length; one empty row."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, size=(B, T)).astype(np.int32)
    attention = np.ones((B, T), bool)
    loss_mask = np.zeros((B, T - 1), np.float32)
    for i in range(B):
        pad = rng.integers(0, 3)
        attention[i, :pad] = False
        tokens[i, :pad] = 0
        prompt_end = pad + 2
        n = rng.integers(1, T - prompt_end + 1)
        loss_mask[i, prompt_end - 1 : prompt_end - 1 + n] = 1.0
        attention[i, prompt_end + n :] = False
    loss_mask[1] = 0.0  # a row with nothing to learn
    lp = -rng.random((B, T - 1)).astype(np.float32) * 3 - 1
    return {
        "tokens": tokens,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "old_logprobs": lp,
        "ref_logprobs": lp + rng.normal(size=lp.shape).astype(np.float32) * 0.1,
        "advantages": rng.normal(size=B).astype(np.float32),
    }


@functools.partial(jax.jit, static_argnums=0)
def _init_state(opt, params):
    return steps.init_train_state(CFG, opt, params)


def fresh_state(opt=LINEAR_OPT):
    return _init_state(opt, params_and_teacher()[0])


# ----------------------------------------------------------------------------- accumulation


def test_accumulation_equals_one_batch():
    """Four micro-batches (sharded over 8 devices, through jit_train_step) give the update of
    one unsharded batch."""
    batch = make_batch(1)
    s1, m1 = run_step(GRPO, fresh_state(), batch)
    s4, m4 = run_step(GRPO4, fresh_state(), batch)
    np.testing.assert_allclose(m1["train/loss"], m4["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["train/grad_norm"], m4["train/grad_norm"], rtol=1e-4)
    moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), s1.params, fresh_state().params)
    assert max(jax.tree.leaves(moved)) > 1e-4  # the update is not trivially zero
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-8)


def test_accumulated_distillation_loss_is_the_batch_loss():
    """With micro-batches, the teacher is run on the matching rows: the accumulated forward KL
    equals the batch's token-mean KL from the two models' full logits."""
    params, teacher = params_and_teacher()
    batch = make_batch(1)
    stats = steps.score_kl(
        CFG, params, TEACHER_CFG, teacher, batch["tokens"], batch["attention_mask"], chunk_size=4
    )
    want = losses.kl_metrics(stats, batch["loss_mask"])
    _, metrics = run_step(dataclasses.replace(FKL, micro_batches=4), fresh_state(), batch)
    np.testing.assert_allclose(metrics["train/loss"], want["kl/forward"], rtol=1e-5)
    np.testing.assert_allclose(metrics["kl/reverse"], want["kl/reverse"], rtol=1e-5)
    assert metrics["kl/tokens"] == batch["loss_mask"].sum()


def test_micro_batch_weights_recover_the_batch_loss():
    """The accumulation weights (normaliser share) make micro-batch losses sum to the batch loss,
    for every aggregation (so also their gradients); checked on the loss alone, no model."""
    batch = {k: jnp.asarray(v) for k, v in make_batch(2).items()}
    rng = np.random.default_rng(0)
    batch["logprobs"] = batch["old_logprobs"] + rng.normal(size=(B, T - 1)).astype(np.float32)

    @jax.jit
    def loss_and_normaliser(b):
        out = {}
        for aggregation in losses.AGGREGATIONS:
            cfg = records.step_config(
                "grpo", grpo=records.grpo_config(aggregation=aggregation, kl_coef=0.1)
            )
            loss, _ = losses.grpo_loss(
                b["logprobs"], b["old_logprobs"], b["advantages"], b["loss_mask"],
                clip_eps=0.2, ref_logprobs=b["ref_logprobs"], kl_coef=0.1, aggregation=aggregation,
            )  # fmt: skip
            out[aggregation] = (loss, steps._normaliser(cfg, b))
        return out

    full = loss_and_normaliser(batch)
    parts = [loss_and_normaliser({k: v[i::4] for k, v in batch.items()}) for i in range(4)]
    for aggregation, (loss, total) in full.items():
        weighted = sum(p[aggregation][1] / total * p[aggregation][0] for p in parts)
        np.testing.assert_allclose(weighted, loss, rtol=1e-5, err_msg=aggregation)


# ----------------------------------------------------------------------------- non-finite skip


def test_nan_batch_is_skipped_bit_identically():
    cfg = GRPO4
    state, _ = run_step(cfg, fresh_state(), make_batch(2))  # opt_state is non-trivial now
    before = jax.device_get((state.params, state.opt_state))
    bad = make_batch(3)
    bad["advantages"][0] = np.nan
    state, metrics = run_step(cfg, state, bad)
    assert metrics["train/skipped"] == 1.0 and not np.isfinite(metrics["train/loss"])
    assert int(state.step) == 2
    after = jax.device_get((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics = run_step(cfg, state, make_batch(3))
    assert metrics["train/skipped"] == 0.0
    assert not np.array_equal(state.params["embed"], before[0]["embed"])


# ----------------------------------------------------------------------------- each objective learns


@pytest.mark.parametrize("objective", sorted(objectives.OBJECTIVES))
def test_objective_loss_decreases(objective):
    """A few steps on one batch lower the loss; each jitted step is traced exactly once."""
    known = {"grpo": GRPO, "forward_kl": dataclasses.replace(FKL, micro_batches=4)}
    cfg = known.get(objective) or dataclasses.replace(FKL, objective=objective)
    batch = make_batch(4)
    state = fresh_state()
    if objective == "sampled_reverse_kl":  # on-policy: old = current student
        batch["old_logprobs"] = np.asarray(
            steps.score_tokens(
                CFG, state.params, batch["tokens"], batch["attention_mask"], chunk_size=4
            )
        )
    state, first = run_step(cfg, state, batch)
    for _ in range(4):
        state, last = run_step(cfg, state, batch)
    drop = first["train/loss"] - last["train/loss"]
    assert drop > 0.02 * abs(first["train/loss"]), (first["train/loss"], last["train/loss"])
    assert np.isfinite(last["train/grad_norm"]) and last["train/skipped"] == 0.0
    assert int(state.step) == 5
    assert jitted_step(cfg)._cache_size() == 1  # five calls, one trace


# ----------------------------------------------------------------------------- config and state


def test_learning_rate_schedules():
    cos = records.optimizer_config(lr=1.0, schedule="cosine", warmup_steps=4, total_steps=12)
    sched = optimizer.learning_rate_schedule(cos)
    for step, want in [(0, 0.0), (2, 0.5), (4, 1.0), (8, 0.5), (12, 0.0)]:
        np.testing.assert_allclose(sched(step), want, atol=1e-6)
    const = optimizer.learning_rate_schedule(records.optimizer_config(lr=2.0, warmup_steps=2))
    np.testing.assert_allclose([const(s) for s in (0, 1, 2, 50)], [0.0, 1.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="schedule"):
        records.optimizer_config(schedule="linear")
    with pytest.raises(ValueError, match="total_steps"):
        optimizer.make_optimizer(records.optimizer_config(schedule="cosine", total_steps=0))


def test_optimizer_is_adamw_with_clipping():
    cfg = records.optimizer_config(lr=0.1, weight_decay=0.5, grad_clip=1.0)
    params = {"w": jnp.array([1.0, 3.0])}
    grads = {"w": jnp.array([30.0, 40.0])}  # norm 50: clipped to norm 1
    opt = optimizer.make_optimizer(cfg)
    updates, state = opt.update(grads, opt.init(params), params)
    g = np.array([0.6, 0.8])
    adam = g / (np.abs(g) + 1e-8)  # first step, bias-corrected: m/sqrt(v) = sign(g)
    want = -0.1 * (adam + 0.5 * np.array([1.0, 3.0]))
    np.testing.assert_allclose(updates["w"], want, rtol=1e-6)
    np.testing.assert_allclose(optimizer.learning_rate(state), 0.1)


def test_init_train_state_checks_params():
    params, teacher = params_and_teacher()
    with pytest.raises(ValueError, match="ModelConfig"):
        steps.init_train_state(CFG, LINEAR_OPT, teacher)
    state = steps.init_train_state(CFG, LINEAR_OPT, params)
    assert int(state.step) == 0 and state.params["embed"] is not params["embed"]


def test_step_config_checks():
    with pytest.raises(ValueError, match="objective"):
        records.step_config("ppo")
    with pytest.raises(ValueError, match="teacher"):
        steps.jit_train_step(records.step_config("reverse_kl"), CFG)
    with pytest.raises(ValueError, match="micro_batches"):
        records.step_config("sft", micro_batches=0)
    with pytest.raises(ValueError, match="every argument"):
        steps.jit_train_step(GRPO, CFG, state_sharding=shardings()[0])
    step = functools.partial(
        steps.train_step, cfg=records.step_config("sft", micro_batches=3), model_cfg=CFG
    )
    with pytest.raises(ValueError, match="micro_batches"):
        jax.eval_shape(step, fresh_state(), make_batch())


# ----------------------------------------------------------------------------- scoring


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_score_tokens_and_kl_match_full_logits():
    params, teacher = params_and_teacher()
    batch = make_batch(6)
    tokens, mask = batch["tokens"], batch["attention_mask"]
    lp_s = np_log_softmax(decoder.forward(CFG, params, tokens, mask))[:, :-1]
    lp_t = np_log_softmax(decoder.forward(TEACHER_CFG, teacher, tokens, mask))[:, :-1]
    idx = tokens[:, 1:, None]
    want_lp = np.take_along_axis(lp_s, idx, -1)[..., 0]
    got_lp = steps.score_tokens(CFG, params, tokens, mask, chunk_size=4)
    np.testing.assert_allclose(got_lp, want_lp, rtol=1e-5, atol=1e-5)
    # In micro-batches (rows i, i+4, ... together): the same log-probs, each in its own row.
    got_micro = steps.score_tokens(CFG, params, tokens, mask, chunk_size=4, micro_batches=4)
    np.testing.assert_allclose(got_micro, want_lp, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of micro_batches = 3"):
        steps.score_tokens(CFG, params, tokens, mask, chunk_size=4, micro_batches=3)
    stats = steps.score_kl(CFG, params, TEACHER_CFG, teacher, tokens, mask, chunk_size=4)
    p_s, p_t = np.exp(lp_s), np.exp(lp_t)
    want = {
        "forward": (p_t * (lp_t - lp_s)).sum(-1),
        "reverse": (p_s * (lp_s - lp_t)).sum(-1),
        "student_entropy": -(p_s * lp_s).sum(-1),
        "student_logprob": want_lp,
        "teacher_logprob": np.take_along_axis(lp_t, idx, -1)[..., 0],
    }
    for key, value in want.items():
        np.testing.assert_allclose(stats[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    metrics = losses.kl_metrics(stats, batch["loss_mask"])
    m = batch["loss_mask"] > 0
    np.testing.assert_allclose(metrics["kl/forward"], want["forward"][m].mean(), rtol=1e-4)


def test_grpo_step_metrics_match_loss_function():
    """The step's GRPO loss is losses.grpo_loss on the model's log-probs."""
    batch = make_batch(7)
    state = fresh_state()
    lp = steps.score_tokens(
        CFG, state.params, batch["tokens"], batch["attention_mask"], chunk_size=4
    )
    want, _ = losses.grpo_loss(
        lp, batch["old_logprobs"], batch["advantages"], batch["loss_mask"],
        clip_eps=0.2, ref_logprobs=batch["ref_logprobs"], kl_coef=0.1, aggregation="sequence",
    )  # fmt: skip
    _, metrics = run_step(GRPO, state, batch)
    np.testing.assert_allclose(metrics["train/loss"], want, rtol=1e-5)
    assert set(metrics) >= {"grpo/clip_frac", "grpo/kl", "train/lr", "train/skipped"}
