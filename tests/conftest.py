"""Test set-up shared by every test: 8 fake CPU devices, float32 matmuls, helpers."""

import os

# Must happen before jax is imported anywhere: the fake device count is read at backend start.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Parity tests compare against float32 torch; the default CPU matmul precision is already exact,
# this makes it explicit so an accelerator run of the tests is not silently looser.
jax.config.update("jax_default_matmul_precision", "highest")
# As in main.py: repeated compiles of the same step (every stage, every test) become cache loads.
_cache_root = os.environ.get("S2D_JAX_CACHE") or os.path.expanduser("~/.cache/s2d_jax")
jax.config.update("jax_compilation_cache_dir", os.path.join(_cache_root, "jax_compile"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402

# One two-step run of every stage kind (sft, grpo, forward_kl, on_policy_kl), shared by the tests
# that read a finished run (the pipeline's hand-offs, exports, the notebooks).
TOY_RUN_STAGES = ("student_sft", "teacher_sft", "teacher_grpo", "fkl", "opd")


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """(config, workdir, summaries) of the shared toy run; a test may rerun it, not change it."""
    from configs import toy_arith
    from s2d_jax.workflow import pipeline

    workdir = tmp_path_factory.mktemp("toy")
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=TOY_RUN_STAGES)
    summaries = pipeline.run(config, workdir)
    return config, workdir, summaries


def shrink_config(config, *, steps=2, new_tokens=12, keep_stages=None):
    """A real experiment config cut down to seconds: tiny models and data, `steps` per stage."""
    for role in config.models:
        if config.models[role].preset.startswith("toy"):
            config.models[role].preset = "toy_tiny"
    if config.task.name == "arith":
        config.task.arith.update(num_demos=64, num_rl=16, num_test=16)
    if keep_stages is not None:
        for name in list(config.stages):
            if name not in keep_stages:
                del config.stages[name]
        if config.export_hf not in keep_stages:
            config.export_hf = ""
        for role in ("teacher", "student"):
            if config.probe[role] not in keep_stages:
                config.probe[role] = "base"
    for stage in config.stages.values():
        stage.steps = steps
        stage.save_every = 1
        stage.batch_size = min(stage.batch_size, 4)
        stage.samples_per_prompt = min(stage.samples_per_prompt, 2)
        stage.sampling.max_new_tokens = new_tokens
        stage.optim.warmup_steps = 0
        stage.micro_batches = 1
        stage.stop.holdout = min(stage.stop.holdout, 4)  # of the 64 demos
    config.eval.update(max_problems=4, samples=2, max_new_tokens=new_tokens, batch_size=8)
    config.probe.update(prompts=4, samples=1)
    config.probe.sampling.max_new_tokens = new_tokens
    config.grader_workers = 1
    return config


def fake_grader(reward_of):
    """A stand-in for `rewards.Grader` (monkeypatch it in): reward_of(completion, reference) -> 0
    or 1, no worker processes, so pipeline tests can choose what a batch is rewarded for."""
    import numpy as np

    class FakeGrader:
        def __init__(self, workers, timeout_s):
            del workers, timeout_s

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def grade(self, texts, references, *, answer_style):
            assert answer_style == "boxed"  # the toy boxes its answers
            pairs = zip(texts, references, strict=True)
            rewards_B = np.array([reward_of(t, r) for t, r in pairs], np.float32)
            return rewards_B, {"reward/mean": float(rewards_B.mean()), "reward/no_answer": 0.0}

    return FakeGrader
