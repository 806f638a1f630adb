"""Evaluation metrics over k sampled completions per problem, and their files and table.

    correct_PK, answers, records, stats = evaluate.score_completions(grader, ids, completions, refs)
    summary = evaluate.summarize(correct_PK, answers=answers, groups={"level": levels}, pass_ks=(1, 8))
    evaluate.write_eval_outputs(outdir, records, summary)
    print(evaluate.format_table(summary))

Metrics (P problems, k samples each):
- avg@k: mean over problems of the fraction of correct samples (the paper's avg@16), with the
  standard error over problems.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex) from n >= k samples, averaged.
- maj@k: whether the most frequent extracted answer among the first k samples is correct.
- answered: the fraction of samples with an extractable final answer (format rate), ± SE.
"""

import json
import math
import os
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from s2d_jax import rewards


def _check_correct(correct) -> np.ndarray:
    correct_PK = np.asarray(correct)
    if correct_PK.ndim != 2 or correct_PK.shape[0] < 1 or correct_PK.shape[1] < 1:
        raise ValueError(
            f"correct must be [problems, samples] with both >= 1, got {correct_PK.shape}"
        )
    return correct_PK.astype(bool)


def mean_and_se(values) -> tuple[float, float]:
    """Mean of per-problem values [P] and its standard error std(ddof=1) / sqrt(P).

    ddof=1: the problems are a sample from a larger pool, and the unbiased sample variance is the
    usual basis of a standard error of a mean. With P = 1 the error is undefined: NaN.
    """
    values_P = np.asarray(values, np.float64)
    mean = float(values_P.mean())
    if len(values_P) < 2:
        return mean, float("nan")
    return mean, float(values_P.std(ddof=1) / math.sqrt(len(values_P)))


def avg_at_k(correct) -> tuple[float, float]:
    """avg@k of `correct` [P, k] bool: (mean over problems of per-problem accuracy, its SE).

    The SE is over problems (per-problem accuracy as one observation), so it includes both
    problem-to-problem spread and the sampling noise of the k samples; see `mean_and_se`.
    """
    return mean_and_se(_check_correct(correct).mean(axis=1))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_per_problem(correct, k: int) -> np.ndarray:
    """Unbiased pass@k [P] float64 for each problem of `correct` [P, n] bool."""
    correct_PN = _check_correct(correct)
    n = correct_PN.shape[1]
    return np.array([pass_at_k(n, int(c), k) for c in correct_PN.sum(axis=1)])


def majority_correct(answers: Sequence[Sequence[str | None]], correct, k: int | None = None):
    """maj@k per problem [P] bool: the most frequent answer among the first k samples is correct.

    `answers` [P][n] are extracted answers (None when a sample has none), `correct` [P, n] their
    grades. Answers are the same when `rewards.normalize_answer` gives the same string (spaces
    ignored). Ties go to the answer that appears first; the group's verdict is that of its first
    sample. A problem whose first k samples have no answer at all counts as wrong.
    """
    correct_PN = _check_correct(correct)
    if len(answers) != correct_PN.shape[0] or any(len(a) != correct_PN.shape[1] for a in answers):
        raise ValueError(f"answers must be [P][n] matching correct {correct_PN.shape}")
    k = correct_PN.shape[1] if k is None else k
    if not 1 <= k <= correct_PN.shape[1]:
        raise ValueError(f"k must be in [1, {correct_PN.shape[1]}], got {k}")
    result_P = np.zeros(len(answers), bool)
    for p, row in enumerate(answers):
        counts: dict[str, int] = {}
        first: dict[str, int] = {}
        for j, answer in enumerate(row[:k]):
            if answer is None:
                continue
            key = rewards.normalize_answer(answer).replace(" ", "")
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, j)
        if counts:
            # max() keeps the first maximal key in insertion order, i.e. the earliest answer.
            winner = max(counts, key=counts.__getitem__)
            result_P[p] = correct_PN[p, first[winner]]
    return result_P


def maj_at_k(answers: Sequence[Sequence[str | None]], correct, k: int | None = None) -> float:
    """maj@k averaged over problems; see `majority_correct`."""
    return float(majority_correct(answers, correct, k).mean())


def answered_rate(
    answers: Sequence[Sequence[str | None]], num_samples: int | None = None
) -> tuple[float, float]:
    """Format rate: the fraction of samples with an extracted answer, and its SE over problems.

    `answers` [P][k] (None where a sample has no answer). Tracked apart from accuracy because a
    small model's reward is often zero for lack of a final answer, not for a wrong one.
    """
    if not answers or any(len(row) != len(answers[0]) for row in answers) or not answers[0]:
        raise ValueError("answers must be [P][k] with P, k >= 1 and the same k for every problem")
    if num_samples is not None and len(answers[0]) != num_samples:
        raise ValueError(
            f"answers have {len(answers[0])} samples per problem, expected {num_samples}"
        )
    return mean_and_se([np.mean([a is not None for a in row]) for row in answers])


def group_breakdown(values, groups: Sequence[Hashable]) -> dict[Hashable, tuple[float, float, int]]:
    """Per-group (mean, standard error, count) of per-problem `values` [P], groups [P] labels."""
    values_P = np.asarray(values, np.float64)
    if len(groups) != len(values_P):
        raise ValueError(f"got {len(groups)} group labels for {len(values_P)} problems")
    labels = np.array([str(g) for g in groups])
    out = {}
    for group in sorted(set(groups), key=lambda g: (str(type(g)), g)):
        selected = values_P[labels == str(group)]
        out[group] = (*mean_and_se(selected), len(selected))
    return out


def _key_part(value: Hashable) -> str:
    return re.sub(r"[^0-9a-zA-Z_.-]+", "_", str(value)).strip("_").lower()


def summarize(
    correct,
    *,
    answers: Sequence[Sequence[str | None]] | None = None,
    groups: Mapping[str, Sequence[Hashable]] | None = None,
    pass_ks: Sequence[int] = (1,),
    prefix: str = "eval",
) -> dict[str, float]:
    """Flat metrics dict from `correct` [P, k] bool.

    Keys: `{prefix}/avg@k`, `{prefix}/avg@k_se`, `{prefix}/pass@j` for j in `pass_ks` (j <= k),
    `{prefix}/maj@k` and `{prefix}/answered` (± `_se`) when `answers` [P][k] is given,
    `{prefix}/problems`, `{prefix}/samples`; and
    per group, e.g. groups={"level": levels [P]}: `{prefix}/level_3/avg@k`, `..._se`, `.../problems`.
    """
    correct_PK = _check_correct(correct)
    num_problems, k = correct_PK.shape
    summary = {f"{prefix}/problems": float(num_problems), f"{prefix}/samples": float(k)}
    accuracy_P = correct_PK.mean(axis=1)
    summary[f"{prefix}/avg@{k}"], summary[f"{prefix}/avg@{k}_se"] = mean_and_se(accuracy_P)
    for j in pass_ks:
        if j > k:
            raise ValueError(f"pass@{j} needs at least {j} samples per problem, got {k}")
        summary[f"{prefix}/pass@{j}"] = float(pass_at_k_per_problem(correct_PK, j).mean())
    if answers is not None:
        summary[f"{prefix}/maj@{k}"] = maj_at_k(answers, correct_PK)
        summary[f"{prefix}/answered"], summary[f"{prefix}/answered_se"] = answered_rate(
            answers, num_samples=k
        )
    for name, labels in (groups or {}).items():
        for group, (mean, se, count) in group_breakdown(accuracy_P, labels).items():
            key = f"{prefix}/{_key_part(name)}_{_key_part(group)}"
            summary[f"{key}/avg@{k}"], summary[f"{key}/avg@{k}_se"] = mean, se
            summary[f"{key}/problems"] = float(count)
    return summary


def score_completions(
    grader: "rewards.Grader",
    problem_ids: Sequence[str],
    completions: Sequence[Sequence[str]],
    references: Sequence[str],
) -> tuple[np.ndarray, list[list[str | None]], list[dict], dict[str, float]]:
    """Grade completions [P][k] against references [P] in one batch.

    Returns correct [P, k] bool, extracted answers [P][k], per-sample records (problem_id,
    sample, completion, extracted_answer, correct) and the grader's stats.
    """
    if not len(problem_ids) == len(completions) == len(references):
        raise ValueError(
            f"problem_ids ({len(problem_ids)}), completions ({len(completions)}) and references "
            f"({len(references)}) must have one entry per problem"
        )
    k = len(completions[0]) if completions else 0
    if any(len(row) != k for row in completions):
        raise ValueError("every problem needs the same number of completions")
    flat = [text for row in completions for text in row]
    rewards_B, stats = grader.grade(flat, [ref for ref in references for _ in range(k)])
    correct_PK = rewards_B.reshape(len(completions), k) > 0.5
    answers = [[rewards.extract_answer(text) for text in row] for row in completions]
    records = [
        {
            "problem_id": problem_ids[p],
            "sample": j,
            "completion": completions[p][j],
            "extracted_answer": answers[p][j],
            "correct": bool(correct_PK[p, j]),
        }
        for p in range(len(completions))
        for j in range(k)
    ]
    return correct_PK, answers, records, stats


_RECORD_FIELDS = ("problem_id", "completion", "extracted_answer", "correct")


def write_eval_outputs(
    outdir: str, records: Sequence[Mapping], summary: Mapping[str, float]
) -> tuple[str, str]:
    """Write `samples.jsonl` (one record per sample) and `summary.json` under `outdir`.

    Each record needs at least problem_id, completion, extracted_answer and correct; other keys
    are kept. Returns the two paths. Files are written whole, then renamed into place.
    """
    for i, record in enumerate(records):
        missing = [field for field in _RECORD_FIELDS if field not in record]
        if missing:
            raise ValueError(f"eval record {i} lacks {missing}; expected fields {_RECORD_FIELDS}")
    os.makedirs(outdir, exist_ok=True)
    samples_path = os.path.join(outdir, "samples.jsonl")
    summary_path = os.path.join(outdir, "summary.json")
    lines = "".join(json.dumps(dict(record), ensure_ascii=False) + "\n" for record in records)
    for path, text in ((samples_path, lines), (summary_path, json.dumps(dict(summary), indent=2))):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return samples_path, summary_path


def format_table(summary: Mapping[str, float]) -> str:
    """Summary as an aligned two-column text table; `x_se` is shown beside `x` as `± se`."""
    rows = []
    for key, value in summary.items():
        if key.endswith("_se"):
            continue
        text = f"{value:.0f}" if key.endswith(("/problems", "/samples")) else f"{value:.4f}"
        if f"{key}_se" in summary:
            text += f" ± {summary[key + '_se']:.4f}"
        rows.append((key, text))
    if not rows:
        return "(no metrics)"
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {text}" for key, text in rows)
