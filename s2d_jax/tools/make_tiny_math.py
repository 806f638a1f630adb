"""Write the shipped `tiny_dapo_math.jsonl`: short MATH train problems in DAPO-Math-17K's layout.

    python -m s2d_jax.tools.make_tiny_math            # rewrites s2d_jax/data/files/tiny_dapo_math.jsonl

It is the training file of `configs/paper.py:pair=tiny`, the laptop twin of a pod launch: in the
layout of the paper's training set (chat-message prompt wrapped in DAPO's instruction, answer in
`reward_model.ground_truth`, id in `extra_info.index`), so the twin reads it through the same
`train_columns="dapo"` path as DAPO-Math-17K. Rows are the first `ROWS` MATH train problems (file
order) with an integer answer whose chat prompt, under the twin's tokenizer
(`random_models.write_tokenizer`), takes PROMPT_TOKENS tokens: one padding bucket, so each jitted
step of the twin compiles once per stage. `tests/test_random_models.py` checks that the shipped
file is what this writes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from s2d_jax.data import builders, prompts, sources, tokenizers
from s2d_jax.workflow import random_models

ROWS = 96
PROMPT_TOKENS = range(65, 97)  # the sampler bucket (64, 96]
OUT_FILE = "tiny_dapo_math.jsonl"


def tiny_rows(math_train_rows: list[dict], tokenizer: tokenizers.Tokenizer) -> list[dict]:
    """DAPO-layout rows for the first ROWS integer-answer problems of MATH train whose chat
    prompt takes PROMPT_TOKENS tokens."""
    dapo = sources.COLUMN_MAPS["dapo"]
    chat = prompts.PromptConfig("chat")

    def fits(problem: str) -> bool:
        return len(prompts.prompt_ids(problem, tokenizer, chat)) in PROMPT_TOKENS

    picked = [
        r
        for r in math_train_rows
        if len(r["problem"]) <= 4 * PROMPT_TOKENS.stop  # cheap pre-filter
        and r["answer"].lstrip("-").isdigit()
        and fits(r["problem"])
    ][:ROWS]
    return [
        {
            "data_source": "math_dapo",
            "prompt": [
                {"role": "user", "content": dapo.strip_prefix + r["problem"] + dapo.strip_suffix}
            ],
            "ability": "MATH",
            "reward_model": {"ground_truth": r["answer"], "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": r["unique_id"]},
        }
        for r in picked
    ]


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build() -> str:
    """The file's text, from the shipped MATH train file and a freshly trained twin tokenizer."""
    source = Path(builders.FILES_DIR) / "math_train.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        random_models.write_tokenizer(Path(tmp))
        return render(tiny_rows(rows, tokenizers.load_tokenizer(tmp)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(builders.FILES_DIR) / OUT_FILE))
    args = parser.parse_args(argv)
    Path(args.out).write_text(build(), encoding="utf-8")
    print(f"wrote {ROWS} rows to {args.out}")


if __name__ == "__main__":
    main()
