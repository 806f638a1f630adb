"""The grading worker: a child process that compares answers with math-verify.

`s2d_jax.grading.pool` runs this file as a script (`python worker.py --cpu-limit-s ...`),
never through the package, so a worker imports only the standard library, sympy and math-verify.
Protocol, one JSON object per line: the parent writes `{"id": 3, "pred": "...", "gold": "..."}` on
stdin; the worker answers `{"ready": true}` once after start-up, then
`{"id": 3, "outcome": "correct" | "wrong" | "error", "detail": "..."}` per task on stdout. It exits
at end of input.

math-verify's own timeouts (signal.alarm) are disabled here; the parent enforces the deadline by
killing the worker. The worker also limits itself (address space; CPU seconds per task) so that a
runaway comparison ends even if the parent has died.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import sys

# Strings allowed into sympy's string parser: numeric literals (latex2sympy2's `sympy.Number(text)`
# parses its NUMBER tokens through sympify) and bare identifiers (sympy sympifies constant names such
# as unit prefixes while it imports modules lazily). Evaluating a lone name or number calls nothing.
_PARSABLE = re.compile(
    r"\s*(?:[+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[A-Za-z_][A-Za-z0-9_]*)\s*"
)


_WARM_UP = [
    ("\\frac{1}{2}", "0.5"),
    ("(x+1)^2", "x^2+2x+1"),
    ("\\{1,2\\}", "[1,2)"),
    ("x=2", "2"),
    ("50\\%", "\\sqrt{2}\\sin(\\pi/4)"),
]


class UnsafeParseError(RuntimeError):
    """Raised when sympy's string parser is asked to parse anything but a number or a name."""


@contextlib.contextmanager
def parse_guard():
    """Refuse sympy string parsing (sympify / parse_expr / S) of anything but a number or a name.

    sympy's string-to-code entry points (`sympify`, `S(...)`, `parse_expr`) all go through
    `sympy.parsing.sympy_parser.stringify_expr`, looked up as a module global at call time, so
    wrapping it covers them even where callers imported them by name. math-verify's LaTeX path only sends
    numeric tokens there; this guard turns "only" into an enforced rule inside the worker.
    Lazily imported sympy modules parse constant expressions of their own at import time; the
    worker imports them (warm-up) before it enters the guard.
    """
    from sympy.parsing import sympy_parser

    original = sympy_parser.stringify_expr

    def guarded(text, *args, **kwargs):
        if not _PARSABLE.fullmatch(text):
            raise UnsafeParseError(
                f"refused to parse a string that is not a number or a name: {text[:80]!r}"
            )
        return original(text, *args, **kwargs)

    sympy_parser.stringify_expr = guarded
    try:
        yield
    finally:
        sympy_parser.stringify_expr = original


def verify_pair(pred: str, gold: str) -> bool:
    """True when the answer `pred` is equivalent to the reference `gold` (both bare answers).

    Both are wrapped in `\\boxed{}` and parsed with the LaTeX extractor only: math-verify's
    ExprExtractionConfig path calls `parse_expr` and is not used. Timeouts are off (no signals);
    the caller bounds the time. Raises if every comparison raised and none matched.
    """
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
    # math-verify's verify() is "any pair matches" and, with raise_on_error=False, hides errors as
    # False; comparing pair by pair keeps its semantics while letting errors be counted.
    first_error = None
    for g in gold_parsed:
        for p in pred_parsed:
            try:
                if verify(g, p, timeout_seconds=None, raise_on_error=True):
                    return True
            except Exception as error:  # a sympy failure on one pair must not hide another pair
                first_error = first_error or error
    if first_error is not None:
        raise first_error
    return False


def _limit_resources(memory_limit_mb: int) -> None:
    """Cap the address space so a huge integer fails with MemoryError instead of swapping."""
    try:
        import resource
    except ImportError:  # not POSIX: rely on the parent's kill only
        return
    limit = memory_limit_mb * 2**20
    with contextlib.suppress(ValueError, OSError):  # some platforms refuse RLIMIT_AS
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _limit_cpu_for_next_task(cpu_limit_s: float) -> None:
    """Let this process use at most `cpu_limit_s` more CPU seconds (SIGXCPU ends it after)."""
    try:
        import resource
    except ImportError:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + cpu_limit_s) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-limit-s", type=float, required=True)
    parser.add_argument("--memory-limit-mb", type=int, required=True)
    args = parser.parse_args(argv)

    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    protocol = os.fdopen(os.dup(1), "w", encoding="ascii", buffering=1)
    os.dup2(2, 1)
    # Timeouts are disabled on purpose (the parent kills on overrun); silence the per-call warnings.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    _limit_resources(args.memory_limit_mb)

    def send(message):
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    # Warm-up on fixed strings: loads the parser and sympy's lazily imported modules (simplify pulls
    # in sympy.physics.units), so tasks are not charged for them and they import outside the guard.
    for pred, gold in _WARM_UP:
        verify_pair(pred, gold)
    with parse_guard():
        send({"ready": True})
        for line in sys.stdin.buffer:
            task = json.loads(line)
            _limit_cpu_for_next_task(args.cpu_limit_s)
            try:
                outcome = "correct" if verify_pair(task["pred"], task["gold"]) else "wrong"
                detail = ""
            except Exception as error:  # any failure is a graded "error", never a crash
                outcome, detail = "error", type(error).__name__
            send({"id": task["id"], "outcome": outcome, "detail": detail})


if __name__ == "__main__":
    # Run as a script, sys.path[0] is this package folder; drop it so that package modules named
    # like top-level ones (data/, metrics.py, ...) cannot shadow what sympy imports.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    main()
