"""The run-directory lock: a second run on a workdir fails at once naming the holder; a lock
left by a dead process is taken over with a warning."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import shrink_config

from configs import toy_arith
from s2d_jax.workflow import pipeline, run_lock


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive for the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(workdir, pid, host=None):
    holder = {"host": host or socket.gethostname(), "pid": pid}
    (workdir / run_lock.LOCK_NAME).write_text(json.dumps(holder))


def _holder(workdir):
    return json.loads((workdir / run_lock.LOCK_NAME).read_text())


def test_lock_names_its_holder_and_is_released(tmp_path):
    with run_lock.hold(tmp_path):
        assert _holder(tmp_path) == {"host": socket.gethostname(), "pid": os.getpid()}
    assert not (tmp_path / run_lock.LOCK_NAME).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_second_holder_fails_naming_the_first(tmp_path, live_pid):
    _write_lock(tmp_path, live_pid)
    with pytest.raises(
        run_lock.RunLockedError, match=rf"host {socket.gethostname()}, pid {live_pid}"
    ):
        run_lock.acquire(tmp_path)
    assert _holder(tmp_path)["pid"] == live_pid  # untouched


def test_nested_hold_in_one_process_fails(tmp_path):
    with run_lock.hold(tmp_path), pytest.raises(run_lock.RunLockedError):
        run_lock.acquire(tmp_path)


def test_lock_on_another_host_is_respected(tmp_path):
    _write_lock(tmp_path, _dead_pid(), host="elsewhere")
    with pytest.raises(run_lock.RunLockedError, match="host elsewhere"):
        run_lock.acquire(tmp_path)


@pytest.mark.parametrize("pid", ["dead", "own"])
def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, pid):
    """'dead': the holder's pid is gone; 'own': it names this process's pid, which does not hold
    it (an earlier process of a restarted container had the same pid)."""
    _write_lock(tmp_path, _dead_pid() if pid == "dead" else os.getpid())
    with caplog.at_level(logging.WARNING), run_lock.hold(tmp_path):
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text


def test_unreadable_lock_is_taken_over(tmp_path):
    (tmp_path / run_lock.LOCK_NAME).write_text('{"host": ')
    with run_lock.hold(tmp_path):
        assert _holder(tmp_path)["pid"] == os.getpid()


def test_disabled_hold_takes_no_lock(tmp_path):
    with run_lock.hold(tmp_path, enabled=False):
        assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_pipeline_on_a_locked_workdir_fails_before_writing(tmp_path, live_pid):
    _write_lock(tmp_path, live_pid)
    config = shrink_config(toy_arith.get_config("stage3=false"), keep_stages=("student_sft",))
    with pytest.raises(run_lock.RunLockedError, match=f"pid {live_pid}"):
        pipeline.run(config, tmp_path)
    assert not (tmp_path / "config.json").exists()  # failed before writing anything
    assert _holder(tmp_path)["pid"] == live_pid


CONTENDER = """
import os, sys, time
from pathlib import Path
from s2d_jax.workflow import run_lock
workdir = Path(sys.argv[1])
(workdir / f"ready.{os.getpid()}").touch()
while not (workdir / "go").exists():
    time.sleep(0.001)
try:
    run_lock.acquire(workdir)
except run_lock.RunLockedError:
    print("locked", flush=True)
else:
    print("held", flush=True)
    while not (workdir / "done").exists():  # hold it until every contender has answered
        time.sleep(0.01)
"""


def _wait_for(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "contenders did not get there in time"
        time.sleep(0.01)


def test_racing_takeovers_of_a_stale_lock_leave_one_holder(tmp_path):
    from pathlib import Path

    _write_lock(tmp_path, _dead_pid())
    repo = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path)],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(4)
    ]
    _wait_for(lambda: len(list(tmp_path.glob("ready.*"))) == 4)
    (tmp_path / "go").touch()
    outcomes = [p.stdout.readline().strip() for p in procs]
    (tmp_path / "done").touch()
    for p in procs:
        p.wait(timeout=60)
    assert sorted(outcomes) == ["held", "locked", "locked", "locked"]
