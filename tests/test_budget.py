"""Each stage's and each arm's budget: counted from what the stages wrote, checked by recounting."""

import jax
import numpy as np

from s2d_jax.workflow import budget, metrics, pipeline, rollout_cache


def test_a_stage_budget_recounts_its_metrics_and_rollouts(toy_run):
    config, workdir, summaries = toy_run
    fkl = summaries["fkl"]
    rows = metrics.read_metrics(workdir / "fkl")
    assert fkl["budget/trained_tokens"] == sum(r["kl/tokens"] for r in rows)
    assert fkl["budget/teacher_scored_tokens"] == fkl["budget/trained_tokens"]
    cache_dir = workdir / "fkl" / "teacher_rollouts"
    cache = rollout_cache.open_cache(cache_dir, len(list(cache_dir.glob("chunk_*.npz"))))
    _, completions = cache.rows(np.arange(cache.num_rows))
    assert fkl["budget/teacher_tokens"] == sum(len(c) for c in completions) > 0
    grpo = summaries["teacher_grpo"]
    grpo_rows = metrics.read_metrics(workdir / "teacher_grpo")
    assert grpo["budget/policy_tokens"] == sum(r["rollout/tokens"] for r in grpo_rows) > 0
    assert grpo["budget/teacher_tokens"] == grpo["budget/teacher_scored_tokens"] == 0


def test_flops_follow_the_parameter_counts(toy_run):
    """6N per trained token, 2N per generated or scored token; N counted from the exported
    checkpoint's arrays for the student."""
    from s2d_jax.model import decoder, hf_io

    config, workdir, summaries = toy_run
    _, params = hf_io.load_hf(workdir / "export_hf")  # the opd student
    n_student = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    teacher_cfg = decoder.ModelConfig.preset(
        config.models.teacher.preset, vocab_size=params["embed"].shape[0]
    )
    n_teacher = budget.param_count(teacher_cfg)
    b = summaries["opd"]
    want = (6 * n_student * b["budget/trained_tokens"] + 2 * n_student * b["budget/policy_tokens"]
            + 2 * n_teacher * (b["budget/teacher_tokens"] + b["budget/teacher_scored_tokens"]))  # fmt: skip
    assert b["budget/flops"] == want


def test_an_arm_counts_every_stage_it_reads_once(toy_run):
    config, _, summaries = toy_run
    stage_cfgs = pipeline.validate(config).stages
    totals = budget.arm_totals(stage_cfgs, summaries)
    chain = ("student_sft", "teacher_sft", "teacher_grpo", "fkl", "opd")
    for key, _ in budget.KEYS:
        assert totals["opd"][key] == sum(summaries[s].get(key, 0.0) for s in chain)
    assert (
        totals["teacher_grpo"]["budget/policy_tokens"]
        == (summaries["teacher_grpo"]["budget/policy_tokens"])
    )
    assert "## Budget of each arm" in (toy_run[1] / "report.md").read_text()
