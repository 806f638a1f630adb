"""The toy task `arith`: determinism, disjoint balanced splits, correct worked solutions (checked by
an evaluator written independently here), and its sentencepiece tokenizer."""

import collections
import dataclasses
import re
import time

import pytest

from s2d_jax.data import datasets, prompts, toy_arith
from s2d_jax.data import tokenizers as s2d_tokenizers

DEFAULT = toy_arith.ArithConfig()
HARDER = toy_arith.ArithConfig(
    ops=("+", "-", "*"), operands=tuple(range(10)), modulus=13, min_ops=1, max_ops=4,
    num_demos=300, num_rl=64, num_test=100, seed=3,
)  # fmt: skip
CONFIGS = [DEFAULT, HARDER]


def fact_table(op, modulus, operands):
    """Result of `a op b` mod m for every a, b, by counting steps instead of using % on a formula."""
    table = {}
    for a in range(modulus):
        for b in operands:
            if op == "*":
                value = 0
                for _ in range(b):  # b-fold repeated addition
                    value = value + a if value + a < modulus else value + a - modulus
            else:
                value = a
                for _ in range(b):  # b unit steps around the clock
                    if op == "+":
                        value = 0 if value == modulus - 1 else value + 1
                    else:
                        value = modulus - 1 if value == 0 else value - 1
            table[a, b] = value
    return table


def evaluate(problem, cfg):
    """Independent evaluator: (start, [(op, b), ...], [running values]) of a problem string."""
    match = re.fullmatch(r"(\d+)((?:[-+*]\d+)+)=\?", problem)
    assert match, problem
    steps = [(op, int(b)) for op, b in re.findall(r"([-+*])(\d+)", match.group(2))]
    tables = {op: fact_table(op, cfg.modulus, cfg.operands) for op in "+-*"}
    values = [int(match.group(1))]
    for op, b in steps:
        values.append(tables[op][values[-1], b])
    return int(match.group(1)), steps, values


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=["default", "harder"])
def generated(request):
    cfg = CONFIGS[request.param]
    return cfg, toy_arith.generate(cfg)


def test_deterministic_by_seed(generated):
    cfg, splits = generated
    assert toy_arith.generate(cfg) == splits
    other = toy_arith.generate(dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert [ex["problem"] for ex in other["test"]] != [ex["problem"] for ex in splits["test"]]


def test_sizes_schema_and_level_balance(generated):
    cfg, splits = generated
    levels = range(cfg.min_ops, cfg.max_ops + 1)
    for split, size in (("demos", cfg.num_demos), ("rl", cfg.num_rl), ("test", cfg.num_test)):
        examples = splits[split]
        assert len(examples) == size
        assert [ex["id"] for ex in examples] == [f"arith/{split}/{i}" for i in range(size)]
        assert all(
            tuple(ex) == ("id", "problem", "answer", "level", "subject", "solution")
            for ex in examples
        )
        counts = collections.Counter(ex["level"] for ex in examples)
        assert set(counts) == set(levels)
        assert max(counts.values()) - min(counts.values()) <= 1
        assert sum(counts.values()) == size
        # levels interleave rather than come in blocks
        assert len({ex["level"] for ex in examples[:20]}) > 1


def test_splits_are_disjoint(generated):
    _, splits = generated
    problems = {split: [ex["problem"] for ex in exs] for split, exs in splits.items()}
    assert not set(problems["demos"]) & set(problems["rl"])
    assert not set(problems["demos"]) & set(problems["test"])
    assert not set(problems["rl"]) & set(problems["test"])
    assert len(set(problems["rl"])) == len(problems["rl"])
    assert len(set(problems["test"])) == len(problems["test"])


def test_demos_repeat_only_where_a_level_runs_out():
    splits = toy_arith.generate(DEFAULT)
    per_level = collections.defaultdict(list)
    for ex in splits["demos"]:
        per_level[ex["level"]].append(ex["problem"])
    # level 2 has 10 * 6**2 = 360 problems; rl and test hold 52 + 103 of them
    assert len(set(per_level[2])) == 360 - 52 - 103
    for level in range(3, 7):
        assert len(set(per_level[level])) == len(per_level[level]) == 400


def test_every_solution_is_right(generated):
    cfg, splits = generated
    for split, examples in splits.items():
        for ex in examples:
            start, steps, values = evaluate(ex["problem"], cfg)
            assert ex["level"] == len(steps)
            assert all(op in cfg.ops and b in cfg.operands for op, b in steps)
            assert 0 <= start < cfg.modulus
            assert ex["answer"] == str(values[-1])
            if split != "demos":
                assert ex["solution"] == ""  # labeled prompts only
                continue
            *lines, boxed = ex["solution"].split(";")
            assert boxed == "\\boxed{" + ex["answer"] + "}"
            assert len(lines) == len(steps)
            for i, (line, (op, b)) in enumerate(zip(lines, steps, strict=True)):
                assert line == f"{values[i]}{op}{b}={values[i + 1]}"


def test_load_examples_routes_to_generator():
    cfg = dataclasses.replace(DEFAULT, num_demos=50, num_rl=10, num_test=20)
    splits = toy_arith.generate(cfg)
    for split in toy_arith.SPLITS:
        assert datasets.load_examples("arith", split, config=cfg) == splits[split]
    assert datasets.load_stats("arith", config=cfg)["rl"]["kept"] == 10
    assert len(datasets.load_examples("arith", "test")) == DEFAULT.num_test
    with pytest.raises(ValueError, match="manual_path"):
        datasets.load_examples("arith", "demos", manual_path="x.jsonl")


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(ops=("/",)), "ops"),
        (dict(operands=(1, -2)), "operands"),
        (dict(modulus=1), "modulus"),
        (dict(min_ops=4, max_ops=3), "min_ops"),
        (dict(num_test=-1), "num_test"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"ArithConfig.{field}"):
        toy_arith.ArithConfig(**kwargs)


def test_too_small_a_level_is_an_error():
    cfg = toy_arith.ArithConfig(ops=("+",), operands=(1,), min_ops=1, max_ops=1, num_test=11)
    with pytest.raises(ValueError, match="level 1 has only 10 distinct problems"):
        toy_arith.generate(cfg)


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=["default", "harder"])
def toy_tokenizer(request, tmp_path_factory):
    cfg = CONFIGS[request.param]
    out = tmp_path_factory.mktemp("toy_tok")
    start = time.perf_counter()
    path = toy_arith.build_toy_tokenizer(str(out), cfg)
    seconds = time.perf_counter() - start
    return cfg, path, seconds


def test_tokenizer_is_fast_small_and_reloadable(toy_tokenizer):
    cfg, path, seconds = toy_tokenizer
    assert seconds < 2.0
    tok = s2d_tokenizers.load_tokenizer(path)
    same = s2d_tokenizers.load_tokenizer(str(path).rsplit("/", 1)[0])  # the directory works too
    assert (tok.vocab_size, tok.eos_ids, tok.pad_id, tok.bos_id) == (22, (1,), 0, 2)
    assert (same.vocab_size, same.eos_ids) == (tok.vocab_size, tok.eos_ids)
    assert tok.kind == "sentencepiece" and not tok.has_chat_template


def test_tokenizer_round_trip_and_single_symbols(toy_tokenizer):
    cfg, path, _ = toy_tokenizer
    tok = s2d_tokenizers.load_tokenizer(path)
    pieces = {tok.backend.id_to_piece(i) for i in range(tok.vocab_size)}
    for symbol in [*"0123456789+-*=?;}", "\\boxed{"]:
        (token,) = tok.encode(symbol)
        assert tok.backend.id_to_piece(token) == symbol and symbol in pieces
    longest = 0
    for examples in toy_arith.generate(cfg).values():
        for ex in examples:
            for text in (ex["problem"], ex["solution"], ex["answer"]):
                ids = tok.encode(text)
                assert tok.decode(ids) == text
                assert len(ids) == len(text) - (len("\\boxed{") - 1) * text.count("\\boxed{")
            prompt = prompts.prompt_ids(ex["problem"], tok, prompts.PromptConfig(style="raw"))
            assert prompt[0] == tok.bos_id and tok.decode(prompt) == ex["problem"]
            completion = tok.encode(ex["solution"]) + [tok.eos_id, tok.pad_id]
            assert tok.decode(completion) == ex["solution"]
            longest = max(longest, len(prompt) + len(completion) - 1)
    if cfg == DEFAULT:
        assert longest == 56  # BOS + 15 prompt + 39 solution + EOS at 6 operations
