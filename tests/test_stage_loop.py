"""The training loop's fault cases on a tiny stand-in model (no compile, milliseconds a step):
the skip budget, corrupt checkpoints, torn metrics and markers."""

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from s2d_jax.learn import steps
from s2d_jax.workflow import checkpoints, metrics, stage_loop


def _state():
    w = jnp.zeros(3)
    return steps.TrainState({"w": w}, {"m": w}, jnp.zeros((), jnp.int32))


def _update(skip_steps=()):
    """w += step + 1 each update; an update whose new step is in `skip_steps` is skipped with a
    NaN loss, as the real train step does."""

    def update(state, batch):
        step = int(state.step) + 1
        skipped = step in skip_steps
        w = state.params["w"] + (0.0 if skipped else batch["x"])
        loss = float("nan") if skipped else float(w.sum())
        new = state.replace(params={"w": w}, step=state.step + 1)
        return new, {"train/loss": loss, "train/grad_norm": 1.0, "train/skipped": float(skipped)}

    return update


class Killed(Exception):
    pass


def _make_batch(kill_at=None):
    def make_batch(params, step):
        if step == kill_at:
            raise Killed
        return {"x": float(step + 1)}, {}

    return make_batch


def _run(stage_dir, total=6, skip_steps=(), kill_at=None, **kwargs):
    kwargs = {"max_skipped_frac": 0.1, "max_consecutive_skips": 3, **kwargs}  # the config's
    return stage_loop.run_loop(
        stage_dir=stage_dir,
        state=_state(),
        total_steps=total,
        save_every=kwargs.pop("save_every", 1),
        make_batch=_make_batch(kill_at),
        update=_update(skip_steps),
        **kwargs,
    )


def _rows(stage_dir):
    return [
        {k: v for k, v in r.items() if k != "time/step_s"} for r in metrics.read_metrics(stage_dir)
    ]


def _expected_w(total, skip_steps=()):
    return sum(s for s in range(1, total + 1) if s not in skip_steps)


# --- skip budget


def test_skips_within_budget_are_counted(tmp_path):
    state, _ = _run(tmp_path, total=10, skip_steps=(3, 7), max_skipped_frac=0.2)
    assert float(state.params["w"][0]) == _expected_w(10, (3, 7))
    assert [r["step"] for r in _rows(tmp_path) if r["train/skipped"]] == [3, 7]


def test_too_many_skips_fail_naming_steps_and_metric(tmp_path):
    with pytest.raises(
        FloatingPointError, match=r"2 skipped steps, more than 1 .*step 2: train/loss"
    ):
        _run(tmp_path, total=10, skip_steps=(2, 5), max_skipped_frac=0.1)
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5]  # stopped at the second skip


def test_consecutive_skips_fail(tmp_path):
    with pytest.raises(
        FloatingPointError, match=r"4 consecutive skipped steps, more than 3.*step 6"
    ):
        _run(tmp_path, total=10, skip_steps=(3, 4, 5, 6), max_skipped_frac=1.0)


def test_skip_count_survives_a_resume(tmp_path):
    """One skip allowed: step 2 skipped before the kill, step 5 after it exceeds the budget."""
    with pytest.raises(Killed):
        _run(tmp_path, total=10, skip_steps=(2,), kill_at=3, max_skipped_frac=0.1)
    with pytest.raises(FloatingPointError, match=r"step 2: .*step 5: "):
        _run(tmp_path, total=10, skip_steps=(2, 5), max_skipped_frac=0.1)


# --- checksums


def _state_file(stage_dir, step):
    files = [p for p in (stage_dir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    straight, _ = _run(tmp_path / "straight", total=4)
    with pytest.raises(Killed):
        _run(tmp_path / "run", total=6, kill_at=4)  # checkpoints 3 and 4 are kept
    _flip_byte(_state_file(tmp_path / "run", 4))
    with caplog.at_level(logging.WARNING):
        state, _ = _run(tmp_path / "run", total=4)
    assert "checkpoint(s) [4] are corrupt, resuming from step 3" in caplog.text
    np.testing.assert_array_equal(state.params["w"], straight.params["w"])
    assert _rows(tmp_path / "run") == _rows(tmp_path / "straight")


def test_no_good_checkpoint_is_an_error(tmp_path):
    _run(tmp_path, total=4)
    for step in (3, 4):
        _flip_byte(_state_file(tmp_path, step))
    with pytest.raises(
        checkpoints.CorruptCheckpointError, match=r"no checkpoint is good.*step 4.*step 3"
    ):
        _run(tmp_path, total=4)


def test_restore_error_that_is_no_corruption_deletes_nothing(tmp_path):
    """A target of other shapes (a changed config) fails the restore; the checkpoints stay."""
    _run(tmp_path, total=2)
    state = _state()
    bigger = state.replace(params={"w": jnp.zeros(4)}, opt_state={"m": jnp.zeros(4)})
    manager = checkpoints.state_manager(tmp_path)
    with pytest.raises(Exception, match="shape"):
        checkpoints.restore_latest(manager, bigger)
    assert sorted(manager.all_steps()) == [1, 2]
    manager.close()


def test_unreadable_checksums_count_as_corrupt(tmp_path, caplog):
    _run(tmp_path, total=2)
    (tmp_path / "checkpoints" / "2" / checkpoints.CHECKSUMS).write_text('{"state/')
    with caplog.at_level(logging.WARNING):
        state, _ = _run(tmp_path, total=2)
    assert "CHECKSUMS.json is unreadable" in caplog.text
    assert float(state.params["w"][0]) == _expected_w(2)  # step 2 recomputed from step 1


def test_checkpoint_without_checksums_restores_unverified(tmp_path, caplog):
    _run(tmp_path, total=2)
    (tmp_path / "checkpoints" / "2" / checkpoints.CHECKSUMS).unlink()
    with caplog.at_level(logging.WARNING):
        state, _ = _run(tmp_path, total=2)
    assert "restored unverified" in caplog.text
    assert float(state.params["w"][0]) == _expected_w(2)


def test_corrupt_params_export_names_file_and_rerun(tmp_path):
    params = {"w": jnp.arange(1000.0)}
    checkpoints.export_params(tmp_path, params, {})
    checkpoints.mark_done(tmp_path, {})
    files = [p for p in (tmp_path / "params").rglob("*") if p.is_file()]
    _flip_byte(max(files, key=lambda p: p.stat().st_size))
    with pytest.raises(
        checkpoints.CorruptCheckpointError, match=r"does not match.*removing .*DONE"
    ):
        checkpoints.load_exported_params(tmp_path, params)


def test_deleted_export_of_a_done_stage_says_how_to_rerun(tmp_path):
    stage_dir = tmp_path / "teacher_grpo"
    stage_dir.mkdir()
    checkpoints.mark_done(stage_dir, {})
    with pytest.raises(
        FileNotFoundError,
        match=r"marked done: rerun stage 'teacher_grpo' by removing .*teacher_grpo/DONE",
    ):
        checkpoints.load_exported_params(stage_dir, {"w": jnp.zeros(3)})


# --- metrics and markers


def test_torn_metrics_row_at_the_checkpoint_is_restored(tmp_path):
    _run(tmp_path / "straight", total=5)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        _run(run, total=5, kill_at=3)  # rows 1-3, checkpoint 3
    lines = (run / "metrics.jsonl").read_text().splitlines()
    torn = lines[:2] + [lines[0]] + [lines[2][:15]]  # a duplicate of row 1, row 3 torn
    (run / "metrics.jsonl").write_text("\n".join(torn))
    _run(run, total=5)
    assert _rows(run) == _rows(tmp_path / "straight")


def test_torn_metrics_file_is_read_with_the_bad_line_named(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
    with caplog.at_level(logging.WARNING):
        rows = metrics.read_metrics(tmp_path)
    assert rows == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    assert f"{path} line 3 is unreadable" in caplog.text


def test_torn_done_marker_means_unfinished(tmp_path, caplog):
    (tmp_path / "DONE").write_text('{"train/loss": 0.')
    with caplog.at_level(logging.WARNING):
        assert not checkpoints.is_done(tmp_path)
    assert f"{tmp_path / 'DONE'} line 1 is unreadable" in caplog.text
    checkpoints.mark_done(tmp_path, {"train/loss": 0.5})
    assert checkpoints.done_summary(tmp_path) == {"train/loss": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["DONE"]  # no temporary file left


def test_repaired_rows_name_lost_steps(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 4}) + "\n")
    with caplog.at_level(logging.WARNING):
        rows = metrics.repaired_rows(path, 3, saved_rows=[{"step": 3, "a": 1.0}])
    assert rows == [{"step": 1}, {"step": 3, "a": 1.0}]
    assert "step(s) [2]" in caplog.text


# --- early stop


def _stop_when_w_reaches(threshold, calls=None, every=2):
    """periodic: every `every` steps, stop once w (the running sum of the steps' x) reaches
    `threshold`."""

    def periodic(params, step):
        if step % every:
            return {}, False
        w = float(params["w"][0])
        if calls is not None:
            calls.append(w)
        return {"stop/w": w}, w >= threshold

    return periodic


def test_early_stop_ends_at_the_first_passing_check(tmp_path):
    calls = []
    # w after step s is s(s+1)/2: checks at steps 2, 4, 6 see 3, 10, 21; 10 passes.
    state, _ = _run(tmp_path, total=12, save_every=5, periodic=_stop_when_w_reaches(8, calls))
    assert int(state.step) == 4 and float(state.params["w"][0]) == _expected_w(4)
    assert calls == [3.0, 10.0]
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r.get("stop/w") for r in rows] == [None, 3.0, None, 10.0]
    manager = checkpoints.state_manager(tmp_path)
    assert manager.latest_step() == 4  # the stopped step is saved, not the stage's upper bound
    manager.close()


def test_a_stopped_stage_resumes_to_its_stopped_state(tmp_path):
    stop = dict(periodic=_stop_when_w_reaches(8))
    first, _ = _run(tmp_path, total=12, **stop)
    calls = []
    again, last = _run(tmp_path, total=12, periodic=_stop_when_w_reaches(8, calls))
    assert int(again.step) == 4 and last == {} and calls == []  # no step, no check
    np.testing.assert_array_equal(again.params["w"], first.params["w"])
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4]


def test_a_killed_stage_with_an_early_stop_resumes_to_the_same_stop(tmp_path):
    stop = dict(periodic=_stop_when_w_reaches(20))  # checks see 3, 10, 21
    straight, _ = _run(tmp_path / "straight", total=12, **stop)
    with pytest.raises(Killed):
        _run(tmp_path / "run", total=12, kill_at=4, save_every=2, **stop)
    resumed, _ = _run(tmp_path / "run", total=12, save_every=2, **stop)
    assert int(straight.step) == int(resumed.step) == 6
    np.testing.assert_array_equal(resumed.params["w"], straight.params["w"])
    assert _rows(tmp_path / "run") == _rows(tmp_path / "straight")
