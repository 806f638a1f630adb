"""A small pool of persistent grading processes with a hard per-comparison deadline.

Why processes, and why these: math-verify's timeout is `signal.alarm`, which fails outside the main
thread, and a pathological answer (`9^{9^{9^{9}}}`) can hang sympy in C code where no in-process
timeout reaches. So each comparison runs in a child process and the parent kills and replaces a
child that overruns. The children are plain `subprocess` children running
`s2d_jax/grading/worker.py` over JSON lines: unlike `multiprocessing`, this works from any thread,
from inside daemonic worker processes (which `multiprocessing` forbids to have children), does not
re-import the caller's `__main__`, and never imports jax into the workers.

Start-up costs about a second per worker, so a training loop keeps one pool for the whole run.
"""

import dataclasses
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
OUTCOMES = ("correct", "wrong", "timeout", "error")


@dataclasses.dataclass
class _Worker:
    proc: subprocess.Popen
    started_at: float
    buffer: bytes = b""
    ready: bool = False
    task: int | None = None  # index into the current batch, None when idle
    deadline: float = float("inf")


def _kill(procs: list) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    procs.clear()


class VerifierPool:
    """Persistent worker processes comparing (answer, reference) pairs with math-verify.

    Use as a context manager, or call `close()`. Workers start lazily on the first `verify` call,
    or eagerly with `start()`. One pool may be used from any thread; calls are serialised.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        memory_limit_mb: int = 4096,
        startup_timeout_s: float = 120.0,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = workers
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._procs: list[subprocess.Popen] = []  # shared with the finalizer below
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._closed = False
        # Kill the children if the pool is dropped without close(), e.g. on an exception path.
        self._finalizer = weakref.finalize(self, _kill, self._procs)

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker. Idempotent."""
        with self._lock:
            self._closed = True
            self._kill_all()
            self._selector.close()

    def start(self, wait: bool = True) -> None:
        """Start missing workers now; with `wait`, block until all are ready."""
        with self._lock:
            self._check_open()
            self._start_missing()
            while wait and not all(w.ready for w in self._workers):
                self._poll(self._startup_wait(time.monotonic()), outcomes=None)

    def verify(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """Compare each (answer, reference) pair; return one outcome per pair, from `OUTCOMES`.

        "timeout": the worker ran past `timeout_s` (counted from the moment it received the pair)
        and was killed and replaced. "error": the comparison raised or the worker died.
        """
        with self._lock:
            self._check_open()
            try:
                return self._run(list(pairs))
            except BaseException:
                # A half-finished batch leaves workers busy with stale tasks; start afresh next time.
                self._kill_all()
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VerifierPool is closed")

    def _run(self, pairs: list[tuple[str, str]]) -> list[str]:
        outcomes: list[str | None] = [None] * len(pairs)
        pending = deque(range(len(pairs)))
        self._start_missing()
        while True:
            now = time.monotonic()
            for worker in self._workers:
                if worker.ready and worker.task is None and pending:
                    self._dispatch(worker, pending, pairs, now)
            for worker in list(self._workers):
                if worker.task is not None and now >= worker.deadline:
                    outcomes[worker.task] = "timeout"
                    self._replace(worker)
            busy = [w.deadline for w in self._workers if w.task is not None]
            if not pending and not busy:
                break  # replacements still starting are left to become ready in the background
            wait_s = min(busy) - now if busy else self._startup_wait(now)
            self._poll(max(wait_s, 0.0), outcomes)
        return outcomes  # type: ignore[return-value]  # every slot was filled above

    def _dispatch(self, worker: _Worker, pending: deque, pairs: list, now: float) -> None:
        index = pending.popleft()
        pred, gold = pairs[index]
        line = json.dumps({"id": index, "pred": pred, "gold": gold}) + "\n"
        try:
            worker.proc.stdin.write(line.encode("ascii"))
            worker.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            # The worker died while idle: the pair is not to blame, so it goes back in the queue.
            pending.appendleft(index)
            self._replace(worker)
            return
        worker.task, worker.deadline = index, now + self.timeout_s

    def _startup_wait(self, now: float) -> float:
        starting = [w.started_at for w in self._workers if not w.ready]
        if not starting:
            return 0.0
        wait_s = min(starting) + self.startup_timeout_s - now
        if wait_s <= 0:
            raise RuntimeError(
                f"a grading worker ({_WORKER_SCRIPT}) was not ready after "
                f"{self.startup_timeout_s:.0f} s; is the machine overloaded?"
            )
        return wait_s

    def _poll(self, wait_s: float, outcomes: list | None) -> None:
        """Wait up to `wait_s` for worker output and handle every complete line."""
        for key, _ in self._selector.select(timeout=wait_s):
            worker = key.data
            data = os.read(key.fd, 1 << 16)
            if not data:  # end of file: the worker died (crash, CPU or memory limit)
                if not worker.ready:
                    code = worker.proc.wait()
                    self._replace(worker, restart=False)
                    raise RuntimeError(
                        f"a grading worker ({sys.executable} {_WORKER_SCRIPT}) exited with code "
                        f"{code} before it was ready; its error output is above"
                    )
                if worker.task is not None and outcomes is not None:
                    outcomes[worker.task] = "error"
                self._replace(worker)
                continue
            worker.buffer += data
            *lines, worker.buffer = worker.buffer.split(b"\n")
            for line in lines:
                self._handle_message(worker, json.loads(line), outcomes)

    @staticmethod
    def _handle_message(worker: _Worker, message: dict, outcomes: list | None) -> None:
        if message.get("ready"):
            worker.ready = True
        elif message["id"] == worker.task and outcomes is not None:
            outcomes[worker.task] = message["outcome"]
            worker.task, worker.deadline = None, float("inf")

    def _start_missing(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        proc = subprocess.Popen(
            [
                sys.executable,
                _WORKER_SCRIPT,
                f"--cpu-limit-s={self.timeout_s + 30.0}",
                f"--memory-limit-mb={self.memory_limit_mb}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Own session: a Ctrl-C meant for the parent does not hit workers mid-task.
            start_new_session=True,
        )
        self._procs.append(proc)
        worker = _Worker(proc=proc, started_at=time.monotonic())
        self._selector.register(proc.stdout, selectors.EVENT_READ, data=worker)
        return worker

    def _replace(self, worker: _Worker, restart: bool = True) -> None:
        self._selector.unregister(worker.proc.stdout)
        self._procs.remove(worker.proc)
        _kill([worker.proc])
        index = self._workers.index(worker)
        if restart:
            self._workers[index] = self._spawn()
        else:
            del self._workers[index]

    def _kill_all(self) -> None:
        for worker in self._workers:
            self._selector.unregister(worker.proc.stdout)
        self._workers.clear()
        _kill(self._procs)
