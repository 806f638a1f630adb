"""Resume after SIGKILL: a killed run restarted with the same command ends exactly like an
uninterrupted one (same parameters, same metrics), because batches depend only on (seed, step)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from s2d_jax.model import decoder
from s2d_jax.workflow import checkpoints, metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import shrink_config
from configs import toy_arith


def get_config(arg=None):
    config = toy_arith.get_config("stage3=false")
    return shrink_config(config, steps={steps}, keep_stages={stages!r})
"""


def _command(config_file: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "s2d_jax.main", f"--config={config_file}", f"--workdir={workdir}"]


def _run(config_file, workdir):
    subprocess.run(
        _command(config_file, workdir),
        cwd=REPO,
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_after_checkpoint(config_file, workdir, stage: str, step: int):
    """Start the run, SIGKILL it once `stage` has a checkpoint at `step` or later."""
    proc = subprocess.Popen(
        _command(config_file, workdir),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = workdir / stage / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if done and max(done) >= step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / stage / "DONE").exists()


def _stage_result(workdir, stage):
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=22)
    params = checkpoints.load_exported_params(workdir / stage, decoder.abstract_params(cfg))
    rows = [
        {k: v for k, v in r.items() if not k.startswith("time/") and not k.endswith("per_s")}
        for r in metrics.read_metrics(workdir / stage)
    ]
    return params, rows


def _check_resume(tmp_path, stages, kill_stage, steps, kill_at):
    config_file = tmp_path / "config.py"
    config_file.write_text(CONFIG.format(tests=str(REPO / "tests"), steps=steps, stages=stages))
    _run(config_file, tmp_path / "straight")
    _kill_after_checkpoint(config_file, tmp_path / "killed", kill_stage, kill_at)
    _run(config_file, tmp_path / "killed")
    for stage in stages:
        params_a, rows_a = _stage_result(tmp_path / "straight", stage)
        params_b, rows_b = _stage_result(tmp_path / "killed", stage)
        assert rows_a == rows_b, stage
        for a, b in zip(jax_leaves(params_a), jax_leaves(params_b), strict=True):
            np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_resume_after_kill_in_sft(tmp_path):
    _check_resume(tmp_path, ("student_sft",), "student_sft", steps=8, kill_at=3)


@pytest.mark.slow
def test_resume_after_kill_in_grpo_and_distillation(tmp_path):
    stages = ("student_sft", "teacher_sft", "teacher_grpo", "fkl")
    _check_resume(tmp_path, stages, "fkl", steps=5, kill_at=2)
