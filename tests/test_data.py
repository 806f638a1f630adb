"""Data: tfds builders for the shipped sets, user files (JSONL, DAPO parquet), half split, prompts,
and the tokenizer wrapper over a locally built Hugging Face tokenizer (no network)."""

import json
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2d_jax.data import datasets, prompts, sources
from s2d_jax.data import tokenizers as s2d_tokenizers

FILES = os.path.join(os.path.dirname(datasets.__file__), "files")
SHIPPED = [
    ("math500", "test", 500),
    ("aime24", "test", 30),
    ("aime25", "test", 30),
    ("gsm8k", "test", 1319),
    ("gsm8k", "train", 7473),
    # 7500 rows: 2 have an empty answer (train/number_theory/7115 and a sibling) and one problem
    # repeats another up to whitespace (algebra/24377 vs 2463), so 7497 are kept.
    ("math_train", "train", 7497),
]
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of "
    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def raw_rows(name):
    with open(os.path.join(FILES, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def shipped(data_dir):
    """Every shipped split, built once into a fresh data_dir."""
    return {
        (name, split): datasets.load_examples(name, split, data_dir=data_dir)
        for name, split, _ in SHIPPED
    }


@pytest.mark.parametrize("name,split,count", SHIPPED)
def test_shipped_counts_and_schema(shipped, name, split, count):
    examples = shipped[name, split]
    assert len(examples) == count
    for ex in examples:
        assert tuple(ex) == sources.EXAMPLE_FIELDS
        assert all(isinstance(ex[k], str) for k in ("id", "problem", "answer", "subject"))
        assert isinstance(ex["level"], int) and isinstance(ex["solution"], str)
        assert ex["problem"].strip() and ex["answer"].strip()
    assert len({ex["id"] for ex in examples}) == count


def test_math500_matches_file(shipped):
    rows = raw_rows("math500.jsonl")
    for ex, row in zip(shipped["math500", "test"], rows, strict=True):
        assert (ex["id"], ex["problem"], ex["answer"]) == (
            row["unique_id"],
            row["problem"].strip(),
            row["answer"],
        )
        assert (ex["level"], ex["subject"], ex["solution"]) == (
            row["level"],
            row["subject"],
            row["solution"].strip(),
        )


@pytest.mark.parametrize("name", ["aime24", "aime25"])
def test_aime_matches_file(shipped, name):
    rows = raw_rows(f"{name}.jsonl")
    got = [
        (ex["problem"], ex["answer"], ex["level"], ex["subject"]) for ex in shipped[name, "test"]
    ]
    assert got == [(r["problem"].strip(), r["answer"], -1, "") for r in rows]
    assert [ex["id"] for ex in shipped[name, "test"]] == [f"{name}/test/{i}" for i in range(30)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_answers_are_the_number_after_hashes(shipped, split):
    rows = raw_rows(f"gsm8k_{split}.jsonl")
    for ex, row in zip(shipped["gsm8k", split], rows, strict=True):
        expected = re.search(r"####\s*(\S+)\s*$", row["answer"]).group(1).replace(",", "")
        assert ex["answer"] == expected
        assert re.fullmatch(r"-?\d+", ex["answer"])  # GSM8K answers are integers
        assert ex["problem"] == row["question"].strip() and ex["solution"] == row["answer"].strip()


@pytest.mark.parametrize(
    "text,answer",
    [
        ("So 3 + 4 = 7.\n#### 7", "7"),
        ("x\n#### 1,080", "1080"),
        ("x\n####  -12 \n", "-12"),
        ("a #### 1\n#### 2", "2"),
        ("x\n#### 109,200,000", "109200000"),
    ],
)
def test_parse_gsm8k_answer(text, answer):
    assert sources.parse_gsm8k_answer(text) == answer


@pytest.mark.parametrize(
    "text,reason", [("no marker 12", "missing_final_answer"), ("#### ", "empty_answer")]
)
def test_parse_gsm8k_answer_rejects(text, reason):
    with pytest.raises(sources.RowError) as err:
        sources.parse_gsm8k_answer(text)
    assert err.value.reason == reason


def test_math_train_stats_report_skips_and_duplicates(shipped, data_dir):
    stats = datasets.load_stats("math_train", data_dir=data_dir)["train"]
    assert (stats["rows"], stats["kept"], stats["duplicates"]) == (7500, 7497, 1)
    assert stats["skipped"] == {"empty_answer": 2}
    assert any("math_train.jsonl:7037" in e for e in stats["errors"])
    keys = [sources.normalize_problem(ex["problem"]) for ex in shipped["math_train", "train"]]
    assert len(set(keys)) == len(keys)


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "pool.jsonl"
    lines = [
        json.dumps({"problem": "What is 1+1?", "answer": "2"}),
        "{not json",
        json.dumps({"problem": "No answer here"}),
        json.dumps({"problem": "Empty answer", "answer": "   "}),
        json.dumps({"problem": 17, "answer": "3"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"problem": "What  is 1+1? ", "answer": "3"}),  # duplicate, other answer
        json.dumps({"problem": "What is 2+2?", "answer": 4}),  # numeric answer is accepted
    ]
    path.write_text("\n".join(lines) + "\n")
    kwargs = dict(manual_path=str(path), config="problem_answer", data_dir=str(tmp_path / "d"))
    examples = datasets.load_examples("math_train", "train", **kwargs)
    assert [(ex["problem"], ex["answer"]) for ex in examples] == [
        ("What is 1+1?", "2"),
        ("What is 2+2?", "4"),
    ]
    assert [ex["id"] for ex in examples] == ["math_train/train/0", "math_train/train/7"]
    stats = datasets.load_stats("math_train", **kwargs)["train"]
    assert stats["rows"] == 8 and stats["kept"] == 2
    assert stats["skipped"] == {
        "bad_json": 1,
        "missing_field": 2,
        "empty_answer": 1,
        "not_an_object": 1,
    }
    assert (stats["duplicates"], stats["conflicting_duplicates"]) == (1, 1)
    assert f"{path}:2: bad_json" in stats["errors"][0]


def test_missing_file_names_path_and_schema(tmp_path):
    missing = str(tmp_path / "nowhere" / "dapo.parquet")
    with pytest.raises(FileNotFoundError) as err:
        datasets.load_examples("math_train", "train", manual_path=missing, config="dapo")
    assert missing in str(err.value)
    assert "reward_model.ground_truth" in str(err.value) and "'prompt'" in str(err.value)


def test_dapo_parquet_layout(tmp_path):
    problems = [f"Find $x$ if $x + {i} = {2 * i}$." for i in range(5)]
    rows = []
    for repeat in range(3):  # the released DAPO file repeats every prompt many times
        for i, problem in enumerate(problems):
            rows.append(
                {
                    "data_source": "math_dapo",
                    "prompt": [{"content": DAPO_PREFIX + problem + DAPO_SUFFIX, "role": "user"}],
                    "ability": "MATH",
                    "reward_model": {"ground_truth": str(i), "style": "rule-lighteval/MATH_v2"},
                    "extra_info": {"index": f"uuid-{i}-{repeat}"},
                }
            )
    path = tmp_path / "dapo-math-17k.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    kwargs = dict(manual_path=str(path), config="dapo", data_dir=str(tmp_path / "d"))
    examples = datasets.load_examples("math_train", "train", **kwargs)
    assert [(ex["id"], ex["problem"], ex["answer"]) for ex in examples] == [
        (f"uuid-{i}-0", problems[i], str(i)) for i in range(5)
    ]
    stats = datasets.load_stats("math_train", **kwargs)["train"]
    assert (stats["rows"], stats["kept"], stats["duplicates"]) == (15, 5, 10)


def test_custom_column_map_and_cache_follows_file_content(tmp_path):
    path = tmp_path / "mine.jsonl"
    columns = sources.ColumnMap(
        problem="q", answer="final", level="meta.difficulty", subject="topic"
    )
    kwargs = dict(manual_path=str(path), config=columns, data_dir=str(tmp_path / "d"))
    path.write_text(json.dumps({"q": "Q1", "final": 5, "meta": {"difficulty": "Level 3"}}) + "\n")
    (ex,) = datasets.load_examples("math_train", "train", **kwargs)
    assert (ex["problem"], ex["answer"], ex["level"], ex["subject"]) == ("Q1", "5", 3, "")
    # Same path, new content: the cache must not serve the old build.
    path.write_text(json.dumps({"q": "Q2", "final": "x", "topic": "algebra"}) + "\n")
    (ex,) = datasets.load_examples("math_train", "train", **kwargs)
    assert (ex["problem"], ex["answer"], ex["level"], ex["subject"]) == ("Q2", "x", -1, "algebra")


def test_bad_names_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_examples("math5000", "test")
    with pytest.raises(ValueError, match="no split 'train'"):
        datasets.load_examples("math500", "train")
    with pytest.raises(ValueError, match="needs manual_path"):
        datasets.load_examples("math_train", "train", config="dapo")
    with pytest.raises(ValueError, match="math_train config"):
        path = tmp_path / "x.jsonl"
        path.write_text("{}\n")
        datasets.load_examples("math_train", "train", manual_path=str(path), config="nope")


def test_half_split(shipped):
    examples = shipped["math_train", "train"]
    first = datasets.half_split(examples, "1H", seed=0)
    second = datasets.half_split(examples, "2H", seed=0)
    ids_1, ids_2 = {ex["id"] for ex in first}, {ex["id"] for ex in second}
    assert not ids_1 & ids_2
    assert ids_1 | ids_2 == {ex["id"] for ex in examples}
    assert len(first) - len(second) == 1  # 7497 examples: 1H takes the odd one
    assert first == [ex for ex in examples if ex["id"] in ids_1]  # input order kept
    shuffled = list(examples)
    random.Random(1).shuffle(shuffled)
    assert {ex["id"] for ex in datasets.half_split(shuffled, "1H", seed=0)} == ids_1
    other = {ex["id"] for ex in datasets.half_split(examples, "1H", seed=1)}
    assert other != ids_1 and 0.4 < len(other & ids_1) / len(ids_1) < 0.6
    with pytest.raises(ValueError, match="half"):
        datasets.half_split(examples, "3H", seed=0)


# --- tokenizer wrapper and prompts, on a tiny Hugging Face tokenizer built here ---


def build_hf_tokenizer(out_dir, *, bos=None, generation_eos=None):
    texts = [prompts.INSTRUCTION, "What is $1+1$? The answer is 2."] * 20
    tok = s2d_tokenizers.train_chat_tokenizer(out_dir, texts, 320, bos=bos)
    if generation_eos is not None:
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": generation_eos}, f)
    return tok


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf_tok"))
    build_hf_tokenizer(out)
    return out


def test_hf_tokenizer_attributes(hf_dir):
    import tokenizers as hf_tokenizers

    tok = s2d_tokenizers.load_tokenizer(hf_dir)
    raw = hf_tokenizers.Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    assert tok.kind == "hf" and tok.has_chat_template
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    im_end, endoftext = raw.token_to_id("<|im_end|>"), raw.token_to_id("<|endoftext|>")
    assert tok.eos_ids == (im_end, endoftext) and tok.eos_id == im_end
    assert tok.pad_id == endoftext and tok.bos_id is None
    text = "What is $1+1$? Ünïcode ok. " + prompts.INSTRUCTION
    ids = tok.encode(text)
    assert ids == raw.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert tok.decode([*ids, im_end, endoftext, endoftext]) == text  # specials dropped
    assert tok.encode_prompt(text) == ids  # no BOS in this tokenizer


def test_hf_tokenizer_bos_and_generation_config(tmp_path):
    raw = build_hf_tokenizer(str(tmp_path), bos="<s>", generation_eos=[2, 0])
    tok = s2d_tokenizers.load_tokenizer(str(tmp_path))
    bos = raw.token_to_id("<s>")
    assert tok.bos_id == bos
    assert tok.eos_ids == (raw.token_to_id("<|im_end|>"), raw.token_to_id("<|endoftext|>"))
    ids = tok.encode("What is 2?")
    assert tok.encode_prompt("What is 2?") == [bos, *ids]
    assert tok.encode_prompt("<s>What is 2?") == [bos, *ids]  # BOS written by a template: once


def test_load_tokenizer_rejects_other_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        s2d_tokenizers.load_tokenizer(str(tmp_path))


def test_prompt_styles(hf_dir):
    tok = s2d_tokenizers.load_tokenizer(hf_dir)
    problem = "What is $1+1$?"
    instruction = "Let's think step by step and output the final answer within \\boxed{}."
    assert prompts.with_instruction(problem) == problem + " " + instruction
    raw = prompts.format_prompt(problem, tok, prompts.PromptConfig(style="raw"))
    assert raw == problem
    plain = prompts.format_prompt(problem, tok, prompts.PromptConfig(style="plain"))
    assert plain == problem + " " + instruction
    user = f"<|im_start|>user\n{problem} {instruction}<|im_end|>\n<|im_start|>assistant\n"
    chat = prompts.format_prompt(problem, tok, prompts.PromptConfig())
    assert chat == user + "<think>\n\n</think>\n\n"  # thinking off by default
    thinking = prompts.format_prompt(problem, tok, prompts.PromptConfig(enable_thinking=True))
    assert thinking == user
    ids = prompts.prompt_ids(problem, tok, prompts.PromptConfig())
    assert tok.decode(ids) == "user\n" + problem + " " + instruction + "\nassistant\n" + (
        "<think>\n\n</think>\n\n"
    )  # chat markers are special tokens, dropped by decode
    with pytest.raises(ValueError, match="style"):
        prompts.PromptConfig(style="fancy")


@pytest.mark.parametrize(
    "content, found",
    [
        ("", r"has no rows \(empty file\)"),
        (
            json.dumps({"question": "Q", "answer": "1"}) + "\n" + json.dumps({"problem": "Q"}),
            r"has 2 rows and none is usable: dropped by reason \{'missing_field': 2\}",
        ),
        (
            "{bad\n[1, 2]\n",
            r"has 2 rows and none is usable: dropped by reason \{'bad_json': 1, 'not_an_object': 1\}",
        ),
    ],
    ids=["empty", "wrong_column", "malformed"],
)
def test_file_without_usable_rows_is_named_before_the_build(tmp_path, content, found):
    path = tmp_path / "pool.jsonl"
    path.write_text(content)
    data_dir = tmp_path / "d"
    with pytest.raises(sources.NoUsableRowsError) as err:
        datasets.load_examples(
            "math_train",
            "train",
            manual_path=str(path),
            config="problem_answer",
            data_dir=str(data_dir),
        )
    assert re.search(rf"{re.escape(str(path))} {found}", str(err.value))
    assert "expected JSONL or parquet rows with columns 'problem' (problem text)" in str(err.value)
    assert not (data_dir / "math_train").exists()  # tfds never started
