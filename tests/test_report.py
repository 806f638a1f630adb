"""Tests for s2d_jax.workflow.report: the grading table beside the results table."""

from s2d_jax.workflow import report


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
