"""Condition C2 on the probe set (workflow/probe.py): which teacher each boundary is measured
against, the figures against a NumPy reference on full logits, and the report of a toy run."""

import json
import types

import jax
import numpy as np
import pytest
from conftest import shrink_config

from configs import toy_arith
from s2d_jax.model import decoder
from s2d_jax.workflow import batches, pipeline, probe
from s2d_jax.workflow.stages import Policy


def test_each_student_stage_is_measured_against_its_arms_teacher():
    run_cfg = pipeline.validate(toy_arith.get_config())
    bounds = probe.boundaries(run_cfg.probe, run_cfg.stages)
    teacher_of = {stage: teacher for stage, (_, _, teacher) in bounds.items()}
    assert teacher_of == {
        "student_sft": "teacher_sft",  # no teacher of its own: the probe's
        "direct_grpo": "teacher_sft",
        "raw_fkl": "teacher_sft",
        "raw_opd": "teacher_sft",
        "fkl": "teacher_grpo",
        "opd": "teacher_grpo",
        "opd_no_fkl": "teacher_grpo",
        "fkl_1h": "teacher_grpo_1h",
        "opd_1h": "teacher_grpo_1h",
        "stage3": "teacher_grpo_1h",  # the teacher of the bridge it starts from
    }
    assert bounds["stage3"][:2] == ("opd_1h", "stage3")
    assert bounds["student_sft"][:2] == ("base", "student_sft")


def _log_softmax(logits):
    logits = logits - logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _reference(student, teacher, rows):
    """KL(T||S) on the teacher rows, KL(S||T) and Var log(pT/pS) on the student rows, from the
    training forward's full logits, summed in float64 NumPy."""
    out = {}
    for role, batch in rows.items():
        tokens, mask = batch["tokens"], batch["attention_mask"]
        log_s = _log_softmax(
            np.asarray(decoder.forward(student.cfg, student.params, tokens, mask), np.float64)[
                :, :-1
            ]
        )
        log_t = _log_softmax(
            np.asarray(decoder.forward(teacher.cfg, teacher.params, tokens, mask), np.float64)[
                :, :-1
            ]
        )
        keep = batch["loss_mask"] > 0
        if role == "teacher":
            out["kl_ts"] = (np.exp(log_t) * (log_t - log_s)).sum(-1)[keep].mean()
        else:
            out["kl_st"] = (np.exp(log_s) * (log_s - log_t)).sum(-1)[keep].mean()
            y = tokens[:, 1:, None]
            ratio = (
                np.take_along_axis(log_t, y, -1)[..., 0] - np.take_along_axis(log_s, y, -1)[..., 0]
            )
            out["logratio_var"] = ratio[keep].var()
    return out


def test_pair_stats_match_a_numpy_reference_on_full_logits():
    rng = np.random.default_rng(0)
    student_cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=40)
    teacher_cfg = decoder.ModelConfig.preset("toy_student", vocab_size=40)
    student = Policy(student_cfg, decoder.init_params(student_cfg, jax.random.key(1), std=0.3))
    teacher = Policy(teacher_cfg, decoder.init_params(teacher_cfg, jax.random.key(2), std=0.3))

    def rows_of(n):
        prompts = [rng.integers(1, 40, rng.integers(2, 7)).tolist() for _ in range(n)]
        completions = [rng.integers(1, 40, rng.integers(1, 9)).tolist() for _ in range(n)]
        return batches.pad_sequences(prompts, completions, pad_id=0)

    rows = {"teacher": rows_of(5), "student": rows_of(3)}
    ctx = types.SimpleNamespace(mesh=None)
    got = probe.pair_stats(ctx, student, teacher, rows, chunk_size=4)
    want = _reference(student, teacher, rows)
    assert want["kl_ts"] > 0.05 and want["logratio_var"] > 0.05  # the models differ
    for key in probe.STATS:
        assert got[key] == pytest.approx(want[key], rel=1e-4), key


def test_a_toy_run_reports_c2_for_every_student_stage_and_reruns_measure_nothing(
    toy_run, monkeypatch
):
    config, workdir, _ = toy_run
    report = (workdir / "report.md").read_text()
    assert "## Condition C2" in report
    for stage, teacher in [("student_sft", "teacher_sft"), ("fkl", "teacher_grpo")]:
        assert f"| {stage} | {teacher} |" in report
    cache = json.loads((workdir / "probe" / "c2.json").read_text())
    assert set(cache) >= {"base | teacher_sft", "student_sft | teacher_grpo", "opd | teacher_grpo"}
    assert all(np.isfinite(v) for stats in cache.values() for v in stats.values())
    # the forward-KL stage lowered KL(T||S) on the teacher's probe rows
    assert cache["fkl | teacher_grpo"]["kl_ts"] < cache["student_sft | teacher_grpo"]["kl_ts"]

    def fail(*args, **kwargs):
        raise AssertionError("a measured pair was measured again")

    monkeypatch.setattr(probe, "pair_stats", fail)
    monkeypatch.setattr(probe, "probe_rows", fail)
    pipeline.run(config, workdir)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("teacher", "student_sft", r"config\.probe\.teacher = 'student_sft': expected 'base' or"),
        ("student", "nope", r"config\.probe\.student = 'nope'"),
        ("prompts", 0, r"config\.probe\.prompts = 0; expected >= 1"),
    ],
)
def test_bad_probe_settings_fail_at_validation(field, value, message):
    config = shrink_config(toy_arith.get_config("stage3=false"))
    config.probe[field] = value
    with pytest.raises((ValueError, KeyError), match=message):
        pipeline.validate(config)


def test_an_unknown_probe_pool_is_named():
    config = shrink_config(toy_arith.get_config("stage3=false"))
    config.probe.data = "rl_9h"
    with pytest.raises(KeyError, match=r"config\.probe\.data: unknown data pool 'rl_9h'"):
        pipeline.validate(config)
