"""Seed sweeps (mean ± SE across seeds, paired differences) and every run's manifest."""

import json

import numpy as np
import pytest
from conftest import shrink_config

from configs import toy_arith
from s2d_jax.workflow import manifest, sweep


def test_summary_statistics_match_the_formulas():
    rows = [("a", "sa"), ("b", "sb")]
    values = {"sa": [0.5, 0.7, 0.6], "sb": [0.4, 0.75, 0.3]}
    per_seed = {
        seed: {stage: {"eval/test/avg@4": v[i], "eval/test/avg@4_se": 0.01} for stage, v in values.items()}
        for i, seed in enumerate((0, 1, 2))
    }  # fmt: skip
    data = sweep.summarize(rows, per_seed)
    assert data["metric"] == "eval/test/avg@4"
    a = np.array(values["sa"])
    assert data["arms"]["a"]["mean"] == pytest.approx(a.mean())
    assert data["arms"]["a"]["se"] == pytest.approx(a.std(ddof=1) / np.sqrt(3))
    d = a - np.array(values["sb"])
    [pair] = data["pairs"]
    assert pair["mean"] == pytest.approx(d.mean())
    assert pair["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert pair["a_above_b"] == 2
    assert "2 of 3" in sweep.summary_markdown(data)


def test_a_sweep_runs_each_seed_in_its_own_directory_and_resumes(tmp_path):
    config = shrink_config(
        toy_arith.get_config("stage3=false"), keep_stages=("student_sft", "teacher_sft")
    )
    config.report_rows = "student=student_sft,teacher=teacher_sft"
    data = sweep.run(config, tmp_path, [0, 1])
    assert data["seeds"] == [0, 1] and set(data["arms"]) == {"student", "teacher"}
    for seed in (0, 1):
        recorded = json.loads((tmp_path / f"seed_{seed}" / "run_config.json").read_text())
        assert recorded["seed"] == seed
        m = json.loads((tmp_path / f"seed_{seed}" / manifest.FILE).read_text())
        assert m["versions"]["jax"] and "pool demos" in m["data"] and "revision" in m["git"]
    assert (tmp_path / "summary.md").exists() and (tmp_path / "summary.png").exists()
    mtime = (tmp_path / "seed_0" / "student_sft" / "DONE").stat().st_mtime
    assert sweep.run(config, tmp_path, [0, 1]) == data  # finished stages are skipped
    assert (tmp_path / "seed_0" / "student_sft" / "DONE").stat().st_mtime == mtime


def _manifest(**changes):
    base = {
        "started": "t0",
        "command": ["main"],
        "git": {"revision": "abc", "dirty": False},
        "versions": {"jax": "1"},
        "devices": {"count": 1},
        "data": {"pool rl": "h1"},
        "checkpoints": {"teacher": {"config.json": "c1"}},
    }
    return base | changes


def test_a_resume_on_other_data_or_checkpoints_stops_and_other_versions_warn(tmp_path, capsys):
    manifest.check_and_write(tmp_path, _manifest(), write=True)
    with pytest.raises(ValueError, match=r"the data differ .*pool rl"):
        manifest.check_and_write(tmp_path, _manifest(data={"pool rl": "h2"}), write=True)
    with pytest.raises(ValueError, match=r"the checkpoints differ .*teacher"):
        changed = {"teacher": {"config.json": "c2"}}
        manifest.check_and_write(tmp_path, _manifest(checkpoints=changed), write=True)
    more = _manifest(versions={"jax": "2"}, data={"pool rl": "h1", "pool test": "h3"})
    manifest.check_and_write(tmp_path, more, write=True)
    assert "warning" in capsys.readouterr().out
    recorded = json.loads((tmp_path / manifest.FILE).read_text())
    assert recorded["versions"] == {"jax": "1"}  # the start's, with the resume listed
    assert recorded["resumes"][0]["versions"] == {"jax": "2"}
    assert recorded["data"]["pool test"] == "h3"  # a pool read for the first time is added


def test_checkpoint_hashes_name_the_config_and_the_weights_header(tmp_path):
    import jax

    from s2d_jax.model import decoder, hf_io

    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=48)
    hf_io.save_hf(tmp_path / "a", cfg, decoder.init_params(cfg, jax.random.key(0)))
    hashes = manifest.checkpoint_hashes(str(tmp_path / "a"))
    assert set(hashes) == {"config.json", "model.safetensors (header)"}
    bigger = decoder.ModelConfig.preset("toy_tiny", vocab_size=64)
    hf_io.save_hf(tmp_path / "b", bigger, decoder.init_params(bigger, jax.random.key(0)))
    other = manifest.checkpoint_hashes(str(tmp_path / "b"))
    assert all(hashes[k] != other[k] for k in hashes)


def test_shared_stages_are_trained_once_and_read_by_every_seed(tmp_path):
    config = shrink_config(
        toy_arith.get_config("stage3=false"), keep_stages=("teacher_sft", "student_sft", "fkl")
    )
    config.stages.fkl.teacher = "teacher_sft"
    config.probe.teacher = "teacher_sft"
    config.report_rows = "fkl=fkl,teacher=teacher_sft"
    with pytest.raises(ValueError, match="'fkl' reads stage 'student_sft', which is not shared"):
        sweep.run(config, tmp_path, [0, 1], shared_stages=["fkl"])
    data = sweep.run(config, tmp_path, [0, 1], shared_stages=["teacher_sft"])
    link = tmp_path / "seed_1" / "teacher_sft"
    assert link.is_symlink() and link.resolve() == (tmp_path / "seed_0" / "teacher_sft").resolve()
    teacher = data["arms"]["teacher"]["values"]
    assert teacher[0] == teacher[1]  # one model
    assert not (tmp_path / "seed_1" / "student_sft").is_symlink()
    assert "shared by every seed: teacher_sft" in (tmp_path / "summary.md").read_text()
    with pytest.raises(FileExistsError, match="this seed trained 'student_sft' itself"):
        sweep.run(config, tmp_path, [0, 1], shared_stages=["teacher_sft", "student_sft"])
