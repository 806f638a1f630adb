"""Tests for s2d_jax.grading.evaluate: estimators against brute force, outputs, and the table."""

import itertools
import json
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from s2d_jax.grading import evaluate, rewards


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


def _reference_majority(groups_row, correct_row, k):
    """Independent rule: sort candidate groups by (-count, first position)."""
    keyed = [(g, j) for j, g in enumerate(groups_row[:k]) if g != evaluate.NO_ANSWER]
    if not keyed:
        return False
    counts = Counter(g for g, _ in keyed)
    first = {}
    for g, j in keyed:
        first.setdefault(g, j)
    winner = sorted(counts, key=lambda g: (-counts[g], first[g]))[0]
    return bool(correct_row[first[winner]])


def test_majority_vote_rules():
    groups = np.array(
        [
            [1, 2, 2, 1],  # tie 2-2: group 1 appears first
            [3, -1, -1, 4],  # tie 1-1: group 3 first; no answer is not a vote
            [-1, -1, -1, -1],  # no answer at all: wrong
            [0, 0, 7, 7],  # tie 2-2: the correct group comes first
            [5, 6, 6, 6],
        ]
    )
    correct = np.array(
        [
            [True, False, False, True],
            [False, False, False, True],
            [False, False, False, False],
            [True, True, False, False],
            [True, False, False, False],
        ]
    )
    assert evaluate.majority_correct(groups, correct).tolist() == [True, False, False, True, False]
    assert evaluate.maj_at_k(groups, correct) == pytest.approx(2 / 5)
    # k=1: the first sample decides (the all-None row stays wrong).
    first_votes = [True, False, False, True, True]
    assert evaluate.majority_correct(groups, correct, k=1).tolist() == first_votes
    with pytest.raises(ValueError, match=r"integer labels shaped like correct \(5, 4\)"):
        evaluate.majority_correct(groups[:, :3], correct)


def test_majority_vote_matches_reference_on_random_cases():
    rng = np.random.default_rng(2)
    for _ in range(200):
        p, n = rng.integers(1, 5), rng.integers(1, 7)
        groups = rng.integers(-1, 3, (p, n))  # labels 0..2, -1 for no answer
        # Grades consistent with the groups: one verdict per group, no answer wrong.
        truth = {-1: False, **{g: bool(rng.integers(0, 2)) for g in range(3)}}
        correct = np.vectorize(truth.__getitem__)(groups).astype(bool)
        for k in range(1, n + 1):
            expected = [_reference_majority(g, c, k) for g, c in zip(groups, correct, strict=True)]
            assert evaluate.majority_correct(groups, correct, k).tolist() == expected


def test_group_breakdown_and_summary():
    rng = np.random.default_rng(3)
    correct = rng.random((12, 4)) < 0.5
    levels = [1, 2, 3] * 4
    subjects = ["Algebra"] * 6 + ["Number Theory"] * 6
    answer_groups = np.where(correct, evaluate.CORRECT_GROUP, 1)
    summary = evaluate.summarize(
        correct,
        answer_groups=answer_groups,
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
    answer_groups = np.array([[1, -1, 2], [-1, -1, -1], [0, 0, 1]])
    rate, se = evaluate.answered_rate(answer_groups)
    assert rate == pytest.approx(5 / 9)
    assert se == pytest.approx(math.sqrt(42 / 162) / math.sqrt(3))
    summary = evaluate.summarize(np.zeros((3, 3), bool), answer_groups=answer_groups)
    assert summary["eval/answered"] == pytest.approx(5 / 9)
    assert summary["eval/answered_se"] == pytest.approx(se)
    assert "eval/answered" not in evaluate.summarize(np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match=r"\[P, k\]"):
        evaluate.answered_rate(np.zeros(3, int))
    with pytest.raises(ValueError, match=r"shaped like correct \(3, 2\)"):
        evaluate.summarize(np.zeros((3, 2), bool), answer_groups=answer_groups)


class _EqualityGrader:
    """Stands in for rewards.Grader without worker processes: a response is correct when it is
    exactly the boxed reference, "SLOW" times out, "BROKEN" raises; answers are equivalent when
    equal or when the pair is listed in `same`. Records the pairs it is asked to compare."""

    def __init__(self, same=()):
        self.same = {frozenset(pair) for pair in same}
        self.compared = []

    def judge(self, responses, references, *, answer_style):
        assert answer_style in ("boxed", "gsm8k")
        special = {"SLOW": "timeout", "BROKEN": "error"}
        return [
            special.get(r) or ("correct" if r == rf"\boxed{{{a}}}" else "wrong")
            for r, a in zip(responses, references, strict=True)
        ]

    def equivalent(self, pairs):
        self.compared += pairs
        return ["correct" if a == b or {a, b} in self.same else "wrong" for a, b in pairs]


def _no_truncation(completions):
    return np.zeros((len(completions), len(completions[0])), bool)


def test_score_completions_and_outputs(tmp_path):
    completions = [[r"\boxed{1}", r"\boxed{2}", "none"], [r"\boxed{5}", r"\boxed{5}", r"\boxed{4}"]]
    scored = evaluate.score_completions(
        _EqualityGrader(),
        ["p0", "p1"],
        completions,
        ["2", "5"],
        _no_truncation(completions),
        answer_style="boxed",
    )
    assert scored.correct_PK.tolist() == [[False, True, False], [True, True, False]]
    # p0: "1" wrong, "2" correct, no answer; p1: two correct, one wrong.
    assert scored.groups_PK.tolist() == [[1, 0, -1], [0, 0, 1]]
    assert scored.grader_counts == {
        "grader_timeouts": 0.0,
        "grader_errors": 0.0,
        "maj_grader_timeouts": 0.0,
        "maj_grader_errors": 0.0,
    }
    records = scored.records
    firsts = [("p0", 0, False), ("p0", 1, True), ("p0", 2, False), ("p1", 0, True)]
    assert [(r["problem_id"], r["sample"], r["correct"]) for r in records][:4] == firsts
    assert [r["extracted_answer"] for r in records[:3]] == ["1", "2", None]
    summary = evaluate.summarize(scored.correct_PK, answer_groups=scored.groups_PK, pass_ks=(1, 3))
    summary |= scored.grader_counts
    samples_path, summary_path = evaluate.write_eval_outputs(
        str(tmp_path / "out"), records, summary
    )
    with open(samples_path, encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == records
    with open(summary_path, encoding="utf-8") as f:
        assert json.load(f) == summary
    table = evaluate.format_table(summary)
    assert "eval/avg@3" in table and "±" in table and "eval/avg@3_se" not in table
    assert "grader_timeouts  0\n" in table  # a count, not 0.0000
    with pytest.raises(ValueError, match=r"record 1 lacks \['judgment', 'correct'\]"):
        incomplete = {"problem_id": "x", "completion": "", "extracted_answer": None}
        evaluate.write_eval_outputs(str(tmp_path), [records[0], incomplete], summary)
    with pytest.raises(ValueError, match="one entry per problem"):
        evaluate.score_completions(
            _EqualityGrader(), ["p0"], completions, ["2", "5"], None, answer_style="boxed"
        )
    with pytest.raises(ValueError, match=r"truncated must be \[P, k\] = \(2, 3\), got \(2, 2\)"):
        evaluate.score_completions(
            _EqualityGrader(),
            ["p0", "p1"],
            completions,
            ["2", "5"],
            np.zeros((2, 2), bool),
            answer_style="boxed",
        )


def test_truncated_samples_score_zero_and_cast_no_vote():
    # Sample 0 and 2 box the right answer but were cut at the token limit; sample 1 is wrong.
    completions = [[r"\boxed{5}", r"\boxed{4}", r"\boxed{5}"]]
    truncated = np.array([[True, False, True]])
    scored = evaluate.score_completions(
        _EqualityGrader(), ["p0"], completions, ["5"], truncated, answer_style="boxed"
    )
    assert scored.correct_PK.tolist() == [[False, False, False]]
    assert scored.groups_PK.tolist() == [[-1, 1, -1]]
    summary = evaluate.summarize(scored.correct_PK, answer_groups=scored.groups_PK)
    assert summary["eval/avg@3"] == 0.0
    assert summary["eval/maj@3"] == 0.0  # "4" is the only vote
    assert summary["eval/answered"] == pytest.approx(1 / 3)
    record = scored.records[0]
    assert record["truncated"] and record["judgment"] == "correct" and not record["correct"]
    assert record["extracted_answer"] == "5"  # kept for inspection; it just does not count


def test_grader_timeouts_and_errors_are_counted_apart_from_wrong_answers():
    completions = [["SLOW", r"\boxed{3}", "BROKEN", "SLOW"]]
    scored = evaluate.score_completions(
        _EqualityGrader(),
        ["p0"],
        completions,
        ["4"],
        _no_truncation(completions),
        answer_style="boxed",
    )
    assert [r["judgment"] for r in scored.records] == ["timeout", "wrong", "error", "timeout"]
    assert scored.grader_counts["grader_timeouts"] == 2.0
    assert scored.grader_counts["grader_errors"] == 1.0
    assert not scored.correct_PK.any()


def test_majority_groups_join_transitively_and_skip_hopeless_problems():
    grader = _EqualityGrader(same=[("a", "b"), ("b", "c")])
    answers = [
        ["a", "x", "c", "b", None],  # x is correct; a~b~c form one wrong group of 3
        ["a", "c", "b", "a", "y"],  # nothing correct: string groups only, no comparisons
    ]
    correct = np.array([[False, True, False, False, False], [False] * 5])
    groups, counts = evaluate.majority_groups(grader, answers, correct)
    assert groups.tolist() == [[1, 0, 1, 1, -1], [1, 2, 3, 1, 4]]
    assert {frozenset(pair) for pair in grader.compared} == {
        frozenset(pair) for pair in [("a", "c"), ("a", "b"), ("c", "b")]
    }
    assert counts == {"maj_grader_timeouts": 0.0, "maj_grader_errors": 0.0}
    assert evaluate.majority_correct(groups, correct).tolist() == [False, False]


@pytest.fixture(scope="module")
def grader():
    with rewards.Grader(workers=2, timeout_s=2.0) as g:
        yield g


def test_majority_vote_groups_equivalent_answers_with_math_verify(grader):
    completions = [
        # Reference 1/2: "3" has two votes, but 0.5, \frac{1}{2} and \dfrac{2}{4} are one answer.
        [
            r"\boxed{0.5}",
            r"\boxed{3}",
            r"\boxed{3}",
            r"\boxed{\frac{1}{2}}",
            r"\boxed{\dfrac{2}{4}}",
        ],
        # Reference 7 has two votes; three ways of writing the wrong answer 1/2 outvote it.
        [
            r"\boxed{7}",
            r"\boxed{0.5}",
            r"\boxed{7}",
            r"\boxed{\frac{1}{2}}",
            r"\boxed{\dfrac{2}{4}}",
        ],
    ]
    scored = evaluate.score_completions(
        grader,
        ["half", "seven"],
        completions,
        [r"\frac{1}{2}", "7"],
        _no_truncation(completions),
        answer_style="boxed",
    )
    assert scored.correct_PK.tolist() == [
        [True, False, False, True, True],
        [True, False, True, False, False],
    ]
    wrong_half = scored.groups_PK[1, 1]
    assert scored.groups_PK[1].tolist() == [0, wrong_half, 0, wrong_half, wrong_half]
    assert evaluate.majority_correct(scored.groups_PK, scored.correct_PK).tolist() == [True, False]


def test_a_grader_timeout_in_eval_is_counted_and_recorded(grader):
    grader.start()  # a worker replaced after an earlier timeout may still be starting
    completions = [[r"\boxed{9^{9^{9^{9}}}}", r"\boxed{2}", r"\boxed{1}"]]
    scored = evaluate.score_completions(
        grader, ["p0"], completions, ["1"], _no_truncation(completions), answer_style="boxed"
    )
    assert [r["judgment"] for r in scored.records] == ["timeout", "wrong", "correct"]
    assert scored.grader_counts["grader_timeouts"] == 1.0
    assert scored.grader_counts["grader_errors"] == 0.0
