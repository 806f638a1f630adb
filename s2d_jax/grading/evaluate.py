"""Evaluation metrics over k sampled completions per problem, and their files and table.

    scored = evaluate.score_completions(grader, ids, texts, refs, truncated, answer_style="boxed")
    summary = evaluate.summarize(scored.correct_PK, answer_groups=scored.groups_PK, pass_ks=(1, 8))
    summary |= scored.grader_counts
    evaluate.write_eval_outputs(outdir, scored.records, summary)
    print(evaluate.format_table(summary))

Metrics (P problems, k samples each):
- avg@k: mean over problems of the fraction of correct samples (the paper's avg@16), with the
  standard error over problems.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex) from n >= k samples, averaged.
- maj@k: whether the largest group of equivalent answers among the first k samples is correct.
- answered: the fraction of samples with a final answer that counts (format rate), ± SE.
A sample cut at the token limit scores 0 and casts no vote (`rewards.zero_truncated`), as in
training. Grader timeouts and errors are counted, not hidden among the wrong answers.
"""

import dataclasses
import json
import math
import os
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from s2d_jax.grading import rewards


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


NO_ANSWER = -1  # answer group of a sample without an answer that counts: it casts no vote
CORRECT_GROUP = 0  # answer group of every correct sample: each is equivalent to the reference


def _check_groups(answer_groups, correct_PN: np.ndarray) -> np.ndarray:
    groups_PN = np.asarray(answer_groups)
    if groups_PN.shape != correct_PN.shape or not np.issubdtype(groups_PN.dtype, np.integer):
        raise ValueError(
            f"answer_groups must be integer labels shaped like correct {correct_PN.shape}, got "
            f"{groups_PN.dtype} {groups_PN.shape}"
        )
    return groups_PN


def _merged_labels(groups_N: np.ndarray, same_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """`groups_N` with the groups of every pair in `same_pairs` joined, transitively, under the
    smallest label of their class."""
    parent: dict[int, int] = {}

    def root(group: int) -> int:
        while parent.get(group, group) != group:
            group = parent[group]
        return group

    for a, b in same_pairs:
        root_a, root_b = root(a), root(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return np.array([root(g) for g in groups_N.tolist()], groups_N.dtype)


def majority_groups(
    grader: "rewards.Grader", answers: Sequence[Sequence[str | None]], correct
) -> tuple[np.ndarray, dict[str, float]]:
    """Majority-vote groups [P, n] int64 of extracted answers [P][n] graded `correct` [P, n].

    NO_ANSWER where an answer is None; CORRECT_GROUP for every correct sample; wrong answers get
    labels >= 1, one per math-verify equivalence class: grouped first by normalised string, then
    each pair of a problem's groups is compared in the grader's worker processes (under its time
    limit; model text is never parsed here) and equivalent groups are joined. A timeout or error
    keeps two groups apart, and is counted in the returned {"maj_grader_timeouts",
    "maj_grader_errors"}. A problem without a correct sample keeps its string groups: whichever
    of them wins, maj@k is wrong, so comparing them would change nothing.
    """
    correct_PN = _check_correct(correct)
    if len(answers) != correct_PN.shape[0] or any(len(a) != correct_PN.shape[1] for a in answers):
        raise ValueError(f"answers must be [P][n] matching correct {correct_PN.shape}")
    groups_PN = np.full(correct_PN.shape, NO_ANSWER, np.int64)
    pairs, owners = [], []  # (answer, answer) to compare; (problem, group, group) they stand for
    for p, row in enumerate(answers):
        label_of: dict[str, int] = {}  # normalised wrong answer (spaces dropped) -> its group
        first_answer: list[str] = []  # of each wrong group, in label order
        for j, answer in enumerate(row):
            if answer is None:
                continue
            if correct_PN[p, j]:
                groups_PN[p, j] = CORRECT_GROUP
                continue
            key = rewards.normalize_answer(answer).replace(" ", "")
            if key not in label_of:
                label_of[key] = len(label_of) + 1
                first_answer.append(answer)
            groups_PN[p, j] = label_of[key]
        if correct_PN[p].any():
            for a in range(len(first_answer)):
                for b in range(a + 1, len(first_answer)):
                    pairs.append((first_answer[a], first_answer[b]))
                    owners.append((p, a + 1, b + 1))
    verdicts = grader.equivalent(pairs) if pairs else []
    same_pairs_of: dict[int, list[tuple[int, int]]] = {}
    for (p, a, b), verdict in zip(owners, verdicts, strict=True):
        if verdict == "correct":
            same_pairs_of.setdefault(p, []).append((a, b))
    for p, same_pairs in same_pairs_of.items():
        groups_PN[p] = _merged_labels(groups_PN[p], same_pairs)
    counts = {
        "maj_grader_timeouts": float(verdicts.count("timeout")),
        "maj_grader_errors": float(verdicts.count("error")),
    }
    return groups_PN, counts


def majority_correct(answer_groups, correct, k: int | None = None) -> np.ndarray:
    """maj@k per problem [P] bool: the largest answer group among the first k samples is correct.

    `answer_groups` [P, n] int are labels from `majority_groups` (NO_ANSWER casts no vote),
    `correct` [P, n] the grades. Ties go to the group whose first sample comes first; the group's
    verdict is that of its first sample. A problem whose first k samples have no answer at all
    counts as wrong.
    """
    correct_PN = _check_correct(correct)
    groups_PN = _check_groups(answer_groups, correct_PN)
    k = correct_PN.shape[1] if k is None else k
    if not 1 <= k <= correct_PN.shape[1]:
        raise ValueError(f"k must be in [1, {correct_PN.shape[1]}], got {k}")
    result_P = np.zeros(len(groups_PN), bool)
    for p, row in enumerate(groups_PN[:, :k].tolist()):
        counts: dict[int, int] = {}
        first: dict[int, int] = {}
        for j, group in enumerate(row):
            if group == NO_ANSWER:
                continue
            counts[group] = counts.get(group, 0) + 1
            first.setdefault(group, j)
        if counts:
            # max() keeps the first maximal key in insertion order, i.e. the earliest group.
            winner = max(counts, key=counts.__getitem__)
            result_P[p] = correct_PN[p, first[winner]]
    return result_P


def maj_at_k(answer_groups, correct, k: int | None = None) -> float:
    """maj@k averaged over problems; see `majority_correct`."""
    return float(majority_correct(answer_groups, correct, k).mean())


def answered_rate(answer_groups) -> tuple[float, float]:
    """Format rate: the fraction of samples with an answer that counts, and its SE over problems.

    `answer_groups` [P, k] int (NO_ANSWER where a sample has none). Tracked apart from accuracy
    because a small model's reward is often zero for lack of a final answer, not a wrong one.
    """
    groups_PK = np.asarray(answer_groups)
    if groups_PK.ndim != 2 or 0 in groups_PK.shape:
        raise ValueError(f"answer_groups must be [P, k] with P, k >= 1, got {groups_PK.shape}")
    return mean_and_se((groups_PK != NO_ANSWER).mean(axis=1))


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
    answer_groups=None,
    groups: Mapping[str, Sequence[Hashable]] | None = None,
    pass_ks: Sequence[int] = (1,),
    prefix: str = "eval",
) -> dict[str, float]:
    """Flat metrics dict from `correct` [P, k] bool.

    Keys: `{prefix}/avg@k`, `{prefix}/avg@k_se`, `{prefix}/pass@j` for j in `pass_ks` (j <= k),
    `{prefix}/maj@k` and `{prefix}/answered` (± `_se`) when `answer_groups` [P, k] (from
    `majority_groups`) is given,
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
    if answer_groups is not None:
        groups_PK = _check_groups(answer_groups, correct_PK)
        summary[f"{prefix}/maj@{k}"] = maj_at_k(groups_PK, correct_PK)
        summary[f"{prefix}/answered"], summary[f"{prefix}/answered_se"] = answered_rate(groups_PK)
    for name, labels in (groups or {}).items():
        for group, (mean, se, count) in group_breakdown(accuracy_P, labels).items():
            key = f"{prefix}/{_key_part(name)}_{_key_part(group)}"
            summary[f"{key}/avg@{k}"], summary[f"{key}/avg@{k}_se"] = mean, se
            summary[f"{key}/problems"] = float(count)
    return summary


@dataclasses.dataclass(frozen=True)
class ScoredSamples:
    """The graded completions [P][k] of one split."""

    correct_PK: np.ndarray  # bool; a truncated sample is never correct
    groups_PK: np.ndarray  # int64 majority-vote groups (`majority_groups`); truncated: NO_ANSWER
    records: list[dict]  # one per sample, for samples.jsonl
    grader_counts: dict[str, float]  # grader_timeouts, grader_errors, maj_grader_timeouts, ...


def _check_shapes(problem_ids, completions, references, truncated) -> np.ndarray:
    """`truncated` as a [P, k] bool array, once the inputs are known to agree on P and k."""
    if not len(problem_ids) == len(completions) == len(references):
        raise ValueError(
            f"problem_ids ({len(problem_ids)}), completions ({len(completions)}) and references "
            f"({len(references)}) must have one entry per problem"
        )
    k = len(completions[0]) if completions else 0
    if any(len(row) != k for row in completions):
        raise ValueError("every problem needs the same number of completions")
    truncated_PK = np.asarray(truncated, bool)
    if truncated_PK.shape != (len(completions), k):
        raise ValueError(
            f"truncated must be [P, k] = {(len(completions), k)}, got {truncated_PK.shape}"
        )
    return truncated_PK


def score_completions(
    grader: "rewards.Grader",
    problem_ids: Sequence[str],
    completions: Sequence[Sequence[str]],
    references: Sequence[str],
    truncated,
    *,
    answer_style: str,
) -> ScoredSamples:
    """Grade completions [P][k] against references [P]; `truncated` [P, k] bool marks samples
    cut at the token limit.

    Each record holds problem_id, sample, completion, extracted_answer (as found, truncated or
    not), truncated, judgment (`rewards.JUDGMENTS`: a grader timeout reads "timeout", not
    "wrong") and correct.
    """
    truncated_PK = _check_shapes(problem_ids, completions, references, truncated)
    k = truncated_PK.shape[1]
    flat = [text for row in completions for text in row]
    judgments = grader.judge(
        flat, [ref for ref in references for _ in range(k)], answer_style=answer_style
    )
    rewards_B = np.array([judgment == "correct" for judgment in judgments], np.float32)
    correct_PK = rewards.zero_truncated(rewards_B, truncated_PK.reshape(-1)) > 0.5
    correct_PK = correct_PK.reshape(truncated_PK.shape)
    extracted = [
        [rewards.extract_answer(t, answer_style=answer_style) for t in row] for row in completions
    ]
    # A truncated sample's last closed box is not its final answer, so it casts no vote.
    answers = [
        [None if cut else answer for answer, cut in zip(row, cuts, strict=True)]
        for row, cuts in zip(extracted, truncated_PK.tolist(), strict=True)
    ]
    groups_PK, maj_counts = majority_groups(grader, answers, correct_PK)
    records = [
        {
            "problem_id": problem_ids[p],
            "sample": j,
            "completion": completions[p][j],
            "extracted_answer": extracted[p][j],
            "truncated": bool(truncated_PK[p, j]),
            "judgment": judgments[p * k + j],
            "correct": bool(correct_PK[p, j]),
        }
        for p in range(len(completions))
        for j in range(k)
    ]
    grader_counts = {
        "grader_timeouts": float(judgments.count("timeout")),
        "grader_errors": float(judgments.count("error")),
        **maj_counts,
    }
    return ScoredSamples(correct_PK, groups_PK, records, grader_counts)


_RECORD_FIELDS = ("problem_id", "completion", "extracted_answer", "judgment", "correct")


def write_eval_outputs(
    outdir: str, records: Sequence[Mapping], summary: Mapping[str, float]
) -> tuple[str, str]:
    """Write `samples.jsonl` (one record per sample) and `summary.json` under `outdir`.

    Each record needs at least problem_id, completion, extracted_answer, judgment and correct;
    other keys are kept. Returns the two paths. Files are written whole, then renamed into place.
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


_COUNT_KEYS = ("/problems", "/samples", "_timeouts", "_errors")


def format_table(summary: Mapping[str, float]) -> str:
    """Summary as an aligned two-column text table; `x_se` is shown beside `x` as `± se`."""
    rows = []
    for key, value in summary.items():
        if key.endswith("_se"):
            continue
        text = f"{value:.0f}" if key.endswith(_COUNT_KEYS) else f"{value:.4f}"
        if f"{key}_se" in summary:
            text += f" ± {summary[key + '_se']:.4f}"
        rows.append((key, text))
    if not rows:
        return "(no metrics)"
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {text}" for key, text in rows)
