"""Mixed precision: float32 masters, AdamW state and hyperparameters under bfloat16 compute; the
update guard; trained roles refused in bfloat16; frozen copies in the compute dtype."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import records

from configs import common, paper
from s2d_jax.learn import optimizer, steps
from s2d_jax.model import cached_forward, decoder
from s2d_jax.rollout import sampler
from s2d_jax.workflow import metrics, pipeline
from s2d_jax.workflow.models import parse_models

PAPER_LR = records.optimizer_config(lr=1e-6)  # the paper's lr, constant, AdamW (0.9, 0.999)


def sft_batch(cfg, B=4, T=16, seed=1):
    tokens = jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)
    return {
        "tokens": tokens,
        "attention_mask": jnp.ones((B, T), bool),
        "loss_mask": jnp.ones((B, T - 1), jnp.float32),
    }


def run_sft(cfg, params, num_steps, opt=PAPER_LR, batch=None):
    state = steps.init_train_state(cfg, opt, params)
    step = steps.jit_train_step(records.step_config("sft", opt), cfg)
    rows = []
    for _ in range(num_steps):
        state, m = step(state, batch if batch is not None else sft_batch(cfg))
        rows.append(jax.device_get(m))
    return state, rows


def test_optimizer_hyperparameters_and_moments_are_float32_for_bfloat16_params():
    params = {"w": jnp.ones((3,), jnp.bfloat16)}
    state = optimizer.make_optimizer(PAPER_LR).init(params)
    hyper = state[1].hyperparams
    assert {k: v.dtype for k, v in hyper.items()} == {k: jnp.float32 for k in hyper}
    assert float(hyper["b2"]) == np.float32(0.999)  # bfloat16 would round it to exactly 1.0
    assert state[1].inner_state[0].mu["w"].dtype == jnp.float32


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_bfloat16_compute_takes_lr_1e6_steps(param_dtype):
    """The reproduction of the bfloat16 NaN: three SFT steps at lr 1e-6 in bfloat16 compute leave
    every parameter finite and move them (the train state holds float32 masters, whatever dtype
    the params came in)."""
    cfg = decoder.ModelConfig.preset("toy_tiny", param_dtype=param_dtype, compute_dtype="bfloat16")
    params = decoder.init_params(cfg, jax.random.key(0))
    state, rows = run_sft(cfg, params, 3)
    assert [r["train/skipped"] for r in rows] == [0.0, 0.0, 0.0]
    assert all(np.isfinite(r["train/loss"]) and r["train/update_norm"] > 0 for r in rows)
    before = jax.tree.leaves(jax.device_get(params))
    after = jax.tree.leaves(jax.device_get(state.params))
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in after)
    changed = sum(
        int((a != b.astype(np.float32)).sum()) for a, b in zip(after, before, strict=True)
    )
    total = sum(a.size for a in after)
    print(f"{param_dtype} params: {changed / total:.1%} of weights changed after 3 steps")
    assert changed / total > 0.95
    # Every RMSNorm weight (1.0, where a bfloat16 ulp is 2^-7) moves.
    for name in ("attn_norm", "mlp_norm", "q_norm", "k_norm"):
        assert (np.asarray(state.params["layers"][name]) != 1.0).all(), name


def test_grpo_step_in_bfloat16_compute_moves_float32_masters():
    """The GRPO objective (clipped surrogate + k3 KL) at the paper's lr in the paper's dtypes."""
    cfg = decoder.ModelConfig.preset("toy_tiny", compute_dtype="bfloat16")
    params = decoder.init_params(cfg, jax.random.key(0))
    batch = sft_batch(cfg, B=8)
    old_lp = steps.score_tokens(
        cfg, params, batch["tokens"], batch["attention_mask"], chunk_size=512
    )
    batch |= {
        "old_logprobs": old_lp,
        "ref_logprobs": old_lp,
        "advantages": jnp.array([1.0, -1.0] * 4),
    }
    opt = PAPER_LR
    step = steps.jit_train_step(
        records.step_config("grpo", opt, records.grpo_config(kl_coef=5e-4)), cfg
    )
    state = steps.init_train_state(cfg, opt, params)
    for _ in range(3):
        state, m = step(state, batch)
        assert m["train/skipped"] == 0.0 and m["train/update_norm"] > 0
        assert np.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_update_norm_is_the_applied_change_and_param_norm_the_new_norm():
    cfg = decoder.ModelConfig.preset("toy_tiny")
    params = decoder.init_params(cfg, jax.random.key(0))
    old = jax.device_get(params)
    state, (row,) = run_sft(cfg, params, 1, opt=records.optimizer_config(lr=1e-3))
    new = jax.device_get(state.params)
    diff = [
        a.astype(np.float64) - b
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)
    ]
    want = np.sqrt(sum((d**2).sum() for d in diff))
    np.testing.assert_allclose(row["train/update_norm"], want, rtol=1e-4)
    want_norm = np.sqrt(sum((a.astype(np.float64) ** 2).sum() for a in jax.tree.leaves(new)))
    np.testing.assert_allclose(row["train/param_norm"], want_norm, rtol=1e-5)


def _poison_first_moment(state):
    """A NaN in one AdamW first moment: loss and gradient stay finite, the update does not."""
    adam = state.opt_state[1].inner_state[0]
    mu = dict(adam.mu)
    mu["final_norm"] = mu["final_norm"].at[0].set(jnp.nan)
    inner = (adam._replace(mu=mu), *state.opt_state[1].inner_state[1:])
    return state.replace(
        opt_state=(state.opt_state[0], state.opt_state[1]._replace(inner_state=inner))
    )


@pytest.mark.parametrize("fault", ["nan_moment", "overflowing_lr"])
def test_non_finite_update_is_skipped_with_state_untouched(fault):
    cfg = decoder.ModelConfig.preset("toy_tiny")
    params = decoder.init_params(cfg, jax.random.key(0))
    opt = records.optimizer_config(lr=1e39 if fault == "overflowing_lr" else 1e-3)  # inf in float32
    state = steps.init_train_state(cfg, opt, params)
    if fault == "nan_moment":
        state = _poison_first_moment(state)
    before = jax.device_get((state.params, state.opt_state))
    step = steps.jit_train_step(records.step_config("sft", opt), cfg)
    state, m = step(state, sft_batch(cfg))
    assert np.isfinite(m["train/loss"]) and np.isfinite(m["train/grad_norm"])
    assert m["train/skipped"] == 1.0 and m["train/nonfinite_update"] == 1.0
    assert m["train/update_norm"] == 0.0 and int(state.step) == 1
    after = jax.device_get((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FloatingPointError, match="step 1: the update made parameters"):
        metrics.check_finite(1, jax.device_get(m))


def test_trained_role_in_bfloat16_is_a_config_error_frozen_role_is_not():
    config = paper.get_config("arm=full,pair=tiny")
    config.models.student.dtype = "bfloat16"
    with pytest.raises(
        ValueError, match=r"models\.student\.dtype = 'bfloat16'.*stage 'fkl' trains"
    ):
        pipeline.validate(config)
    raw = paper.get_config("arm=raw,pair=tiny")  # the raw teacher is never trained
    raw.models.teacher.dtype = "bfloat16"
    pipeline.validate(raw)


def test_every_paper_pair_trains_float32_masters_in_bfloat16_compute():
    for pair in paper.PAIRS:
        for arm in paper.ARMS:
            config = paper.get_config(f"arm={arm},pair={pair}")
            for role in config.models.values():
                assert (role.dtype, role.compute_dtype) == ("float32", "bfloat16"), (arm, pair)


def test_frozen_teacher_is_held_in_compute_dtype(tmp_path):
    config = paper.get_config("arm=raw,pair=tiny")
    run_cfg = pipeline.validate(config)
    from s2d_jax.data.task import Task
    from s2d_jax.grading import rewards
    from s2d_jax.workflow import loading, random_models
    from s2d_jax.workflow.context import RunContext

    models = random_models.materialize(run_cfg.models, tmp_path, seed=0)
    task = Task(run_cfg.task, models["student"].hf_path)
    ctx = RunContext(tmp_path, 0, "skip", task, models, run_cfg.eval, rewards.Grader, None)
    teacher = loading.load_params(ctx, "teacher", "base", frozen=True)
    frozen_cfg, frozen = teacher.cfg, teacher.params
    trained = loading.load_params(ctx, "teacher", "base")
    cfg, masters = trained.cfg, trained.params
    assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(masters)} == {jnp.dtype(jnp.float32)}
    assert frozen_cfg == dataclasses.replace(cfg, param_dtype="bfloat16")
    # The forward pass casts every weight to the compute dtype: both copies give equal logits.
    tokens = jnp.arange(12, dtype=jnp.int32)[None]
    mask = jnp.ones_like(tokens, bool)
    np.testing.assert_array_equal(
        decoder.forward(frozen_cfg, frozen, tokens, mask),
        decoder.forward(cfg, masters, tokens, mask),
    )


def test_sampler_reads_compute_dtype_weights_and_matches_bfloat16_storage():
    cfg32 = decoder.ModelConfig.preset("toy_tiny", compute_dtype="bfloat16")
    params = decoder.init_params(cfg32, jax.random.key(2))
    sampling = cached_forward.unstack_layers(params, dtype=cfg32.compute_dtype)
    assert {x.dtype for x in jax.tree.leaves(sampling)} == {jnp.dtype(jnp.bfloat16)}
    cfg16 = dataclasses.replace(cfg32, param_dtype="bfloat16")
    params16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    kwargs = dict(max_new_tokens=6, temperature=1.0, eos_id=1, pad_id=0, seed=3, num_samples=2)
    a = sampler.generate(cfg32, params, [[5, 6, 7], [8, 9]], **kwargs)
    b = sampler.generate(cfg16, params16, [[5, 6, 7], [8, 9]], **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)


def test_model_spec_random_weights_needs_a_preset_and_no_path():
    config = common.ConfigDict(dict(models=dict(student=common.model(random_weights=True))))
    with pytest.raises(ValueError, match="random_weights writes a random checkpoint of `preset`"):
        parse_models(config)
