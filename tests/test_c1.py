"""Condition C1 in the distillation stages: Stage 2a grades its teacher rollouts into the cache as
it makes them (`c1/teacher_accuracy`), Stage 2b grades its student rollouts every step
(`opd/accuracy`). Both are checked against grading the same rows again here, from their tokens:
the answer of the pool's problem with that prompt, the decoded completion, 0 for a row cut at the
token limit. The verifier is a stand-in (`ParityGrader`) so that the grades are mixed."""

import numpy as np
import pytest
from conftest import fake_grader, shrink_config

from configs import toy_arith
from s2d_jax.data.task import Task, build_tokenizer
from s2d_jax.grading import rewards
from s2d_jax.workflow import batches, metrics, pipeline, rollout_cache
from s2d_jax.workflow import config as config_lib

NEW_TOKENS = 12  # shrink_config's


def reward_of(text: str, reference: str) -> float:
    """Right when the completion's length and the answer (a digit) have the same parity: mixed
    within a batch, and a function of the row's own reference."""
    return float((len(text) + int(reference)) % 2 == 0)


# Monkeypatched in as `rewards.Grader`: `reward_of` each row, no worker processes.
ParityGrader = fake_grader(reward_of)


def _toy(stage):
    """One distillation stage of the toy from random init on a random teacher, no eval."""
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=(stage,))
    config.stages[stage].update(init_from="base", teacher="base")
    config.eval.splits = ""
    return config


def _task(config, workdir) -> Task:
    task_cfg = config_lib.parse_task(config)
    return Task(task_cfg, build_tokenizer(task_cfg, workdir, ""))


def reference_grades(task: Task, pool: str, prompts, completions):
    """(grades [R], whether a row that `reward_of` marks right was cut and so scored 0)."""
    answers = {tuple(task.prompt_ids(ex)): ex["answer"] for ex in task.pool(pool)}
    eos = set(task.tokenizer.eos_ids)
    grades, zeroed = [], False
    for prompt, completion in zip(prompts, completions, strict=True):
        cut = int(completion[-1]) not in eos  # no EOS: it ran to the limit
        assert not cut or len(completion) == NEW_TOKENS
        text = task.tokenizer.decode([t for t in completion if int(t) not in eos])
        right = reward_of(text, answers[tuple(int(t) for t in prompt)])
        grades.append(0.0 if cut else right)
        zeroed |= cut and right == 1.0
    return np.array(grades), zeroed


def test_teacher_rollouts_are_graded_into_the_cache_as_an_independent_grading(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(rewards, "Grader", ParityGrader)
    monkeypatch.setattr(rollout_cache, "CHUNK_ROWS", 8)  # 4 chunks of 4 prompts x 2 rollouts
    config = _toy("fkl")
    summaries = pipeline.run(config, tmp_path)
    cache = rollout_cache.open_cache(tmp_path / "fkl" / "teacher_rollouts", 4)
    prompts, completions = cache.rows(np.arange(cache.num_rows))
    want, zeroed = reference_grades(_task(config, tmp_path), "rl", prompts, completions)
    assert zeroed and 0 < want.mean() < 1  # the comparison below is not vacuous
    np.testing.assert_array_equal(np.concatenate(cache.correct), want)
    assert summaries["fkl"]["c1/teacher_accuracy"] == pytest.approx(want.mean())
    assert summaries["fkl"]["c1/teacher_rows"] == len(want) == 32
    assert "| fkl | rl | base | " in (tmp_path / "report.md").read_text()  # the C1 table


def test_opd_accuracy_is_the_mean_grade_of_each_steps_rollouts(tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "Grader", ParityGrader)
    rollouts, sample = [], batches.sample

    def recording_sample(*args, **kwargs):
        rollout, stats = sample(*args, **kwargs)
        rollouts.append(rollout)
        return rollout, stats

    monkeypatch.setattr(batches, "sample", recording_sample)
    config = _toy("raw_opd")
    config.probe.data = ""  # no probe rows: every sampler call is one of the stage's steps
    pipeline.run(config, tmp_path)
    task = _task(config, tmp_path)
    rows = metrics.read_metrics(tmp_path / "raw_opd")
    assert len(rows) == len(rollouts) == 2
    any_zeroed = False
    for row, rollout in zip(rows, rollouts, strict=True):
        want, zeroed = reference_grades(task, "rl", *batches.rollout_rows(rollout))
        any_zeroed |= zeroed
        assert row["opd/accuracy"] == pytest.approx(want.mean()), row["step"]
        assert {"reward/mean", "reward/no_answer"} <= set(row)  # the grader's stats, as grpo's
    assert any_zeroed and 0 < np.mean([r["opd/accuracy"] for r in rows]) < 1
    report = (tmp_path / "report.md").read_text()
    first, last = (f"{100 * r['opd/accuracy']:.1f}%" for r in (rows[0], rows[-1]))
    assert f"| raw_opd | rl | base | n/a | {first} → {last} |" in report
    # The answers were read for the diagnostic, not spent: the arm consumed no labeled example.
    assert "| bridge from raw teacher | raw_opd | 0 |" in report
