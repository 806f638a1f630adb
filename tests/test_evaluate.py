"""Tests for s2d_jax.evaluate: estimators against brute force, outputs, and the table."""

import itertools
import json
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from s2d_jax import evaluate


def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert evaluate.pass_at_k(n, c, k) == pytest.approx(
                float(_brute_pass_at_k(n, c, k)), abs=1e-12
            ), (n, c, k)


def test_pass_at_k_large_n_matches_exact_binomials():
    for n, c, k in [(200, 3, 100), (1000, 1, 1), (1000, 999, 500), (64, 0, 16), (300, 20, 7)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert evaluate.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        evaluate.pass_at_k(n, c, k)


def test_avg_at_k_and_its_standard_error():
    rng = np.random.default_rng(0)
    correct = rng.random((37, 16)) < rng.random((37, 1))
    mean, se = evaluate.avg_at_k(correct)
    per_problem = correct.sum(axis=1) / 16.0
    expected_mean = per_problem.sum() / 37
    expected_se = math.sqrt(((per_problem - expected_mean) ** 2).sum() / 36) / math.sqrt(37)
    assert mean == pytest.approx(expected_mean, abs=1e-12)
    assert se == pytest.approx(expected_se, abs=1e-12)


def test_avg_at_k_is_the_mean_over_all_sample_subsets():
    """avg@k of a k-subset, averaged over every k-subset of n samples, equals avg@n."""
    rng = np.random.default_rng(1)
    correct = rng.random((5, 6)) < 0.4
    for k in range(1, 7):
        subset_means = [
            evaluate.avg_at_k(correct[:, list(s)])[0] for s in itertools.combinations(range(6), k)
        ]
        assert np.mean(subset_means) == pytest.approx(evaluate.avg_at_k(correct)[0], abs=1e-12)


def test_avg_at_k_edge_cases():
    mean, se = evaluate.avg_at_k([[True, False, True, True]])
    assert mean == 0.75 and math.isnan(se)  # one problem: no spread to estimate
    assert evaluate.avg_at_k(np.ones((3, 2), bool)) == (1.0, 0.0)
    with pytest.raises(ValueError, match="problems, samples"):
        evaluate.avg_at_k(np.ones(4, bool))


def _reference_majority(answers_row, correct_row, k):
    """Independent rule: sort candidates by (-count, first position)."""
    keyed = [(a.replace(" ", ""), j) for j, a in enumerate(answers_row[:k]) if a is not None]
    if not keyed:
        return False
    counts = Counter(key for key, _ in keyed)
    first = {}
    for key, j in keyed:
        first.setdefault(key, j)
    winner = sorted(counts, key=lambda key: (-counts[key], first[key]))[0]
    return bool(correct_row[first[winner]])


def test_majority_vote_rules():
    answers = [
        ["1", "2", "2", "1"],  # tie 2-2: "1" appears first
        ["3", None, None, "4"],  # tie 1-1: "3" first; None is not a vote
        [None, None, None, None],  # no answer at all: wrong
        ["1,000", "1000", "7", "7"],  # normalised forms agree: "1000" has 2 votes, first at 0
        ["5", "x", "x", "x"],
    ]
    correct = np.array(
        [
            [True, False, False, True],
            [False, False, False, True],
            [False, False, False, False],
            [True, True, False, False],
            [True, False, False, False],
        ]
    )
    assert evaluate.majority_correct(answers, correct).tolist() == [True, False, False, True, False]
    assert evaluate.maj_at_k(answers, correct) == pytest.approx(2 / 5)
    # k=1: the first sample decides (the all-None row stays wrong).
    first_votes = [True, False, False, True, True]
    assert evaluate.majority_correct(answers, correct, k=1).tolist() == first_votes


def test_majority_vote_matches_reference_on_random_cases():
    rng = np.random.default_rng(2)
    vocab = ["1", "2", " 2", "3", None]
    for _ in range(200):
        p, n = rng.integers(1, 5), rng.integers(1, 7)
        answers = [[vocab[i] for i in rng.integers(0, len(vocab), n)] for _ in range(p)]
        # Grades consistent with the answers: one value per distinct answer, None wrong.
        truth = {a: bool(rng.integers(0, 2)) for a in ["1", "2", "3"]}
        correct = np.array([[a is not None and truth[a.strip()] for a in row] for row in answers])
        for k in range(1, n + 1):
            expected = [_reference_majority(a, c, k) for a, c in zip(answers, correct, strict=True)]
            assert evaluate.majority_correct(answers, correct, k).tolist() == expected


def test_group_breakdown_and_summary():
    rng = np.random.default_rng(3)
    correct = rng.random((12, 4)) < 0.5
    levels = [1, 2, 3] * 4
    subjects = ["Algebra"] * 6 + ["Number Theory"] * 6
    answers = [[str(int(x)) for x in row] for row in correct]
    summary = evaluate.summarize(
        correct,
        answers=answers,
        groups={"level": levels, "subject": subjects},
        pass_ks=(1, 2, 4),
    )
    accuracy = correct.mean(axis=1)
    assert summary["eval/problems"] == 12 and summary["eval/samples"] == 4
    assert summary["eval/avg@4"] == pytest.approx(accuracy.mean())
    assert summary["eval/avg@4_se"] == pytest.approx(accuracy.std(ddof=1) / math.sqrt(12))
    assert summary["eval/pass@1"] == pytest.approx(accuracy.mean())  # unbiased pass@1 = accuracy
    assert summary["eval/pass@4"] == pytest.approx(correct.any(axis=1).mean())
    pass2 = np.mean([float(_brute_pass_at_k(4, int(c), 2)) for c in correct.sum(axis=1)])
    assert summary["eval/pass@2"] == pytest.approx(pass2)
    assert "eval/maj@4" in summary
    for level in (1, 2, 3):
        selected = accuracy[np.array(levels) == level]
        assert summary[f"eval/level_{level}/avg@4"] == pytest.approx(selected.mean())
        assert summary[f"eval/level_{level}/avg@4_se"] == pytest.approx(
            selected.std(ddof=1) / math.sqrt(4)
        )
        assert summary[f"eval/level_{level}/problems"] == 4
    assert summary["eval/subject_number_theory/avg@4"] == pytest.approx(accuracy[6:].mean())
    breakdown = evaluate.group_breakdown(accuracy, subjects)
    assert list(breakdown) == ["Algebra", "Number Theory"]
    assert breakdown["Algebra"][2] == 6
    with pytest.raises(ValueError, match="pass@8"):
        evaluate.summarize(correct, pass_ks=(8,))


def test_answered_rate_by_hand():
    # Per-problem answered fractions 2/3, 0, 1: mean 5/9; sample std (ddof=1) of those three
    # is sqrt(((1/9)^2 + (5/9)^2 + (4/9)^2) / 2) = sqrt(42 / 162); SE divides it by sqrt(3).
    answers = [["1", None, "x"], [None, None, None], ["2", "2", "0"]]
    rate, se = evaluate.answered_rate(answers)
    assert rate == pytest.approx(5 / 9)
    assert se == pytest.approx(math.sqrt(42 / 162) / math.sqrt(3))
    summary = evaluate.summarize(np.zeros((3, 3), bool), answers=answers)
    assert summary["eval/answered"] == pytest.approx(5 / 9)
    assert summary["eval/answered_se"] == pytest.approx(se)
    assert "eval/answered" not in evaluate.summarize(np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="same k"):
        evaluate.answered_rate([["1"], ["1", "2"]])
    with pytest.raises(ValueError, match="expected 2"):
        evaluate.answered_rate([["1"]], num_samples=2)


class _EqualityGrader:
    """Stands in for rewards.Grader: correct when the boxed text equals the reference."""

    def grade(self, responses, references):
        rewards_B = np.array(
            [float(r == rf"\boxed{{{a}}}") for r, a in zip(responses, references, strict=True)],
            np.float32,
        )
        return rewards_B, {"reward/errors": 0.0}


def test_score_completions_and_outputs(tmp_path):
    completions = [[r"\boxed{1}", r"\boxed{2}", "none"], [r"\boxed{5}", r"\boxed{5}", r"\boxed{4}"]]
    correct, answers, records, stats = evaluate.score_completions(
        _EqualityGrader(), ["p0", "p1"], completions, ["2", "5"]
    )
    assert correct.tolist() == [[False, True, False], [True, True, False]]
    assert answers == [["1", "2", None], ["5", "5", "4"]]
    assert stats == {"reward/errors": 0.0}
    firsts = [("p0", 0, False), ("p0", 1, True), ("p0", 2, False), ("p1", 0, True)]
    assert [(r["problem_id"], r["sample"], r["correct"]) for r in records][:4] == firsts
    summary = evaluate.summarize(correct, answers=answers, pass_ks=(1, 3))
    samples_path, summary_path = evaluate.write_eval_outputs(
        str(tmp_path / "out"), records, summary
    )
    with open(samples_path, encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == records
    with open(summary_path, encoding="utf-8") as f:
        assert json.load(f) == summary
    table = evaluate.format_table(summary)
    assert "eval/avg@3" in table and "±" in table and "eval/avg@3_se" not in table
    with pytest.raises(ValueError, match=r"record 1 lacks \['correct'\]"):
        incomplete = {"problem_id": "x", "completion": "", "extracted_answer": None}
        evaluate.write_eval_outputs(str(tmp_path), [records[0], incomplete], summary)
    with pytest.raises(ValueError, match="one entry per problem"):
        evaluate.score_completions(_EqualityGrader(), ["p0"], completions, ["2", "5"])
