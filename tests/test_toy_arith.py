"""The toy task `arith`: determinism, disjoint balanced splits, correct worked solutions (checked by
an evaluator written independently here), and its sentencepiece tokenizer."""

import collections
import dataclasses
import json
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


MISCONCEIVED = dataclasses.replace(DEFAULT, misconceived_facts=0.3, misconception_rate=0.5)


def test_misconceptions_change_demo_steps_only():
    """Wrong demo steps use only the chosen facts, each always with the same wrong result, at about
    the configured rate; the chain goes on from the shown value; problems and answers are as without
    misconceptions."""
    clean, noisy = toy_arith.generate(DEFAULT), toy_arith.generate(MISCONCEIVED)
    for split in toy_arith.SPLITS:
        assert [ex["problem"] for ex in noisy[split]] == [ex["problem"] for ex in clean[split]]
        assert [ex["answer"] for ex in noisy[split]] == [ex["answer"] for ex in clean[split]]
    assert noisy["rl"] == clean["rl"] and noisy["test"] == clean["test"]
    tables = {op: fact_table(op, DEFAULT.modulus, DEFAULT.operands) for op in "+-"}
    shown = collections.defaultdict(collections.Counter)  # fact -> Counter of shown results
    for ex in noisy["demos"]:
        *lines, boxed = ex["solution"].split(";")
        value = None
        for line in lines:
            a, op, b, result = re.fullmatch(r"(\d)([-+])(\d)=(\d)", line).groups()
            assert value is None or int(a) == value  # the chain goes on from the shown value
            shown[int(a), op, int(b)][int(result)] += 1
            value = int(result)
        assert boxed == "\\boxed{" + str(value) + "}"
    wrong_facts = {fact for fact, results in shown.items() if len(results) > 1}
    assert len(wrong_facts) == round(0.3 * 60) == len(toy_arith.misconceptions(MISCONCEIVED))
    uses = wrong_uses = 0
    for fact, results in shown.items():
        right = tables[fact[1]][fact[0], fact[2]]
        assert len(results) <= 2 and right in results  # one wrong result per fact at most
        if fact in wrong_facts:
            uses += sum(results.values())
            wrong_uses += sum(n for result, n in results.items() if result != right)
    assert abs(wrong_uses / uses - 0.5) < 4 * (0.25 / uses) ** 0.5  # binomial, 4 standard errors
    assert toy_arith.misconceptions(DEFAULT) == {}


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
        (dict(misconceived_facts=1.5), "misconceived_facts"),
        (dict(misconception_rate=-0.1), "misconception_rate"),
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


def test_step_accuracy_counts_clean_and_misconceived_steps(tmp_path):
    """tools/toy_steps: hand-built completions with known right and wrong steps of both kinds."""
    from s2d_jax.tools import toy_steps

    (a, op, b), taught = next(iter(toy_arith.misconceptions(MISCONCEIVED).items()))
    right = fact_table(op, 10, DEFAULT.operands)[a, b]
    clean = next(
        (x, o, y)
        for x in range(10)
        for o in "+-"
        for y in DEFAULT.operands
        if (x, o, y) not in toy_arith.misconceptions(MISCONCEIVED)
    )
    clean_right = fact_table(clean[1], 10, DEFAULT.operands)[clean[0], clean[2]]
    completions = [
        f"{a}{op}{b}={right};\\boxed{{{right}}}",  # misconceived fact, right
        f"{a}{op}{b}={taught};\\boxed{{{taught}}}",  # misconceived fact, the taught wrong value
        f"{clean[0]}{clean[1]}{clean[2]}={clean_right};{clean[0]}{clean[1]}{clean[2]}="
        f"{(clean_right + 1) % 10}",  # clean fact right, then wrong
        "garbage with no steps",
    ]
    result = toy_steps.step_accuracy(completions, MISCONCEIVED)
    assert result == {
        "clean_steps": 2,
        "clean_right": 0.5,
        "misconceived_steps": 2,
        "misconceived_right": 0.5,
        "misconceived_taught": 0.5,
    }
    # The table reads a run's config.json and each stage's final samples.
    run = tmp_path / "run"
    samples = run / "grpo" / "eval_final" / "test"
    samples.mkdir(parents=True)
    (samples / "samples.jsonl").write_text(
        "".join(json.dumps({"completion": c}) + "\n" for c in completions)
    )
    task = dict(name="arith", arith=dataclasses.asdict(MISCONCEIVED))
    (run / "config.json").write_text(json.dumps(dict(task=task, stages={"sft": {}, "grpo": {}})))
    table = toy_steps.run_table(run)
    assert "| grpo | 50.0% of 2 | 50.0% of 2 | 50.0% |" in table and "| sft |" not in table
    with pytest.raises(FileNotFoundError, match="stage 'sft'"):
        toy_steps.run_table(run, ["sft"])
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        toy_steps.run_table(tmp_path)


def test_each_pool_is_graded_in_the_answer_style_of_its_dataset(tmp_path):
    from configs import toy_arith as toy_config
    from s2d_jax.data.task import Task
    from s2d_jax.grading import rewards
    from s2d_jax.workflow.config import parse_task

    task_cfg = parse_task(toy_config.get_config("stage3=false"))
    tokenizer = toy_arith.build_toy_tokenizer(
        str(tmp_path), toy_arith.ArithConfig(**task_cfg.arith)
    )
    task = Task(task_cfg, tokenizer)
    styles = {name: task.answer_style(name) for name in ("demos", "rl_1h", "test", "math500")}
    styles |= {name: task.answer_style(name) for name in ("aime24", "gsm8k", "gsm8k:train")}
    assert styles == {
        "demos": "boxed",
        "rl_1h": "boxed",
        "test": "boxed",
        "math500": "boxed",
        "aime24": "boxed",
        "gsm8k": "gsm8k",
        "gsm8k:train": "gsm8k",
    }
    gsm8k_file = Task(dataclasses.replace(task_cfg, train_columns="gsm8k"), tokenizer)
    assert gsm8k_file.answer_style("math_train:train") == "gsm8k"
    assert task.answer_style("math_train:train") == "boxed"
    with pytest.raises(KeyError, match="unknown data pool 'nope'"):
        task.answer_style("nope")
    # The toy's worked solutions end in a box that its style reads (a misconceived demo's box
    # may differ from the true answer, so the box itself is the expectation).
    for example in task.pool("demos")[:20]:
        boxed_value = example["solution"].removesuffix("}").rsplit("\\boxed{", 1)[1]
        found = rewards.extract_answer(example["solution"], answer_style=task.answer_style("demos"))
        assert found == boxed_value
