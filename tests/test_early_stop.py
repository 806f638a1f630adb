"""An sft stage that ends at a held-out accuracy (`stage.stop`): the held-out examples, the
config's checks, and a run that stops, resumes and reports where it stopped."""

import json

import pytest
from conftest import fake_grader, shrink_config

from configs import toy_arith
from s2d_jax.data.task import Task
from s2d_jax.grading import rewards
from s2d_jax.workflow import checkpoints, pipeline, plan, pools
from s2d_jax.workflow.context import RunContext


def test_hold_out_is_disjoint_ordered_and_follows_the_split_seed_and_pool_only():
    examples = tuple(range(50))
    kept, held = pools.hold_out(examples, 8, split_seed=3, name="demos")
    assert len(held) == 8 and len(kept) == 42
    assert set(kept) | set(held) == set(examples) and not set(kept) & set(held)
    assert list(kept) == sorted(kept) and list(held) == sorted(held)  # pool order kept
    assert pools.hold_out(examples, 8, split_seed=3, name="demos") == (kept, held)
    assert pools.hold_out(examples, 8, split_seed=4, name="demos")[1] != held
    assert pools.hold_out(examples, 8, split_seed=3, name="rl")[1] != held
    with pytest.raises(ValueError, match=r"pool 'demos': stop.holdout = 50 leaves none"):
        pools.hold_out(examples, 50, split_seed=3, name="demos")


def test_the_toy_student_warm_start_holds_out_demos_the_same_for_every_training_seed():
    one, two = (pipeline.validate(toy_arith.get_config(f"seed={s}")) for s in (0, 1))
    for run_cfg in (one, two):
        stage = next(s for s in run_cfg.stages if s.name == "student_sft")
        assert stage.stop.accuracy > 0 and stage.stop.holdout > 0
    assert one.task.split_seed == two.task.split_seed  # the split does not follow the seed


@pytest.mark.parametrize(
    "stage, stop, message",
    [
        ("teacher_grpo", dict(accuracy=0.5, holdout=8), r"only an sft stage stops early"),
        ("student_sft", dict(accuracy=0.5, holdout=0), r"needs stop\.holdout > 0"),
        ("student_sft", dict(accuracy=1.5), r"stop\.accuracy = 1\.5; expected in \[0, 1\]"),
        ("student_sft", dict(every=0), r"stop\.every = 0; expected >= 1"),
        ("student_sft", dict(unknown=1), r"student_sft\.stop: unknown key\(s\) \['unknown'\]"),
    ],
)
def test_a_bad_early_stop_fails_at_validation_naming_the_stage(stage, stop, message):
    config = toy_arith.get_config()
    config.stages[stage].stop.unlock().update(stop)
    with pytest.raises((ValueError, KeyError), match=message):
        pipeline.validate(config)


def test_an_sft_stage_without_room_to_answer_cannot_stop_early():
    config = toy_arith.get_config()
    config.stages.student_sft.sampling.max_new_tokens = 0
    with pytest.raises(ValueError, match=r"sampling\.max_new_tokens > 0"):
        pipeline.validate(config)


def _stopping_config():
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=("student_sft",))
    stage = config.stages.student_sft
    stage.steps = 8
    stage.save_every = 3
    stage.stop.update(accuracy=0.5, every=2, holdout=4)
    config.eval.splits = ""  # the fake grader only grades
    return config


def test_a_run_stops_at_its_first_passing_check_and_says_so(tmp_path, monkeypatch):
    """Checks at steps 2 (every held-out row wrong) and 4 (every one right): it stops at 4 of 8.
    The tiny random model never ends an answer, so truncation is not zeroed here."""
    graded = []

    def reward_of(text, reference):
        graded.append(reference)
        return float(len(graded) > 4)

    monkeypatch.setattr(rewards, "Grader", fake_grader(reward_of))
    monkeypatch.setattr(rewards, "zero_truncated", lambda rewards_B, truncated_B: rewards_B)
    summaries = pipeline.run(_stopping_config(), tmp_path)
    summary = summaries["student_sft"]
    # Each check graded the held-out examples' answers, once each, greedy.
    run_cfg = pipeline.validate(_stopping_config())
    task = Task(run_cfg.task, pipeline.tokenizer_path(run_cfg, run_cfg.models, tmp_path))
    ctx = RunContext(tmp_path, 0, "skip", task, run_cfg.models, run_cfg.eval, None, None)
    held = pools.stage_pool(ctx, run_cfg.stages[0]).holdout
    assert graded == [ex["answer"] for ex in held] * 2
    assert summary["train/steps"] == 4  # checks at 2 (0 right) and 4 (all right); 8 the bound
    assert summary["stop/holdout_accuracy"] == 1.0 and summary["stop/stopped_early"] == 1.0
    assert summary["data/held_out"] == 4
    exported = json.loads((tmp_path / "student_sft" / "params_info.json").read_text())
    assert exported["steps"] == 4
    # A rerun finds it done; its checkpoint is the stopped step, and the stage trains no further.
    again = pipeline.run(_stopping_config(), tmp_path)
    assert again["student_sft"]["train/steps"] == 4
    manager = checkpoints.state_manager(tmp_path / "student_sft")
    assert manager.latest_step() == 4
    manager.close()


def test_the_plan_shows_the_bound_and_the_held_out_examples(tmp_path):
    text = plan.describe(_stopping_config(), tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| student_sft"))
    assert "<= 8 (stops at held-out accuracy 0.5)" in row and "4 held out" in row
