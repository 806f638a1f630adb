r"""Math answer grading: extract the final answer from model text and check it against a reference.

    rewards.extract_answer(text, answer_style="boxed")    # last \boxed{..}/\fbox{..}
    rewards.extract_answer(text, answer_style="gsm8k")    # ... or a later "#### N"
    rewards.math_reward(response, reference)              # 1.0 / 0.0, "boxed", on a shared pool
    with rewards.Grader(workers=2, timeout_s=5.0) as grader:
        rewards_B, stats = grader.grade(responses, references, answer_style="boxed")  # [B] float32
        judgments = grader.judge(responses, references, answer_style="boxed")  # one per response
        verdicts = grader.equivalent([(answer, other_answer), ...])  # pool.OUTCOMES
    rewards.batch_reward(responses, references, answer_style="boxed", workers=2)  # one-off pool

Answer styles (`ANSWER_STYLES`): "boxed" (MATH, AIME, the toy) reads only the last box, so a
`#### 3` line after `\boxed{204}` does not replace the answer; "gsm8k" also reads GSM8K's final
`#### N` line, whichever of the two comes last.

Order of checks per response: no extracted answer -> 0.0 ("reward/no_answer", no worker round
trip); answer longer than `max_answer_chars` -> 0.0 ("reward/too_long"); equal strings after
`normalize_answer` -> 1.0; otherwise math-verify in a worker process (`pool.py`), where an
overrun ("reward/timeouts") or an exception ("reward/errors") gives 0.0. `judge` keeps these
reasons per response (`JUDGMENTS`), so a timeout stays distinguishable from a wrong answer.
A rollout cut at the token limit scores 0 whatever it boxed (`zero_truncated`), in training and
evaluation alike.

Model text is untrusted. What math-verify 0.9.0 / latex2sympy2_extended 1.11.0 do with strings,
read from their source:
- `parse` with `LatexExtractionConfig` finds LaTeX by regex, normalises it with string operations
  and converts it with the ANTLR LaTeX grammar into sympy objects built by constructors
  (`Symbol`, `Function(name)`, `Rational`, ...): no eval. The one string parse on this path is
  `sympy.Number(text)` on the grammar's NUMBER tokens, which calls `sympify` on digit strings.
- `parse` with `ExprExtractionConfig` (a default target) calls `sympy.parse_expr` on a regex match
  made only of digits, `.`, spaces and `+-*/^()×÷`. It is not used here (LaTeX target only).
- `verify` works on parsed sympy objects or compares strings with `==`; it never parses text.
- latex2sympy2's `parse_expr` on `variable_values` is only reached when a caller passes them.
- sympy itself sympifies constant names (unit prefixes) when `simplify` first imports
  sympy.physics.units; recording every string that reaches sympy's parser while grading MATH-500
  and the injection probes (tests/test_rewards.py) showed only numbers and such names.
We never call eval/exec/sympify/parse_expr/S on model text, and the worker additionally wraps
sympy's string parser (`worker.parse_guard`) to refuse anything but a number or a name.
"""

import atexit
import os
import re
import threading
from collections.abc import Sequence

import numpy as np

from s2d_jax.grading.pool import VerifierPool

ANSWER_STYLES = ("boxed", "gsm8k")
# What `Grader.judge` says of one response; "correct" is the only one that earns reward.
JUDGMENTS = ("correct", "wrong", "no_answer", "too_long", "timeout", "error")
_STAT_OF_JUDGMENT = {
    "no_answer": "reward/no_answer",
    "too_long": "reward/too_long",
    "timeout": "reward/timeouts",
    "error": "reward/errors",
}

# GSM8K's final line, "#### 1,234". The number is required (model text also has markdown
# "#### Step 2" headings). The pattern has no nested quantifiers, so matching stays linear.
_GSM8K_ANSWER = re.compile(r"####[ \t]*(\$?-?\d[\d,]*(?:\.\d+)?)[ \t]*\.?[ \t]*$", re.MULTILINE)
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # escaped characters (\{ \}) are not grouping
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# `\boxed 5`: the run of non-space characters after the space, up to a closing `$`.
_BARE_BOX_ARGUMENT = re.compile(r"[ \t]+([^\s$]+)")


def _braced_group(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at `open_index`, or None when it never closes."""
    depth = 0
    for token in _BRACE_TOKEN.finditer(text, open_index):
        if token.group() == "{":
            depth += 1
        elif token.group() == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : token.start()]
    return None


def _box_content(text: str, start: int, command: str) -> str | None:
    after = start + len(command)
    rest = text[after : after + 1]
    if rest == "{":
        return _braced_group(text, after)
    match = _BARE_BOX_ARGUMENT.match(text, after)
    return match.group(1).rstrip(".,;:") if match else None


def check_answer_style(answer_style: str) -> str:
    """`answer_style` itself, or a ValueError naming it when it is not one of `ANSWER_STYLES`."""
    if answer_style not in ANSWER_STYLES:
        raise ValueError(f"answer_style must be one of {ANSWER_STYLES}, got {answer_style!r}")
    return answer_style


def _last_gsm8k_answer(text: str) -> re.Match | None:
    last = None
    for last in _GSM8K_ANSWER.finditer(text):  # noqa: B007 - we want the last match
        pass
    return last


def extract_answer(text: str, *, answer_style: str) -> str | None:
    r"""The final answer in `text`: the last `\boxed{...}` or `\fbox{...}`; with
    answer_style "gsm8k" also GSM8K's `#### N` line, whichever marker comes last.

    Nested braces are matched; `\{`/`\}` do not count. An unclosed or empty last box gives None
    (a truncated answer is not an answer), as does text without any marker. Linear in `len(text)`.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects model text as str, got {type(text).__name__}")
    check_answer_style(answer_style)
    box_start, box_command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    gsm_match = _last_gsm8k_answer(text) if answer_style == "gsm8k" else None
    if gsm_match is not None and gsm_match.start() > box_start:
        answer = gsm_match.group(1)
    elif box_start >= 0:
        answer = _box_content(text, box_start, box_command)
    else:
        return None
    if answer is None or not answer.strip():
        return None
    return answer.strip()


_SUBSTITUTIONS = [
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])\.?"), ""),
    (re.compile(r"\\(?:displaystyle|textstyle|q?quad)(?![a-zA-Z])|~"), " "),
    (re.compile(r"\\[,;:! ]"), ""),  # thin spaces, also inside numbers: 1\,000 and 1,\!000
    (re.compile(r"\\?\$"), ""),  # dollar signs, as currency or math delimiters
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°"), ""),  # degrees
    (re.compile(r"(?<!\\)%"), r"\\%"),  # a bare % is a LaTeX comment; math-verify reads \%
    (re.compile(r"\{,\}"), ","),  # 1{,}000
    (re.compile(r"\s+"), " "),
]
_TRAILING_UNIT = re.compile(
    r"(.*\d)\s*\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?\d\}?)?"
)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"-?\d+\.\d*")
_CHOICE = re.compile(r"\\text\{\s*\(?([A-E])\)?\s*\}|\(([A-E])\)")


def normalize_answer(answer: str) -> str:
    r"""Canonical string form of an answer, kept in LaTeX that math-verify still reads.

    Drops `\left`/`\right`, spacing commands, dollar signs, degrees and a trailing `\text{unit}`
    after a number; `\dfrac`/`\tfrac` -> `\frac`; `%` -> `\%`; `1,000` -> `1000`; `2.50` -> `2.5`;
    `\text{(C)}` -> `C`; collapses spaces and drops one trailing period.
    """
    s = answer.strip()
    for pattern, replacement in _SUBSTITUTIONS:
        s = pattern.sub(replacement, s)
    s = s.strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    if match := _TRAILING_UNIT.fullmatch(s):
        s = match.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _DECIMAL.fullmatch(s):
        s = s.rstrip("0").rstrip(".")
    if match := _CHOICE.fullmatch(s):
        s = match.group(1) or match.group(2)
    return s


def _same_string(a: str, b: str) -> bool:
    return a.replace(" ", "") == b.replace(" ", "")


class Grader:
    """Grades batches of responses; keeps its worker processes between calls.

    Use as a context manager (or call `close()`); workers start on the first `grade` call or
    on `start()`. Safe to call from any thread, and from inside worker processes.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        max_answer_chars: int = 2000,
        memory_limit_mb: int = 4096,
    ):
        self.max_answer_chars = max_answer_chars
        self._pool = VerifierPool(workers, timeout_s, memory_limit_mb=memory_limit_mb)

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def start(self, wait: bool = True) -> None:
        """Start the worker processes now (with `wait`, until they are ready)."""
        self._pool.start(wait=wait)

    def equivalent(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """Whether each (answer, answer) pair of extracted answers is the same value: one
        `pool.OUTCOMES` entry per pair ("correct" = equivalent), under the time limit.

        An answer longer than `max_answer_chars` is never compared (as in `grade`): "wrong".
        """
        comparable = [max(len(a), len(b)) <= self.max_answer_chars for a, b in pairs]
        verdicts = self._compare([pair for pair, ok in zip(pairs, comparable, strict=True) if ok])[
            0
        ]
        ordered = iter(verdicts)
        return [next(ordered) if ok else "wrong" for ok in comparable]

    def judge(
        self, responses: Sequence[str], references: Sequence[str], *, answer_style: str
    ) -> list[str]:
        """One `JUDGMENTS` entry per response: why it earns its reward (see the module docstring)."""
        return self._judge(responses, references, answer_style)[0]

    def grade(
        self, responses: Sequence[str], references: Sequence[str], *, answer_style: str
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Rewards [B] float32 in {0, 1} for B responses against B reference answers, and stats.

        A reference is a bare final answer (e.g. "\\frac{1}{2}", "18"), not a worked solution.
        """
        judgments, verifier_calls = self._judge(responses, references, answer_style)
        rewards_B = np.array([j == "correct" for j in judgments], np.float32)
        stats = {name: float(judgments.count(j)) for j, name in _STAT_OF_JUDGMENT.items()}
        stats["reward/verifier_calls"] = float(verifier_calls)
        stats["reward/mean"] = float(rewards_B.mean()) if len(rewards_B) else 0.0
        return rewards_B, stats

    def _judge(
        self, responses: Sequence[str], references: Sequence[str], answer_style: str
    ) -> tuple[list[str], int]:
        """Judgments per response, and how many comparisons went to a worker."""
        if len(responses) != len(references):
            raise ValueError(
                f"got {len(responses)} responses but {len(references)} references; "
                "expected one reference answer per response"
            )
        judgments: list[str] = []
        pairs, indices = [], []
        for i, (response, reference) in enumerate(zip(responses, references, strict=True)):
            if not isinstance(reference, str) or not reference.strip():
                raise ValueError(f"reference {i} must be a non-empty answer string: {reference!r}")
            answer = extract_answer(response, answer_style=answer_style)
            if answer is None:
                judgments.append("no_answer")
            elif len(answer) > self.max_answer_chars:
                judgments.append("too_long")
            else:
                judgments.append("")  # settled by the comparison below
                pairs.append((answer, reference))
                indices.append(i)
        verdicts, verifier_calls = self._compare(pairs)
        for i, verdict in zip(indices, verdicts, strict=True):
            judgments[i] = verdict
        return judgments, verifier_calls

    def _compare(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[str], int]:
        """Outcomes per pair: equal strings after `normalize_answer` settle without a worker."""
        normalized = [(normalize_answer(a), normalize_answer(b)) for a, b in pairs]
        verdicts = ["correct" if _same_string(a, b) else "" for a, b in normalized]
        unsettled = [i for i, verdict in enumerate(verdicts) if not verdict]
        outcomes = self._pool.verify([normalized[i] for i in unsettled]) if unsettled else []
        for i, outcome in zip(unsettled, outcomes, strict=True):
            verdicts[i] = outcome
        return verdicts, len(unsettled)


def zero_truncated(rewards_B: np.ndarray, truncated_B: np.ndarray) -> np.ndarray:
    """Rewards [B] with every rollout cut at the token limit set to 0 (the paper's rule): its
    last closed box was written before the model finished, so it is not the final answer."""
    rewards_B, truncated_B = np.asarray(rewards_B), np.asarray(truncated_B, bool)
    if rewards_B.shape != truncated_B.shape:
        raise ValueError(
            f"rewards {rewards_B.shape} and truncated {truncated_B.shape} must match in shape"
        )
    return np.where(truncated_B, 0.0, rewards_B).astype(rewards_B.dtype)


def batch_reward(
    responses: Sequence[str],
    references: Sequence[str],
    *,
    answer_style: str,
    workers: int = 2,
    timeout_s: float = 5.0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards [B] float32 and stats for one batch, with a pool started and stopped for it.

    Pays process start-up (about a second) per call; a training loop should keep a `Grader`.
    """
    with Grader(workers, timeout_s) as grader:
        return grader.grade(responses, references, answer_style=answer_style)


def math_reward(response: str, reference: str, *, timeout_s: float = 5.0) -> float:
    """1.0 if the final answer in `response` is equivalent to `reference`, else 0.0.

    Grades in the MATH/AIME style ("boxed": a `#### N` line is not an answer). Runs the same
    checks as `Grader.grade` on one worker process shared by all calls with this `timeout_s`
    (started on the first case the string screen cannot settle, stopped at exit), so a loop of
    calls costs what one batch does.
    """
    rewards_B, _ = _shared_grader(timeout_s).grade([response], [reference], answer_style="boxed")
    return float(rewards_B[0])


# The graders behind `math_reward`, by (process id, timeout_s): a forked child must not share
# its parent's pipes to the workers, so it starts its own.
_shared: dict[tuple[int, float], Grader] = {}
_shared_lock = threading.Lock()


def _shared_grader(timeout_s: float) -> Grader:
    key = (os.getpid(), float(timeout_s))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Grader(workers=1, timeout_s=timeout_s)
        return _shared[key]


@atexit.register
def close_shared() -> None:
    """Stop this process's `math_reward` workers (also run at interpreter exit)."""
    with _shared_lock:
        for key in [k for k in _shared if k[0] == os.getpid()]:
            _shared.pop(key).close()
