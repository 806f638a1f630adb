"""The four-stage pipeline end to end on the toy task, plus its failure behaviour."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import TOY_RUN_STAGES, fake_grader, shrink_config

from configs import toy_arith
from s2d_jax.model import decoder
from s2d_jax.workflow import checkpoints, metrics, pipeline


def _toy(**kwargs):
    return shrink_config(toy_arith.get_config("stage3=false"), **kwargs)


def test_every_stage_kind_runs_two_steps(toy_run):
    _, workdir, summaries = toy_run
    assert list(summaries) == ["student_sft", "teacher_sft", "teacher_grpo", "fkl", "opd"]
    for name in TOY_RUN_STAGES:
        rows = metrics.read_metrics(workdir / name)
        assert [r["step"] for r in rows] == [1, 2], name
        assert all(np.isfinite(r["train/loss"]) for r in rows), name
        assert checkpoints.is_done(workdir / name)
        assert (workdir / name / "params").exists()
        assert (workdir / name / "eval_final" / "test" / "samples.jsonl").exists()
        assert "eval/test/avg@2" in summaries[name]
        assert 0 < summaries[name]["eval/test/length"] <= 12  # shrink_config's new_tokens
        assert 0 <= summaries[name]["eval/test/truncated"] <= 1
        samples = workdir / name / "eval_final" / "test" / "samples.jsonl"
        records = [json.loads(line) for line in samples.read_text().splitlines()]
        cut = [r["truncated"] for r in records]
        assert summaries[name]["eval/test/truncated"] == pytest.approx(np.mean(cut))
        assert not any(r["correct"] for r in records if r["truncated"])
        timeouts = sum(r["judgment"] == "timeout" for r in records)
        assert summaries[name]["eval/test/grader_timeouts"] == timeouts
        assert "eval/test/grader_errors" in summaries[name]
    assert "grpo/reward" in metrics.read_metrics(workdir / "teacher_grpo")[0]
    assert (workdir / "probe" / "c2.json").exists()
    assert (workdir / "report.md").read_text().count("|") > 10
    assert "| grader timeouts |" in (workdir / "report.md").read_text()
    assert (workdir / "curves.png").stat().st_size > 1000
    assert list((workdir / "teacher_grpo" / "tensorboard").iterdir())


def test_stage_hand_off_uses_previous_params(toy_run):
    """opd starts from fkl's export: its first-step student differs from student_sft's."""
    _, workdir, _ = toy_run
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=22)
    target = decoder.abstract_params(cfg)
    sft = checkpoints.load_exported_params(workdir / "student_sft", target)
    fkl = checkpoints.load_exported_params(workdir / "fkl", target)
    assert not np.array_equal(sft["embed"], fkl["embed"])


def test_finished_stages_are_skipped(toy_run, capsys):
    config, workdir, summaries = toy_run
    mtimes = {n: (workdir / n / "metrics.jsonl").stat().st_mtime for n in TOY_RUN_STAGES}
    again = pipeline.run(config, workdir)
    assert again.keys() == summaries.keys()
    assert capsys.readouterr().out.count("finished earlier: skipped") == len(TOY_RUN_STAGES)
    assert mtimes == {n: (workdir / n / "metrics.jsonl").stat().st_mtime for n in TOY_RUN_STAGES}


def test_final_student_exports_to_transformers(toy_run):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, workdir, _ = toy_run
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        workdir / "export_hf", dtype=torch.float32
    )
    cfg = decoder.ModelConfig.preset("toy_tiny", vocab_size=22)
    params = checkpoints.load_exported_params(workdir / "opd", decoder.abstract_params(cfg))
    tokens = np.array([[2, 5, 6, 7, 8, 9]])
    ours = decoder.forward(cfg, params, tokens, np.ones_like(tokens, bool))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_unknown_stage_key_is_named(tmp_path):
    config = _toy(keep_stages=("student_sft",))
    config.stages.student_sft.learning_rate = 0.1
    with pytest.raises(KeyError, match="learning_rate"):
        pipeline.run(config, tmp_path)
    assert not list(tmp_path.iterdir())  # failed before writing anything


def test_main_rejects_unknown_flag_override(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2d_jax.main",
            "--config",
            "configs/toy_arith.py",
            "--workdir",
            str(tmp_path),
            "--config.stages.student_sft.lrr=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "lrr" in out.stderr


def test_missing_checkpoint_is_named_before_compute(tmp_path):
    config = _toy(keep_stages=("student_sft",))
    config.stages.student_sft.init_from = str(tmp_path / "no_such_checkpoint")
    with pytest.raises(ValueError, match="no_such_checkpoint"):
        pipeline.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_model_path_is_named(tmp_path):
    config = _toy(keep_stages=("student_sft",))
    config.models.teacher.hf_path = str(tmp_path / "Qwen3-8B")
    with pytest.raises(FileNotFoundError, match=r"config\.models\.teacher\.hf_path.*Qwen3-8B"):
        pipeline.run(config, tmp_path / "run")


def _poison_grpo(monkeypatch, bad_step):
    """Make the GRPO batch of `bad_step` give a NaN loss (NaN advantages, as a broken reward would)."""
    from s2d_jax.workflow import stages

    original = stages.grpo_batches

    def poisoned(ctx, stage, policy, teacher, stage_dir):
        make_batch, total = original(ctx, stage, policy, teacher, stage_dir)

        def make(params, step):
            batch, extra = make_batch(params, step)
            if step == bad_step:
                batch = dict(batch, advantages=batch["advantages"] * np.nan)
            return batch, extra

        return make, total

    kind = dataclasses.replace(stages.KINDS["grpo"], make_batches=poisoned)
    monkeypatch.setitem(stages.KINDS, "grpo", kind)


def test_nan_batch_is_skipped_and_counted(tmp_path, monkeypatch):
    """A batch that makes the loss NaN leaves params untouched, is counted, and the run goes on."""
    _poison_grpo(monkeypatch, bad_step=1)
    config = _toy(keep_stages=("student_sft", "direct_grpo"), steps=3)
    config.stages.direct_grpo.max_skipped_frac = 0.34  # one of three steps may skip
    summaries = pipeline.run(config, tmp_path)
    rows = metrics.read_metrics(tmp_path / "direct_grpo")
    assert [r["train/skipped"] for r in rows] == [0.0, 1.0, 0.0]
    assert summaries["direct_grpo"]["train/skipped_total"] == 1.0


def test_nan_policy_raise_names_step_and_metric(tmp_path, monkeypatch):
    _poison_grpo(monkeypatch, bad_step=0)
    config = _toy(keep_stages=("student_sft", "direct_grpo"))
    config.nan_policy = "raise"
    with pytest.raises(FloatingPointError, match=r"step 1: metric train/loss"):
        pipeline.run(config, tmp_path)
    assert not (tmp_path / "direct_grpo" / "DONE").exists()


def test_skips_past_the_budget_fail_the_stage(tmp_path, monkeypatch):
    """The default max_skipped_frac 0.1 of a 2-step stage allows no skip."""
    _poison_grpo(monkeypatch, bad_step=1)
    config = _toy(keep_stages=("student_sft", "direct_grpo"))
    with pytest.raises(
        FloatingPointError, match=r"'direct_grpo': 1 skipped steps.*step 2: train/loss"
    ):
        pipeline.run(config, tmp_path)
    assert not (tmp_path / "direct_grpo" / "DONE").exists()
    assert not (tmp_path / "RUN_LOCK").exists()  # released on failure


def test_format_reward_pays_extractable_wrong_answers(tmp_path, monkeypatch):
    """grpo.format_reward: reward = format_reward for a wrong answer that extract_answer finds
    (here: completions of even length), 0 without one; `grpo/correct` stays 0."""
    from s2d_jax.grading import rewards
    from s2d_jax.workflow import stages

    monkeypatch.setattr(rewards, "Grader", fake_grader(lambda text, reference: 0.0))  # all wrong
    monkeypatch.setattr(
        stages.rewards, "extract_answer", lambda t, answer_style: "7" if len(t) % 2 == 0 else None
    )
    config = _toy(keep_stages=("teacher_grpo",))
    config.stages.teacher_grpo.init_from = "base"
    config.stages.teacher_grpo.grpo.format_reward = 0.25
    config.eval.splits = ""
    pipeline.run(config, tmp_path)
    rows = metrics.read_metrics(tmp_path / "teacher_grpo")
    assert any(0 < r["grpo/answered"] < 1 for r in rows)  # the check below is not vacuous
    for r in rows:
        assert r["grpo/correct"] == 0.0 and r["grpo/solved_any"] == 0.0
        assert r["grpo/reward"] == pytest.approx(0.25 * r["grpo/answered"])


def test_checkpoints_follow_save_every(tmp_path):
    """save_every 5 over a 2-step stage: only the end-of-stage checkpoint (orbax on its own would
    also write step 1, the first step it sees)."""
    config = _toy(keep_stages=("student_sft",))
    config.stages.student_sft.save_every = 5
    config.eval.splits = ""
    pipeline.run(config, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "student_sft" / "checkpoints").iterdir())
    assert steps == [2]


FAILING_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
from conftest import shrink_config
import dataclasses
from configs import toy_arith
from s2d_jax.workflow import pipeline
from s2d_jax.workflow import stages

_grpo = stages.grpo_batches


def _failing(ctx, stage, policy, teacher, stage_dir):
    make_batch, total = _grpo(ctx, stage, policy, teacher, stage_dir)

    def make(params, step):
        if step == 1:  # after a step: grader workers, writers and checkpoints are all in use
            raise RuntimeError("the real error")
        return make_batch(params, step)

    return make, total


stages.KINDS["grpo"] = dataclasses.replace(stages.KINDS["grpo"], make_batches=_failing)


def get_config(arg=None):
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=("teacher_grpo",))
    config.stages.teacher_grpo.init_from = "base"
    config.eval.splits = ""
    return config
"""


def test_a_failure_ends_with_its_error(tmp_path):
    """Nothing is printed after the traceback (no shutdown noise from open pools or writers)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    config_file = tmp_path / "config.py"
    config_file.write_text(FAILING_CONFIG.format(tests=str(repo / "tests")))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2d_jax.main",
            f"--config={config_file}",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1
    assert out.stderr.rstrip().splitlines()[-1] == "RuntimeError: the real error"
    assert "Exception ignored" not in out.stderr
    assert not (tmp_path / "run" / "RUN_LOCK").exists()


def test_error_is_printed_after_what_the_failure_left_behind():
    """An object held only by the failing frame (as orbax's coroutines of a failed restore are)
    is finalized before the traceback is printed, so its output cannot bury the error."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys
from s2d_jax import main

class Leftover:
    def __del__(self):
        sys.stderr.write("noise from a finalizer\\n")

def fail():
    leftover = Leftover()
    raise RuntimeError("the real error")

main.run_reporting_errors(fail)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stderr.rstrip().splitlines()
    assert out.returncode == 1
    assert lines[0] == "noise from a finalizer"
    assert lines[-1] == "RuntimeError: the real error"


def _sample_with(sampling_overrides):
    """`batches.sample` of one tiny model under a stage's sampling record with the overrides."""
    import types

    import jax

    from s2d_jax.workflow import batches, config

    cfg = decoder.ModelConfig.preset("toy_student", vocab_size=32)
    params = decoder.init_params(cfg, jax.random.key(0))
    fields = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, top_k=0)
    fields.update(
        dict(engine="continuous", kv_budget_gib=0.0, decode_attention="reference"),
        **sampling_overrides,
    )
    sampling = config.SamplingConfig(**fields)
    tokenizer = types.SimpleNamespace(eos_ids=(3,), pad_id=0)
    ctx = types.SimpleNamespace(task=types.SimpleNamespace(tokenizer=tokenizer), mesh=None)
    prompts = [[1, 5, 7], [1, 9], [1, 4, 4, 6]]
    rollout, _ = batches.sample(ctx, cfg, params, prompts, sampling, seed=0, num_samples=2)
    return rollout


def test_a_stage_picks_its_rollout_engine_and_kv_budget():
    continuous = _sample_with(dict(kv_budget_gib=1e-4))  # a few rows' cache: a smaller pool
    static = _sample_with(dict(engine="static"))
    np.testing.assert_array_equal(continuous.tokens, static.tokens)
    with pytest.raises(ValueError, match="holds no row"):
        _sample_with(dict(kv_budget_gib=1e-9))
    _sample_with(dict(engine="static", kv_budget_gib=1e-9))  # the static engine has no pool
