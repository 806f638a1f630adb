"""A rerun with a changed config: what it may change, what stops it, what is recorded."""

import json

import pytest
from conftest import shrink_config

from configs import toy_arith
from s2d_jax.workflow import checkpoints, metrics, pipeline, rerun

STAGES = ("student_sft", "direct_grpo")


def _config(**changes):
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=STAGES)
    for path, value in changes.items():
        node = config
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def _workdir(tmp_path, status: dict):
    """A workdir recorded with `_config()`, its stages finished / started as `status` says."""
    rerun.record(tmp_path, pipeline.validate(_config()), [])
    for name, state in status.items():
        (tmp_path / name).mkdir()
        if state == "finished":
            checkpoints.mark_done(tmp_path / name, {})
        else:
            (tmp_path / name / "metrics.jsonl").write_text("{}\n")
    return tmp_path


def _check(workdir, accept=False, **changes):
    return rerun.check(workdir, pipeline.validate(_config(**changes)), accept_changes=accept)


def test_a_change_to_a_finished_or_started_stage_stops_naming_the_field(tmp_path):
    workdir = _workdir(tmp_path, {"student_sft": "finished", "direct_grpo": "started"})
    with pytest.raises(ValueError, match=r"'direct_grpo' \(started\): stages\.direct_grpo\.optim"):
        _check(workdir, accept=True, **{"stages.direct_grpo.optim.lr": 0.5})
    # a change to a stage another one reads reaches the reader too
    with pytest.raises(
        ValueError, match=r"(?s)'student_sft' \(finished\).*'direct_grpo' \(started\)"
    ):
        _check(workdir, accept=True, **{"stages.student_sft.steps": 3})
    with pytest.raises(ValueError, match=r"seed 0 -> 1"):
        _check(workdir, accept=True, seed=1)


def test_changes_to_stages_not_yet_started_need_the_flag(tmp_path):
    workdir = _workdir(tmp_path, {"student_sft": "finished"})
    with pytest.raises(ValueError, match="--accept_config_changes"):
        _check(workdir, **{"stages.direct_grpo.optim.lr": 0.5})
    [change] = _check(workdir, accept=True, **{"stages.direct_grpo.optim.lr": 0.5})
    assert change == {"field": "stages.direct_grpo.optim.lr", "old": 1e-4, "new": 0.5}


def test_run_level_changes_that_cannot_change_results_are_allowed_and_recorded(tmp_path):
    workdir = _workdir(tmp_path, {"student_sft": "finished", "direct_grpo": "finished"})
    changes = _check(workdir, grader_workers=3, report_rows="student=student_sft")
    assert [c["field"] for c in changes] == ["grader.workers", "report_rows"]
    rerun.record(workdir, pipeline.validate(_config(grader_workers=3)), changes)
    lines = [json.loads(line) for line in (workdir / rerun.CHANGES).read_text().splitlines()]
    assert [(c["field"], c["old"], c["new"]) for c in lines][0] == ("grader.workers", 1, 3)
    assert _check(workdir, grader_workers=3) == []  # the record now holds the new value


def test_a_rerun_of_the_pipeline_with_a_changed_finished_stage_stops_before_any_work(tmp_path):
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=("student_sft",))
    pipeline.run(config, tmp_path)
    rows = metrics.read_metrics(tmp_path / "student_sft")
    config.stages.student_sft.optim.lr = 0.5
    with pytest.raises(ValueError, match=r"stages\.student_sft\.optim\.lr 0\.003 -> 0\.5"):
        pipeline.run(config, tmp_path, accept_config_changes=True)
    assert metrics.read_metrics(tmp_path / "student_sft") == rows
    assert json.loads((tmp_path / rerun.RECORD).read_text())["stages"]["student_sft"]["optim"][
        "lr"
    ] == pytest.approx(3e-3)
