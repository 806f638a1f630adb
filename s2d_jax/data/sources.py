"""Reading math problem files (JSONL or parquet) into the common example schema.

Every dataset comes out as a list of plain dicts with the same keys (`EXAMPLE_FIELDS`):
  id (str), problem (str), answer (str), level (int, -1 if none), subject (str, "" if none),
  solution (str: the source's worked solution verbatim, "" if none).
A `ColumnMap` says where each field sits in a source row, so any file with a problem and an answer
can be read (DAPO-Math-17K's chat-list prompt and nested ground truth included). A malformed row
(bad JSON, a missing or non-text field, an empty problem or answer) is skipped and counted in the
`ReadStats`; a missing file, or one with no usable row at all, is an error naming the path, the
expected columns and (for the latter) how many rows were dropped for which reason.
Nothing here knows about tensorflow-datasets, so it is testable on plain files.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

EXAMPLE_FIELDS = ("id", "problem", "answer", "level", "subject", "solution")
MAX_ERRORS_KEPT = 5  # how many skipped-row messages a ReadStats keeps for the report

_GSM8K_MARK = "####"
# DAPO-Math-17K wraps every problem in its own answer-format instruction; the pipeline adds ours,
# so the wrapper is cut off to recover the bare problem.
_DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Where each schema field is found in a source row.

    A path is a dot-separated chain of keys into nested objects (`reward_model.ground_truth`);
    "" means the source has no such field: `id` then becomes `<dataset>/<split>/<row number>`,
    `level` -1, `subject` and `solution` "". When the value at `problem` is a chat list
    (`[{"role": ..., "content": ...}, ...]`) the content of its last user message is the problem.
    `strip_prefix` / `strip_suffix` are removed from the problem when present (instruction
    wrappers). `answer_after` takes the text after the last occurrence of that marker as the answer
    (GSM8K's `#### 72`), with thousands separators removed.
    """

    problem: str = "problem"
    answer: str = "answer"
    id: str = ""
    level: str = ""
    subject: str = ""
    solution: str = ""
    strip_prefix: str = ""
    strip_suffix: str = ""
    answer_after: str = ""

    def describe(self) -> str:
        """The expected schema in words, for error messages."""
        parts = [f"{self.problem!r} (problem text)", f"{self.answer!r} (answer text)"]
        for name in ("id", "level", "subject", "solution"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)!r} ({name}, optional)")
        return "JSONL or parquet rows with columns " + ", ".join(parts)


# Named column layouts; `math_train` accepts any of these names (or a ColumnMap) as its config.
COLUMN_MAPS = {
    "math": ColumnMap(id="unique_id", level="level", subject="subject", solution="solution"),
    "problem_answer": ColumnMap(),
    "gsm8k": ColumnMap(problem="question", answer="answer", solution="answer", answer_after="####"),
    "dapo": ColumnMap(
        problem="prompt",
        answer="reward_model.ground_truth",
        id="extra_info.index",
        strip_prefix=_DAPO_PREFIX,
        strip_suffix=_DAPO_SUFFIX,
    ),
}


@dataclasses.dataclass
class ReadStats:
    """Counts from reading one file: rows seen, kept, skipped by reason, duplicates dropped."""

    rows: int = 0
    kept: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0  # duplicates whose answer differs from the kept row's
    skipped: dict[str, int] = dataclasses.field(default_factory=collections.Counter)
    errors: list[str] = dataclasses.field(default_factory=list)

    def skip(self, reason: str, where: str, detail: str) -> None:
        self.skipped[reason] += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(f"{where}: {reason}: {detail}")

    def as_dict(self) -> dict:
        """JSON-serialisable form (stored in the tfds dataset's metadata)."""
        return {
            "rows": self.rows,
            "kept": self.kept,
            "duplicates": self.duplicates,
            "conflicting_duplicates": self.conflicting_duplicates,
            "skipped": dict(sorted(self.skipped.items())),
            "errors": list(self.errors),
        }


class RowError(ValueError):
    """A row that cannot become an example; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_gsm8k_answer(text: str, marker: str = _GSM8K_MARK) -> str:
    """The final answer of a GSM8K solution: the text after the last `####`, commas removed.

    `"... \\n#### 1,080"` -> `"1080"`. Raises RowError when the marker or the answer is missing.
    """
    if marker not in text:
        raise RowError("missing_final_answer", f"no {marker!r} in the answer text")
    answer = text.rsplit(marker, 1)[1].strip().replace(",", "")
    if not answer:
        raise RowError("empty_answer", f"nothing after {marker!r}")
    return answer


def normalize_problem(text: str) -> str:
    """The deduplication key of a problem: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


def row_to_example(row: object, columns: ColumnMap, default_id: str) -> dict:
    """One source row (a decoded JSON object or parquet record) -> an example dict.

    Raises RowError (with a counter key as `reason`) when the row is malformed.
    """
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    problem = _problem_text(_lookup(row, columns.problem), columns)
    answer = _text_field(_lookup(row, columns.answer), columns.answer, allow_number=True)
    if columns.answer_after:
        answer = parse_gsm8k_answer(answer, columns.answer_after)
    answer = answer.strip()
    if not problem:
        raise RowError("empty_problem", f"{columns.problem!r} is empty")
    if not answer:
        raise RowError("empty_answer", f"{columns.answer!r} is empty")
    return {
        "id": _optional_text(row, columns.id, allow_number=True) or default_id,
        "problem": problem,
        "answer": answer,
        "level": _level(row, columns.level),
        "subject": _optional_text(row, columns.subject),
        "solution": _optional_text(row, columns.solution),
    }


def read_examples(
    path: str, columns: ColumnMap, *, id_prefix: str, dedup: bool
) -> tuple[list[dict], ReadStats]:
    """All well-formed examples of a JSONL or parquet file, in file order, and the read counts.

    With `dedup`, a problem seen before (same `normalize_problem` key) is dropped, keeping the
    first. Raises FileNotFoundError naming the path and the expected schema.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; expected {columns.describe()}")
    stats = ReadStats()
    examples, seen = [], {}
    for index, row, where in _iter_rows(path, stats):
        try:
            example = row_to_example(row, columns, default_id=f"{id_prefix}/{index}")
        except RowError as err:
            stats.skip(err.reason, where, str(err))
            continue
        key = normalize_problem(example["problem"])
        if dedup and key in seen:
            stats.duplicates += 1
            stats.conflicting_duplicates += seen[key] != example["answer"]
            continue
        seen[key] = example["answer"]
        examples.append(example)
    stats.kept = len(examples)
    _require_rows(path, columns, stats)
    return examples, stats


class NoUsableRowsError(ValueError):
    """A source file from which no example could be read."""


def _require_rows(path: str, columns: ColumnMap, stats: ReadStats) -> None:
    """Raise when nothing of `path` was kept: a wrong column layout or a broken file would else
    become an empty pool, found only when a stage draws its first batch."""
    if stats.kept:
        return
    if not stats.rows:
        found = "has no rows (empty file)"
    else:
        found = (
            f"has {stats.rows} rows and none is usable: dropped by reason {dict(stats.skipped)}; "
            f"first errors: {stats.errors}"
        )
    raise NoUsableRowsError(f"{path} {found}; expected {columns.describe()}")


def _iter_rows(path: str, stats: ReadStats):
    """Yields (row number, decoded row, location string); bad JSON lines are counted, not yielded."""
    if path.endswith(".parquet"):
        yield from _iter_parquet(path, stats)
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        index = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():  # blank lines are not rows (a trailing newline, say)
                continue
            stats.rows += 1
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                stats.skip("bad_json", where, str(err))
            else:
                yield index, row, where
            index += 1


def _iter_parquet(path: str, stats: ReadStats):
    import pyarrow.parquet as pq  # only parquet sources need pyarrow

    index = 0
    # Batches keep memory flat on the undeduplicated DAPO file (1.8M rows, each prompt ~100x).
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            stats.rows += 1
            yield index, row, f"{path}:row {index}"
            index += 1


def _lookup(row: dict, path: str) -> object:
    value: object = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise RowError("missing_field", f"no field {path!r}")
        value = value[key]
    return value


def _text_field(value: object, name: str, *, allow_number: bool = False) -> str:
    if isinstance(value, str):
        return value
    if allow_number and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise RowError("missing_field", f"{name!r} is {type(value).__name__}, expected text")


def _optional_text(row: dict, path: str, *, allow_number: bool = False) -> str:
    if not path:
        return ""
    try:
        value = _lookup(row, path)
    except RowError:
        return ""
    if value is None:
        return ""
    return _text_field(value, path, allow_number=allow_number).strip()


def _problem_text(value: object, columns: ColumnMap) -> str:
    if isinstance(value, list):  # a chat: the last user turn is the problem
        turns = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if not turns:
            raise RowError("missing_field", f"{columns.problem!r} has no user message")
        value = turns[-1].get("content")
    text = _text_field(value, columns.problem).strip()
    if columns.strip_prefix and text.startswith(columns.strip_prefix.strip()):
        text = text[len(columns.strip_prefix.strip()) :]
    if columns.strip_suffix and text.endswith(columns.strip_suffix.strip()):
        text = text[: -len(columns.strip_suffix.strip())]
    return text.strip()


_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)


def _level(row: dict, path: str) -> int:
    """An int level from 3, "3" or "Level 3"; -1 when absent or unreadable ("Level ?" in MATH)."""
    if not path:
        return -1
    try:
        value = _lookup(row, path)
    except RowError:
        return -1
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _LEVEL_RE.match(value) if isinstance(value, str) else None
    return int(match.group(1)) if match else -1
