"""A task: the tokenizer, the prompt format and the named pools of examples that stages use.

Pool names (a stage's `data`, the eval `splits`):
  "<split>"            a split of the task's own dataset ("demos", "rl", "test" for arith; "train")
  "<split>_1h"/"_2h"   the half-split of it, by `split_seed` (paper App. B)
  "<dataset>"          the test split of another dataset ("math500", "aime24", "aime25", "gsm8k")
  "<dataset>:<split>"  any split of any dataset
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from s2d_jax.data import datasets, prompts, tokenizers, toy_arith


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str  # "arith" or the dataset of the training pool ("math_train", "gsm8k")
    train_path: str  # math_train from a local JSONL/parquet (DAPO-Math-17K); "" = shipped file
    train_columns: str  # column layout of train_path: "dapo", "math", "problem_answer", ...
    prompt_style: str  # "chat" | "plain" | "raw"
    enable_thinking: bool
    split_seed: int
    arith: dict  # toy_arith.ArithConfig fields (arith only)


def resolve_pool(cfg: TaskConfig, name: str) -> tuple[str, str, str | None]:
    """(dataset, split, half or None) of a pool name (see the module docstring); a KeyError
    names the pool and what exists when the dataset or split is unknown. Reads no data."""
    base, half = name, None
    if name.endswith(("_1h", "_2h")):
        base, half = name[:-3], name[-2:].upper()
    own_splits = datasets.SPLITS[cfg.name]
    if ":" in base:
        dataset, split = base.split(":", 1)
    elif base in own_splits:
        dataset, split = cfg.name, base
    elif base in datasets.SPLITS:
        dataset, split = base, "test"
    else:
        dataset, split = "", ""
    if split not in datasets.SPLITS.get(dataset, ()):
        raise KeyError(
            f"unknown data pool {name!r}; splits of {cfg.name}: {own_splits}, other "
            f"datasets: {sorted(datasets.SPLITS)} (append _1h/_2h for a half)"
        )
    return dataset, split, half


class Task:
    """Tokenizer + prompts + pools. `tokenizer_path` is an HF directory or a sentencepiece file."""

    def __init__(self, cfg: TaskConfig, tokenizer_path: str | Path):
        self.cfg = cfg
        self.tokenizer = tokenizers.load_tokenizer(str(tokenizer_path))
        self.prompt_cfg = prompts.PromptConfig(cfg.prompt_style, cfg.enable_thinking)

    @property
    def arith_config(self) -> toy_arith.ArithConfig:
        return toy_arith.ArithConfig(**self.cfg.arith)

    def answer_style(self, name: str) -> str:
        """How completions on a pool state their final answer (`rewards.ANSWER_STYLES`).

        GSM8K solutions end in `#### N`, and so does a math_train file read with the GSM8K column
        layout; every other pool (MATH, AIME, the toy) boxes its answer, and there a later
        `#### N` line is not an answer.
        """
        dataset, _, _ = resolve_pool(self.cfg, name)
        gsm8k_file = dataset == "math_train" and self.cfg.train_columns == "gsm8k"
        return "gsm8k" if dataset == "gsm8k" or gsm8k_file else "boxed"

    @functools.cache  # noqa: B019 (a Task lives for one run; pools are reused by every stage)
    def pool(self, name: str) -> tuple[dict, ...]:
        """The examples of a pool name (see the module docstring)."""
        dataset, split, half = resolve_pool(self.cfg, name)
        examples = self._load(dataset, split)
        if half is not None:
            examples = datasets.half_split(examples, half, seed=self.cfg.split_seed)
        if not examples:
            raise ValueError(f"data pool {name!r} is empty")
        return tuple(examples)

    def _load(self, dataset: str, split: str) -> list[dict]:
        if dataset == "arith":
            return datasets.load_examples("arith", split, config=self.arith_config)
        if dataset == "math_train" and self.cfg.train_path:
            return datasets.load_examples(
                dataset,
                split,
                manual_path=self.cfg.train_path,
                config=self.cfg.train_columns or None,
            )
        return datasets.load_examples(dataset, split)

    def prompt_ids(self, example: dict) -> list[int]:
        return prompts.prompt_ids(example["problem"], self.tokenizer, self.prompt_cfg)

    def demonstration_ids(self, example: dict) -> tuple[list[int], list[int]]:
        """(prompt ids, target ids): the worked solution followed by EOS, for supervised stages."""
        if not example["solution"]:
            raise ValueError(f"example {example['id']} has no solution to learn from")
        return self.prompt_ids(example), self.tokenizer.encode(example["solution"]) + [
            self.tokenizer.eos_id
        ]


def build_tokenizer(cfg: TaskConfig, workdir: Path, hf_path: str) -> Path:
    """Where the task's tokenizer lives: the toy's is trained into the run directory once."""
    if cfg.name == "arith":
        out = Path(workdir) / "tokenizer"
        model_file = out / toy_arith.TOKENIZER_FILE
        if not model_file.exists():
            toy_arith.build_toy_tokenizer(str(out), toy_arith.ArithConfig(**cfg.arith))
        return model_file
    if not hf_path:
        raise ValueError(
            f"task {cfg.name!r} needs a Hugging Face model directory for its tokenizer"
        )
    return Path(hf_path)
