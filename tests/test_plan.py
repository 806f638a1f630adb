"""`--dry_run`: every check of a real run, then the plan, with nothing loaded, compiled or written."""

import subprocess
import sys
from pathlib import Path

import pytest

from configs import paper, toy_arith
from s2d_jax.workflow import pipeline, plan

REPO = Path(__file__).resolve().parent.parent


def _rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, *body = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert tuple(header) == plan.COLUMNS
    return {row[0]: row for row in body}


def test_the_toy_plan_lists_every_stage_and_writes_nothing(tmp_path):
    config = toy_arith.get_config()
    text = plan.describe(config, tmp_path / "run")
    rows = _rows(text)
    assert "at the start and end of 10 student stage(s) (student_sft, direct_grpo," in text
    assert list(rows) == [s.name for s in pipeline.validate(config).stages]
    grpo = rows["direct_grpo"]
    # 40 updates of 16 prompts x 8 samples; every row at 48 new tokens
    assert grpo[6:10] == ["40", "128", "256", f"{40 * 128 * 48:,}"]
    fkl = rows["fkl"]  # 8 teacher rollouts of each of the 256 prompts, generated once
    assert fkl[7] == "32" and fkl[9] == f"{256 * 8 * 48:,}"
    assert rows["teacher_sft"][9] == "0"  # supervised: nothing generated
    # the student's warm-start stops early: at most 480 updates, a greedy check of its 128
    # held-out demos every 10
    sft = rows["student_sft"]
    assert sft[5] == "demos (1872, 128 held out)" and sft[6].startswith("<= 480 (stops at")
    assert sft[9] == f"{480 // 10 * 128 * 48:,}"
    assert not (tmp_path / "run").exists()


def test_the_tiny_paper_plan_reads_the_shipped_data(tmp_path):
    rows = _rows(plan.describe(paper.get_config("arm=full,pair=tiny"), tmp_path))
    assert set(rows) == {"teacher_base", "teacher_grpo", "fkl", "opd"}
    assert rows["teacher_grpo"][5].startswith("train (")


def test_a_dry_run_fails_like_a_real_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "s2d_jax.main", "--dry_run", f"--workdir={tmp_path}",
         "--config=configs/toy_arith.py", "--config.stages.fkl.steps=-1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "config.stages.fkl.steps = -1; expected >= 0" in result.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("arm", paper.ARMS)
def test_every_paper_arm_has_a_plan_in_miniature(arm, tmp_path):
    rows = _rows(plan.describe(paper.get_config(f"arm={arm},pair=tiny"), tmp_path))
    assert rows and all(int(row[6]) >= 0 for row in rows.values())
