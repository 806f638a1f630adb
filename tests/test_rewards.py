"""Tests for s2d_jax.grading.rewards, s2d_jax.grading.pool and s2d_jax.grading.worker."""

import json
import multiprocessing
import os
import pathlib
import signal
import threading
import time

import numpy as np
import pytest

from s2d_jax.grading import pool, rewards, worker

REPO = pathlib.Path(__file__).resolve().parents[1]
SLACK_S = 1.5  # kill, IPC and a loaded 2-core machine, on top of the grading limit


def _data_file(name: str) -> pathlib.Path:
    """A benchmark file that ships in the package."""
    return REPO / "s2d_jax" / "data" / "files" / name


def _read_jsonl(name: str) -> list[dict]:
    with open(_data_file(name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def grader():
    with rewards.Grader(workers=2, timeout_s=5.0) as g:
        yield g


@pytest.fixture(scope="module")
def fast_grader():
    """A pool with a 2 s limit, for inputs meant to time out."""
    with rewards.Grader(workers=2, timeout_s=2.0) as g:
        yield g


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{5}.", "5"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not grouping braces
        (r"\boxed{\{1, \}}", r"\{1, \}"),
        (r"$\boxed 5$.", "5"),
        (r"\boxed 42.", "42"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1} and \fbox{2}", "2"),
        ("\\boxed{3}\n#### Step 2: check", "3"),  # a markdown heading is not an answer
        ("#### 4\n\\boxed{5}", "5"),
        (r"\boxed{5", None),  # truncated
        (r"\boxed{1} then \boxed{2", None),  # the last box is truncated: no fallback
        (r"\boxed{}", None),
        (r"\boxed{  }", None),
        ("The answer is 5.", None),
        ("", None),
    ],
)
@pytest.mark.parametrize("answer_style", rewards.ANSWER_STYLES)
def test_extract_answer(text, expected, answer_style):
    assert rewards.extract_answer(text, answer_style=answer_style) == expected


@pytest.mark.parametrize(
    "text, boxed, gsm8k",
    [
        ("Total 9 * 2 = 18.\n#### 18", None, "18"),
        ("#### 1,234\n", None, "1,234"),
        ("#### $5", None, "$5"),
        ("So \\boxed{204}.\n#### 3", "204", "3"),  # the later marker wins only for GSM8K
        ("#### 3\nSo \\boxed{204}.", "204", "204"),
    ],
)
def test_extract_answer_reads_the_gsm8k_marker_only_in_gsm8k_style(text, boxed, gsm8k):
    assert rewards.extract_answer(text, answer_style="boxed") == boxed
    assert rewards.extract_answer(text, answer_style="gsm8k") == gsm8k


def test_extract_answer_rejects_an_unknown_style():
    with pytest.raises(ValueError, match="answer_style must be one of .* got 'math'"):
        rewards.extract_answer(r"\boxed{1}", answer_style="math")


def test_extract_answer_rejects_non_text():
    with pytest.raises(TypeError, match="str"):
        rewards.extract_answer(None, answer_style="boxed")


@pytest.mark.parametrize(
    "name, text",
    [
        ("plain", "a" * 2**20 + r"\boxed{1}"),
        ("open braces", r"\boxed{" + "{" * 2**20),
        ("closed nest", r"\boxed{" + "{" * 2**19 + "}" * 2**19 + "}"),
        ("many boxes", r"\boxed{" * 2**17),
        ("many hashes", "#### 1a\n" * 2**17),
        ("long number", "#### " + "1" * 2**20 + "x"),
        ("backslashes", "\\" * 2**20 + r"\boxed{2}"),
    ],
)
@pytest.mark.parametrize("answer_style", rewards.ANSWER_STYLES)
def test_extract_answer_is_fast_on_1mb(name, text, answer_style):
    start = time.perf_counter()
    rewards.extract_answer(text, answer_style=answer_style)
    assert time.perf_counter() - start < 2.0, name


# ----------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    "answer, expected",
    [
        (r"\left( 3, \dfrac{\pi}{2} \right)", r"( 3, \frac{\pi}{2} )"),
        (r"\tfrac{3}{4}", r"\frac{3}{4}"),
        ("1,000", "1000"),
        ("12,345,678.5", "12345678.5"),
        (r"1\,000", "1000"),
        ("1{,}000", "1000"),
        ("1,2", "1,2"),  # not a thousands separator
        (r"\$18.00", "18"),
        ("$x$", "x"),
        ("2.50", "2.5"),
        ("100.", "100"),
        ("0.000", "0"),
        ("50%", r"50\%"),
        (r"50\%", r"50\%"),
        (r"5\text{ cm}", "5"),
        (r"12 \mbox{ square feet}", "12"),
        (r"4\text{ cm}^2", "4"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"\text{(C)}", "C"),
        ("(B)", "B"),
        (r"\text{Devon}", r"\text{Devon}"),
        ("  x  =  2 ", "x = 2"),
    ],
)
def test_normalize_answer(answer, expected):
    assert rewards.normalize_answer(answer) == expected


# ----------------------------------------------------------------------------- grading
EQUIVALENT = [
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12"),
    (r"\boxed{\tfrac{3}{4}}", "0.75"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}"),
    (r"\boxed{[0, 1)}", "[0,1)"),
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3]"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3,\frac{\pi}{2})"),
    (r"\boxed{x = 2}", "2"),
    (r"\boxed{2}", "x=2"),
    (r"\boxed{50\%}", "50"),
    (r"\boxed{50\%}", "0.5"),
    (r"\boxed{5\text{ cm}}", "5"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{\$18.00}", "18"),
    (r"\boxed{90^\circ}", "90"),
    (r"\boxed{(x+1)^2}", "x^2+2x+1"),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    (r"\boxed{\text{(C)}}", "C"),
    (r"\boxed 5", "5"),
    (r"\fbox{7}", "7"),
]
NOT_EQUIVALENT = [
    (r"\boxed{0.51}", r"\frac{1}{2}"),
    (r"\boxed{\frac{2}{3}}", "0.6"),
    (r"\boxed{\{1, 2\}}", r"\{1,2,3\}"),
    (r"\boxed{[0, 1]}", "[0,1)"),
    (r"\boxed{(1, 2)}", "(2, 1)"),
    (r"\boxed{x = 3}", "2"),
    (r"\boxed{2}", "-2"),
    (r"\boxed{5\%}", "50"),
    (r"\boxed{1,001}", "1000"),
    (r"\boxed{\sqrt{3}}", r"\sqrt{2}"),
    (r"\boxed{x^2+1}", "(x+1)^2"),
    (r"\boxed{\text{(B)}}", "C"),
    (r"\boxed{\text{Evan}}", r"\text{Devon}"),
    ("The answer is 5.", "5"),  # no final-answer marker
    (r"\boxed{5", "5"),  # truncated
    (r"\boxed{}", "5"),
]


def test_equivalence_table(grader):
    table = [(r, a, 1.0) for r, a in EQUIVALENT] + [(r, a, 0.0) for r, a in NOT_EQUIVALENT]
    responses, references = [r for r, _, _ in table], [a for _, a, _ in table]
    rewards_B, stats = grader.grade(responses, references, answer_style="boxed")
    assert rewards_B.dtype == np.float32 and rewards_B.shape == (len(table),)
    wrong = [
        (r, a, want) for (r, a, want), got in zip(table, rewards_B, strict=True) if got != want
    ]
    assert not wrong, wrong
    assert stats["reward/no_answer"] == 3
    assert stats["reward/timeouts"] == stats["reward/errors"] == 0
    assert stats["reward/mean"] == pytest.approx(len(EQUIVALENT) / len(table))


def test_math_reward():
    assert rewards.math_reward(r"so \boxed{0.5}", r"\frac{1}{2}") == 1.0  # needs a worker
    assert rewards.math_reward(r"\boxed{1,000}", "1000") == 1.0  # settled by the string screen
    assert rewards.math_reward("no answer here", "4") == 0.0


def test_math_and_aime_answers_ignore_a_later_gsm8k_line(grader):
    """A MATH/AIME completion boxes its answer, then prints a stray `#### 3` line."""
    text = "The count is $\\boxed{204}$.\n#### 3"
    assert rewards.math_reward(text, "204") == 1.0
    assert rewards.math_reward(text, "3") == 0.0
    rewards_B, _ = grader.grade([text, text], ["204", "3"], answer_style="boxed")
    assert rewards_B.tolist() == [1.0, 0.0]
    rewards_B, _ = grader.grade([text, text], ["204", "3"], answer_style="gsm8k")
    assert rewards_B.tolist() == [0.0, 1.0]  # GSM8K's own final line is the answer there


def test_judge_tells_each_reason_apart(fast_grader):
    fast_grader.start()
    responses = [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{2}", "no box", r"\boxed{0.5}", r"\boxed{12}"]
    references = ["1", "3", "1", r"\frac12", "12"]
    judgments = fast_grader.judge(responses, references, answer_style="boxed")
    assert judgments == ["timeout", "wrong", "no_answer", "correct", "correct"]
    assert set(judgments) <= set(rewards.JUDGMENTS)


def test_equivalent_compares_two_model_answers(grader):
    pairs = [("0.5", r"\frac{1}{2}"), ("1,000", "1000"), ("2", "3"), (r"\dfrac{2}{4}", "0.5")]
    assert grader.equivalent(pairs) == ["correct", "correct", "wrong", "correct"]
    too_long = "1" * (grader.max_answer_chars + 1)
    assert grader.equivalent([(too_long, too_long), ("1", "1.0")]) == ["wrong", "correct"]


def test_zero_truncated():
    rewards_B = np.array([1.0, 1.0, 0.0, 0.25], np.float32)
    truncated_B = np.array([True, False, True, False])
    scored_B = rewards.zero_truncated(rewards_B, truncated_B)
    assert scored_B.tolist() == [0.0, 1.0, 0.0, 0.25] and scored_B.dtype == np.float32
    with pytest.raises(ValueError, match=r"rewards \(4,\) and truncated \(3,\)"):
        rewards.zero_truncated(rewards_B, truncated_B[:3])


def test_grade_checks_its_inputs(grader):
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        grader.grade(["a", "b"], ["1"], answer_style="boxed")
    with pytest.raises(ValueError, match="reference 0"):
        grader.grade([r"\boxed{1}"], ["  "], answer_style="boxed")
    with pytest.raises(ValueError, match="got 'MATH'"):
        grader.grade([r"\boxed{1}"], ["1"], answer_style="MATH")


# MATH-500 rows whose reference solution's boxed answer is not graded equal to the `answer` field,
# with the reason. Grading all 500 agrees at the time of writing, so the list is empty; a row
# appearing here needs a reason, and a listed row that starts agreeing must be removed.
MATH500_EXCEPTIONS: dict[str, str] = {}


def test_math500_reference_solutions_agree(grader):
    rows = _read_jsonl("math500.jsonl")
    assert len(rows) == 500
    solutions, references = [r["solution"] for r in rows], [r["answer"] for r in rows]
    rewards_B, stats = grader.grade(solutions, references, answer_style="boxed")
    disagree = {r["unique_id"] for r, v in zip(rows, rewards_B, strict=True) if v != 1.0}
    assert disagree == set(MATH500_EXCEPTIONS)
    assert rewards_B.mean() >= 0.99
    assert stats["reward/timeouts"] == stats["reward/errors"] == 0


def test_math500_agrees_through_math_verify_alone(grader):
    """The same rows without the string screen, and shifted by one row as negatives."""
    rows = _read_jsonl("math500.jsonl")
    answers = [
        rewards.normalize_answer(rewards.extract_answer(r["solution"], answer_style="boxed"))
        for r in rows
    ]
    references = [rewards.normalize_answer(r["answer"]) for r in rows]
    shifted = references[1:] + references[:1]
    with pool.VerifierPool(workers=2, timeout_s=5.0) as verifier:
        outcomes = verifier.verify(list(zip(answers + answers, references + shifted, strict=True)))
    same, other = outcomes[: len(rows)], outcomes[len(rows) :]
    disagree = {r["unique_id"] for r, o in zip(rows, same, strict=True) if o != "correct"}
    assert disagree == set(MATH500_EXCEPTIONS)
    # Neighbouring rows whose answers really are equal (checked by hand).
    equal_neighbours = {
        "test/algebra/1837.json": "5 vs the next row's x=5",
        "test/number_theory/978.json": "7 vs 7",
        "test/number_theory/928.json": "3 vs 3",
    }
    matched = {r["unique_id"] for r, o in zip(rows, other, strict=True) if o == "correct"}
    assert matched == set(equal_neighbours)
    assert other.count("wrong") == len(rows) - len(equal_neighbours)


def test_gsm8k_answers(grader):
    rows = _read_jsonl("gsm8k_test.jsonl")
    numbers = [r["answer"].rsplit("\n", 1)[-1].removeprefix("#### ").replace(",", "") for r in rows]
    assert all(n.lstrip("-").isdigit() for n in numbers)
    rewards_B, stats = grader.grade([r["answer"] for r in rows], numbers, answer_style="gsm8k")
    assert rewards_B.mean() == 1.0 and stats["reward/verifier_calls"] == 0
    # Model-style answers to the first rows, and off-by-one numbers as negatives.
    first = numbers[:40]
    styles = [rf"\boxed{{{n}}}" for n in first] + [rf"$\boxed{{\${int(n):,}.00}}$" for n in first]
    rewards_B, _ = grader.grade(styles, first + first, answer_style="gsm8k")
    assert rewards_B.mean() == 1.0
    rewards_B, _ = grader.grade([f"#### {int(n) + 1}" for n in first], first, answer_style="gsm8k")
    assert rewards_B.max() == 0.0


# ----------------------------------------------------------------------------- safety
def _payloads(sentinel: pathlib.Path) -> list[str]:
    cmd = f"__import__('os').system('touch {sentinel}')"
    return [
        cmd,
        f"{cmd} + 1",
        f"1 + {cmd}",
        f"x = {cmd}",
        rf"\{{{cmd}\}}",
        f"({cmd}, 1)",
        f"[{cmd}, 2)",
        rf"\frac{{{cmd}}}{{2}}",
        rf"{cmd}\%",
        rf"\text{{{cmd}}}",
        rf"\operatorname{{{cmd}}}",
        rf"\mathrm{{eval}}({cmd})",
        f'eval("{cmd}")',
        f"exec('import os; os.system(\"touch {sentinel}\")')",
        f"(lambda: {cmd})()",
        f"1 if {cmd} else 2",
        f"__builtins__.__dict__['eval']('{cmd}')",
        f"$ {cmd} $",
        f"{cmd} {{}}",
    ]


def test_injection_probes_never_execute(grader, tmp_path):
    sentinel = tmp_path / "pwned"
    payloads = _payloads(sentinel)
    responses, references = [], []
    for p in payloads:
        for wrapped in (rf"\boxed{{{p}}}", rf"\fbox{{{p}}}", rf"\boxed {p}", f"#### {p}"):
            responses += [wrapped, wrapped, r"\boxed{2}"]
            references += ["2", p, p]  # the payload as answer, as both, and as the reference
    for p in payloads:
        boxed = rf"\boxed{{{p}}}"
        rewards.normalize_answer(rewards.extract_answer(boxed, answer_style="boxed") or "")
    rewards_B, _ = grader.grade(responses, references, answer_style="gsm8k")  # reads `####` too
    assert not sentinel.exists()
    # Bypass the string screen too: every probe goes to math-verify in a worker.
    with pool.VerifierPool(workers=2, timeout_s=5.0) as verifier:
        verifier.verify([(p, "2") for p in payloads] + [("2", p) for p in payloads])
    assert not sentinel.exists()


def test_math_verify_parses_only_numeric_strings(tmp_path, monkeypatch):
    """In this process, without the worker's guard: record what reaches sympy's string parser.

    Payload strings must never get there; numbers do (latex2sympy2's NUMBER tokens), and so do
    constant names when sympy lazily imports sympy.physics.units.
    """
    from sympy.parsing import sympy_parser

    sentinel = tmp_path / "pwned"
    seen = []
    original = sympy_parser.stringify_expr
    monkeypatch.setattr(
        sympy_parser, "stringify_expr", lambda s, *a, **k: seen.append(s) or original(s, *a, **k)
    )
    monkeypatch.setattr(os, "system", lambda *a: pytest.fail(f"os.system called with {a}"))
    signal.alarm(60)  # in-process math-verify has no limit here; fail rather than hang
    try:
        for p in _payloads(sentinel) + ["12.5", r"\frac{1,000}{3}", "50\\%"]:
            worker.verify_pair(p, "2")
            worker.verify_pair("2", p)
    finally:
        signal.alarm(0)
    assert not sentinel.exists()
    assert seen and all(worker._PARSABLE.fullmatch(s) for s in seen), seen


def test_parse_guard_refuses_code(tmp_path):
    import sympy
    from sympy.parsing.sympy_parser import parse_expr

    sentinel = tmp_path / "pwned"
    with worker.parse_guard():
        assert sympy.sympify("12") == 12
        assert sympy.Number("1.5") == sympy.Float(1.5)
        with pytest.raises(worker.UnsafeParseError):
            sympy.sympify(f"__import__('os').system('touch {sentinel}')")
        assert sympy.sympify("yotta") == sympy.Symbol("yotta")  # a lone name calls nothing
        with pytest.raises(worker.UnsafeParseError):
            parse_expr("x + 1", evaluate=False)
        with pytest.raises(worker.UnsafeParseError):
            sympy.S("exit()")
    assert not sentinel.exists()
    assert sympy.sympify("x + 1") == sympy.Symbol("x") + 1  # restored on exit


# ----------------------------------------------------------------------------- time limits
PATHOLOGICAL_PAIRS = [
    [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{(10^{100})!}"],
    [r"\boxed{10^{10^{10}}}", r"\boxed{" + "{" * 900 + "1" + "}" * 900 + "}"],
    [r"\boxed{x^{9^{9^{9}}}}", r"\boxed{" + "(" * 900 + "1" + ")" * 900 + "}"],
]


@pytest.mark.parametrize("pair", PATHOLOGICAL_PAIRS, ids=["tower", "huge", "nesting"])
def test_pathological_inputs_return_within_limit(fast_grader, pair):
    fast_grader.start()  # a replacement from the previous case may still be starting
    start = time.perf_counter()
    rewards_B, stats = fast_grader.grade(pair, ["1", "1"], answer_style="boxed")
    assert time.perf_counter() - start < fast_grader._pool.timeout_s + SLACK_S
    assert rewards_B.tolist() == [0.0, 0.0]
    assert stats["reward/verifier_calls"] == 2


def test_one_megabyte_responses_return_quickly(fast_grader):
    texts = [
        "x" * 2**20,
        r"\boxed{" + "1" * 2**20 + "}",
        r"\boxed{" + r"\frac{1}{" * 2**16 + "2" + "}" * 2**16 + "}",
        r"\boxed{" + "{" * 2**20,
        "#### " + "9" * 2**20,
    ]
    start = time.perf_counter()
    rewards_B, stats = fast_grader.grade(texts, ["1"] * len(texts), answer_style="gsm8k")
    assert time.perf_counter() - start < fast_grader._pool.timeout_s
    assert rewards_B.max() == 0.0
    assert stats["reward/too_long"] == 3 and stats["reward/no_answer"] == 2


def _grade_in_daemon(queue):
    rewards_B, stats = rewards.batch_reward(
        [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{0.5}"],
        ["1", r"\frac12"],
        answer_style="boxed",
        timeout_s=2.0,
    )
    queue.put((rewards_B.tolist(), stats["reward/timeouts"]))


def test_limit_works_from_a_thread_and_a_daemonic_process():
    results = []
    thread = threading.Thread(target=lambda: results.append(_grade_in_thread()))
    thread.start()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_grade_in_daemon, args=(queue,), daemon=True)
    process.start()
    from_daemon = queue.get(timeout=120)
    process.join(timeout=30)
    thread.join(timeout=120)
    assert results == [([0.0, 1.0], 1.0)]
    assert from_daemon == ([0.0, 1.0], 1.0)


def _grade_in_thread():
    with rewards.Grader(workers=2, timeout_s=2.0) as g:
        rewards_B, stats = g.grade(
            [r"\boxed{9^{9^{9^{9}}}}", r"\boxed{0.5}"], ["1", r"\frac12"], answer_style="boxed"
        )
    return rewards_B.tolist(), stats["reward/timeouts"]


# ----------------------------------------------------------------------------- pool mechanics
FAKE_WORKER = """
import json, os, sys, time
if os.environ.get("FAKE_WORKER_FAIL"):
    sys.exit(3)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    if task["pred"] == "crash":
        os._exit(1)
    if task["pred"] == "hang":
        time.sleep(60)
    outcome = "error" if task["pred"] == "raise" else (
        "correct" if task["pred"] == task["gold"] else "wrong")
    print(json.dumps({"id": task["id"], "outcome": outcome, "detail": ""}), flush=True)
"""


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(pool, "_WORKER_SCRIPT", str(script))


def test_pool_counts_crashes_and_overruns_and_recovers(fake_worker):
    pairs = [("a", "a"), ("crash", "x"), ("b", "c"), ("hang", "x"), ("raise", "x"), ("d", "d")]
    with pool.VerifierPool(workers=2, timeout_s=0.5) as verifier:
        start = time.perf_counter()
        outcomes = verifier.verify(pairs * 2)
        assert time.perf_counter() - start < 2 * 0.5 + 3.0
        assert outcomes == ["correct", "error", "wrong", "timeout", "error", "correct"] * 2
        assert verifier.verify([("e", "e")]) == ["correct"]
    with pytest.raises(RuntimeError, match="closed"):
        verifier.verify([("e", "e")])
    verifier.close()  # idempotent


def test_pool_reports_a_worker_that_cannot_start(fake_worker, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_FAIL", "1")
    with pool.VerifierPool(workers=1, timeout_s=1.0) as verifier:
        with pytest.raises(RuntimeError, match="exited with code 3 before it was ready"):
            verifier.verify([("a", "a")])


def test_math_reward_keeps_one_worker_across_calls(fake_worker, monkeypatch):
    """A loop of math_reward calls that all need the verifier starts one worker, not one each."""
    spawned = []
    spawn = pool.VerifierPool._spawn
    monkeypatch.setattr(pool.VerifierPool, "_spawn", lambda self: spawned.append(1) or spawn(self))
    rewards.close_shared()
    try:
        results = [rewards.math_reward(rf"\boxed{{{i}}}", "x") for i in range(20)]
        assert results == [0.0] * 20  # the fake worker: different strings are wrong
        assert len(spawned) == 1
        (verifier,) = [g._pool for g in rewards._shared.values()]
        (proc,) = verifier._procs
    finally:
        rewards.close_shared()
    assert proc.poll() is not None  # the worker is stopped
    assert rewards.math_reward(r"\boxed{1}", "x") == 0.0  # and a later call starts a new one
    rewards.close_shared()


def test_math_reward_exits_cleanly():
    import subprocess
    import sys

    code = "from s2d_jax.grading import rewards; print(rewards.math_reward(r'so \\boxed{0.5}', r'\\frac12'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "1.0\n", "")
