"""Tests for s2d_jax.workflow.report: the grading, pool and C1 tables beside the results table."""

import json
from pathlib import Path

from configs import paper, toy_arith
from s2d_jax.workflow import pipeline, report


def _summary(split, truncated, timeouts, errors):
    prefix = f"eval/{split}"
    return {
        f"{prefix}/problems": 10.0,
        f"{prefix}/avg@4": 0.5,
        f"{prefix}/avg@4_se": 0.1,
        f"{prefix}/truncated": truncated,
        f"{prefix}/grader_timeouts": timeouts,
        f"{prefix}/grader_errors": errors,
        f"{prefix}/maj_grader_timeouts": 0.0,
        f"{prefix}/maj_grader_errors": 2.0,
    }


def test_report_shows_truncation_and_grader_failures_per_split(tmp_path):
    summaries = {
        "teacher": {**_summary("math500", 0.125, 3.0, 1.0), **_summary("gsm8k", 0.0, 0.0, 0.0)},
        # Grading counts absent: shown as n/a, never as zero.
        "student": {
            "eval/math500/problems": 10.0,
            "eval/math500/avg@4": 0.25,
            "eval/math500/avg@4_se": 0.1,
        },
        "sft": {},  # a stage without evaluation
    }
    rows = [("T", "teacher"), ("S", "student"), ("W", "sft")]
    table = report.grading_table(rows, summaries).splitlines()
    assert table[0] == (
        "| arm | split | truncated | grader timeouts | grader errors | maj@k timeouts "
        "| maj@k errors |"
    )
    assert table[2:] == [
        "| T | math500 | 12.5% | 3 | 1 | 0 | 2 |",
        "| T | gsm8k | 0.0% | 0 | 0 | 0 | 2 |",
        "| S | math500 | n/a | n/a | n/a | n/a | n/a |",
    ]
    text = report.write_report(tmp_path, "T=teacher,S=student", summaries, {})
    assert "| T | math500 | 12.5% | 3 | 1 | 0 | 2 |" in text
    assert report.grading_table([("W", "sft")], summaries) == ""


def test_report_counts_the_prompts_each_capped_pool_dropped(tmp_path):
    pool = {"data/pool_size": 100.0, "data/prompts_dropped": 7.0, "data/max_prompt_tokens": 2048.0}
    uncapped = {"data/pool_size": 64.0, "data/prompts_dropped": 0.0, "data/max_prompt_tokens": 0.0}
    summaries = {"fkl": pool, "sft": uncapped, "eval": {}}  # an eval stage has no pool
    assert report.pool_table(summaries).splitlines()[2:] == [
        "| fkl | 100 | 2048 | 7 | 93 |",
        "| sft | 64 | no cap | 0 | 64 |",
    ]
    text = report.write_report(tmp_path, "", summaries, {})
    assert "| stage | pool | max prompt tokens | dropped | kept |" in text
    assert report.pool_table({"eval": {}}) == ""
    assert report.pool_table({"sft": uncapped}) == ""  # no cap anywhere: nothing to show


def _write_metrics(stage_dir, rows):
    stage_dir.mkdir(parents=True)
    lines = [json.dumps({"step": step, **row}) for step, row in enumerate(rows, start=1)]
    (stage_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _avg(value, se, split="test", k=4):
    return {f"eval/{split}/avg@{k}": value, f"eval/{split}/avg@{k}_se": se}


def test_the_c1_table_shows_each_bridges_teacher_and_its_accuracies(tmp_path):
    """Per distillation stage: its teacher's test accuracy, the teacher's on D (2a), the student's
    on D at 2b's first and last step (from metrics.jsonl), the student's test accuracy."""
    stage_cfgs = pipeline.validate(toy_arith.get_config()).stages
    summaries = {
        "teacher_sft": _avg(0.5, 0.025),
        "raw_fkl": {"c1/teacher_accuracy": 0.625, "c1/teacher_rows": 2048.0, **_avg(0.4, 0.02)},
        "raw_opd": {"opd/accuracy": 0.7, **_avg(0.45, 0.021)},
        "opd_no_fkl": {},  # its teacher, teacher_grpo, did not run: n/a, and no opd metrics
    }
    _write_metrics(tmp_path / "raw_opd", [{"opd/accuracy": a} for a in (0.25, 0.5, 0.75)])
    lines = report.c1_table(tmp_path, stage_cfgs, summaries).splitlines()
    assert lines[0] == (
        "| stage | D (pool) | teacher | teacher test avg@4 | teacher on D (2a rollouts) "
        "| student on D, first → last step (2b) | student test avg@4 |"
    )
    assert lines[2:] == [
        "| raw_fkl | rl | teacher_sft | 50.0 ± 2.5 | 62.5% (2048 rollouts) | n/a | 40.0 ± 2.0 |",
        "| raw_opd | rl | teacher_sft | 50.0 ± 2.5 | n/a | 25.0% → 75.0% | 45.0 ± 2.1 |",
        "| opd_no_fkl | rl | teacher_grpo | n/a | n/a | n/a | n/a |",
    ]
    text = report.write_report(tmp_path, "", summaries, {}, stage_cfgs)
    assert "(condition C1)" in text and lines[3] in text
    assert report.c1_table(tmp_path, stage_cfgs, {"teacher_sft": {}}) == ""  # no bridge ran


def test_a_teacher_given_as_base_reads_its_eval_stage():
    """`configs/paper.py:arm=raw`: the bridge distils from the teacher's checkpoint ("base"),
    whose accuracy the arm's `teacher_base` eval stage measures."""
    stage_cfgs = pipeline.validate(paper.get_config("arm=raw,pair=tiny")).stages
    summaries = {
        "teacher_base": _avg(0.3, 0.05, "math500", 2),
        "fkl": {
            "c1/teacher_accuracy": 0.25,
            "c1/teacher_rows": 16.0,
            **_avg(0.1, 0.05, "math500", 2),
        },
    }
    lines = report.c1_table(Path("/nonexistent"), stage_cfgs, summaries).splitlines()
    assert lines[2:] == [
        "| fkl | train | base | 30.0 ± 5.0 | 25.0% (16 rollouts) | n/a | 10.0 ± 5.0 |"
    ]
