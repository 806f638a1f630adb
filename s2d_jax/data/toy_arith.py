"""The built-in toy task `arith`: chains of modular operations with worked solutions.

A problem starts from a number and applies a chain of operations, left to right, in arithmetic
modulo `cfg.modulus` (10 by default, so every value is one digit):
    problem   `8-1+3+3=?`
    solution  `8-1=7;7+3=0;0+3=3;\\boxed{3}`   (the pipeline appends EOS)
    answer    `3`
The difficulty level is the number of operations; each split has the same count of every level.
With the default fields (+b / -b, b in {1, 2, 3}, mod 10: 60 arithmetic facts, 2-6 operations) a
~1M-parameter model learns it from demonstrations in CPU-minutes, and then saturates; harder
variants (more operands, `*`, another modulus) are a config change.

Misconceptions (`misconceived_facts > 0`, used by configs/common.arith_task): the demonstrations
teach a seeded subset of the arithmetic facts wrongly part of the time, e.g. `7+3=1` in half the
demo steps that use `7+3`, the chain then going on from the wrong value. A model warm-started on
them guesses those facts, so its accuracy stays below saturation however long it trains, and only
the verifier's reward (answers of `rl` and `test` are always right) can teach the correct value:
this is the headroom that RL has on the toy (measured in the README). Without misconceptions a
model goes from chance to ~100% within a few dozen warm-start steps, and GRPO from inside that
jump learned from answers right by luck (1 in 10 mod 10) more than from right steps.

Splits, all deterministic in `cfg.seed` and pairwise disjoint in problem strings:
  `demos` (warm-start demonstrations, with solutions), `rl` (labeled prompts: answer only), `test`.
`test` is drawn first and `rl` second, so resizing `demos` changes neither. A level with fewer
unused problems than `num_demos` asks for (level 2 of the default has 360 problems in all) repeats
its remaining problems in `demos`; `rl` and `test` never repeat a problem.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os

import numpy as np

SPLITS = ("demos", "rl", "test")
OPERATIONS = ("+", "-", "*")
ANSWER_OPEN, ANSWER_CLOSE = "\\boxed{", "}"
STEP_SEPARATOR = ";"
# Characters every toy tokenizer holds, whatever the config uses, so vocabularies stay comparable.
_TOKENIZER_CHARS = "0123456789+-*=?;}"
TOKENIZER_FILE = "arith_sp.model"
# How many draws per needed problem before a level switches from rejection sampling to listing
# all its problems (only small levels get there).
_ENUMERATE_FACTOR = 4


@dataclasses.dataclass(frozen=True)
class ArithConfig:
    """The toy task's generator settings; every field changes the data (and its cache key)."""

    ops: tuple[str, ...] = ("+", "-")
    operands: tuple[int, ...] = (1, 2, 3)
    modulus: int = 10
    min_ops: int = 2
    max_ops: int = 6
    seed: int = 0
    num_demos: int = 2000
    num_rl: int = 256
    num_test: int = 512
    # Fraction of the `modulus * len(ops) * len(operands)` facts that demos teach wrongly, and how
    # often a demo step using such a fact shows its wrong result (see the module docstring).
    misconceived_facts: float = 0.0
    misconception_rate: float = 0.5

    def __post_init__(self):
        if (
            not self.ops
            or any(op not in OPERATIONS for op in self.ops)
            or len(set(self.ops)) != len(self.ops)
        ):
            raise ValueError(
                f"ArithConfig.ops={self.ops!r}: expected distinct items of {OPERATIONS}"
            )
        if not self.operands or len(set(self.operands)) != len(self.operands):
            raise ValueError(f"ArithConfig.operands={self.operands!r}: expected distinct ints")
        if any(not isinstance(b, int) or b < 0 for b in self.operands):
            raise ValueError(f"ArithConfig.operands={self.operands!r}: expected ints >= 0")
        if not isinstance(self.modulus, int) or self.modulus < 2:
            raise ValueError(f"ArithConfig.modulus={self.modulus!r}: expected an int >= 2")
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(
                f"ArithConfig.min_ops={self.min_ops}, max_ops={self.max_ops}: "
                "expected 1 <= min_ops <= max_ops"
            )
        for name in ("seed", "num_demos", "num_rl", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"ArithConfig.{name}={getattr(self, name)}: expected >= 0")
        for name in ("misconceived_facts", "misconception_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ArithConfig.{name}={getattr(self, name)}: expected in [0, 1]")

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(self.min_ops, self.max_ops + 1))

    def split_size(self, split: str) -> int:
        return {"demos": self.num_demos, "rl": self.num_rl, "test": self.num_test}[split]


def apply_op(value: int, op: str, operand: int, modulus: int) -> int:
    """One step: `value op operand` modulo `modulus`."""
    if op == "+":
        return (value + operand) % modulus
    if op == "-":
        return (value - operand) % modulus
    return (value * operand) % modulus


def format_problem(start: int, steps: tuple[tuple[str, int], ...]) -> str:
    """`8, (("-", 1), ("+", 3))` -> `8-1+3=?`."""
    return f"{start}" + "".join(f"{op}{b}" for op, b in steps) + "=?"


Fact = tuple[int, str, int]  # (value, op, operand)


def misconceptions(cfg: ArithConfig) -> dict[Fact, int]:
    """The facts the demos teach wrongly, each with its one wrong result (seeded by `cfg.seed`)."""
    facts = [(a, op, b) for a in range(cfg.modulus) for op in cfg.ops for b in cfg.operands]
    count = round(cfg.misconceived_facts * len(facts))
    rng = np.random.default_rng([cfg.seed, 2_000_000])
    wrong = {}
    for i in sorted(rng.choice(len(facts), size=count, replace=False)):
        right = apply_op(*facts[i], cfg.modulus)
        # A uniformly drawn other value: a neighbour would make two errors cancel more often.
        wrong[facts[i]] = (right + 1 + int(rng.integers(cfg.modulus - 1))) % cfg.modulus
    return wrong


def solve(
    start: int,
    steps: tuple[tuple[str, int], ...],
    modulus: int,
    wrong_step=lambda value, op, b: None,
) -> tuple[str, int]:
    """The worked solution text (ending in `\\boxed{answer}`) and its final value.

    `wrong_step(value, op, b)` may return a wrong result that the solution shows (and goes on
    from) instead of the right one; the default shows every step right.
    """
    lines, value = [], start
    for op, b in steps:
        new = wrong_step(value, op, b)
        new = apply_op(value, op, b, modulus) if new is None else new
        lines.append(f"{value}{op}{b}={new}")
        value = new
    lines.append(f"{ANSWER_OPEN}{value}{ANSWER_CLOSE}")
    return STEP_SEPARATOR.join(lines), value


def level_counts(total: int, levels: tuple[int, ...]) -> dict[int, int]:
    """`total` spread over `levels` as evenly as possible (the first levels take the remainder)."""
    base, extra = divmod(total, len(levels))
    return {level: base + (i < extra) for i, level in enumerate(levels)}


def generate(cfg: ArithConfig) -> dict[str, list[dict]]:
    """All three splits as lists of example dicts in the common schema (see `sources.py`).

    `demos` examples carry the worked `solution`; `rl` and `test` carry only the `answer`
    (their `solution` is ""). `answer` is always the right one; with misconceptions a demo's
    solution may end in another. Each split is shuffled so levels interleave. Misconceptions change
    demo solutions only, never which problems are drawn.
    """
    per_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    counts = {split: level_counts(cfg.split_size(split), cfg.levels) for split in SPLITS}
    wrong = misconceptions(cfg)
    for level in cfg.levels:
        drawn = _draw_level(cfg, level, {split: counts[split][level] for split in SPLITS})
        # A stream of its own, so misconceptions leave the problem draws unchanged.
        noise = np.random.default_rng([cfg.seed, level, 3_000_000])
        demo_step = _misconceived_step(wrong, cfg.misconception_rate, noise)
        for split in SPLITS:
            for start, steps in drawn[split]:
                _, answer = solve(start, steps, cfg.modulus)
                solution = (
                    solve(start, steps, cfg.modulus, demo_step)[0] if split == "demos" else ""
                )
                per_split[split].append(
                    {
                        "problem": format_problem(start, steps),
                        "answer": str(answer),
                        "level": level,
                        "subject": "arith",
                        "solution": solution,
                    }
                )
    out = {}
    for split_index, split in enumerate(SPLITS):
        order = np.random.default_rng([cfg.seed, 1_000_000 + split_index]).permutation(
            len(per_split[split])
        )
        out[split] = [
            {"id": f"arith/{split}/{i}", **per_split[split][j]} for i, j in enumerate(order)
        ]
    return out


def _misconceived_step(wrong: dict[Fact, int], rate: float, rng: np.random.Generator):
    """A `solve` hook showing a misconceived fact's wrong result with probability `rate`."""

    def step(value, op, b):
        fact = (value, op, b)
        return wrong[fact] if fact in wrong and rng.random() < rate else None

    return step


def _draw_level(cfg: ArithConfig, level: int, counts: dict[str, int]) -> dict[str, list]:
    """Problems of one level for each split: `test` then `rl` unique, then `demos`."""
    rng = np.random.default_rng([cfg.seed, level])
    moves = [(op, b) for op in cfg.ops for b in cfg.operands]
    space = cfg.modulus * len(moves) ** level
    unique_needed = counts["test"] + counts["rl"]
    if unique_needed > space:
        raise ValueError(
            f"ArithConfig: level {level} has only {space} distinct problems, but num_test and "
            f"num_rl ask for {unique_needed} of them"
        )
    if space <= _ENUMERATE_FACTOR * sum(counts.values()):
        everything = [
            (start, steps)
            for start in range(cfg.modulus)
            for steps in itertools.product(moves, repeat=level)
        ]
        pool = [everything[i] for i in rng.permutation(space)]
        test, rl, rest = (
            pool[: counts["test"]],
            pool[counts["test"] : unique_needed],
            pool[unique_needed:],
        )
        if counts["demos"] and not rest:
            raise ValueError(f"ArithConfig: level {level} has no problems left for demos")
        demos = [rest[i % len(rest)] for i in range(counts["demos"])]
        return {"test": test, "rl": rl, "demos": demos}
    used: set = set()
    return {
        split: _draw_unique(rng, cfg, moves, level, counts[split], used) for split in SPLITS[::-1]
    }


def _draw_unique(rng, cfg: ArithConfig, moves: list, level: int, count: int, used: set) -> list:
    """`count` random problems not in `used` (which grows); the space is >> count here."""
    drawn = []
    while len(drawn) < count:
        start = int(rng.integers(cfg.modulus))
        steps = tuple(moves[int(i)] for i in rng.integers(len(moves), size=level))
        if (start, steps) not in used:
            used.add((start, steps))
            drawn.append((start, steps))
    return drawn


def build_toy_tokenizer(out_dir: str, cfg: ArithConfig) -> str:
    """Trains a character-level sentencepiece model on the generated corpus; returns its path.

    Digits, operators, `;`, `=`, `?` and `}` are single pieces and `\\boxed{` is one piece. Ids:
    pad 0, eos 1, bos 2, unk 3. No whitespace handling (the toy has no spaces), so
    `decode(encode(x)) == x` for every toy string. Takes well under a second.
    """
    import sentencepiece as spm  # lazy: only the toy needs it

    splits = generate(cfg)
    corpus = [
        ex[key] for split in SPLITS for ex in splits[split] for key in ("problem", "solution")
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([text for text in corpus if text]),
        model_writer=model,
        model_type="char",
        vocab_size=len(_TOKENIZER_CHARS) + 5,  # a soft limit (hard_vocab_limit=False)
        hard_vocab_limit=False,
        character_coverage=1.0,
        required_chars=_TOKENIZER_CHARS,
        split_digits=True,
        user_defined_symbols=[ANSWER_OPEN],
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        byte_fallback=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, TOKENIZER_FILE)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path
