"""Problem -> prompt text, the same way for training, distillation and evaluation.

Three styles (`PromptConfig.style`):
  "chat"   problem + INSTRUCTION as one user turn in the tokenizer's chat template, ending with
           the assistant header (instruct models; Qwen3 with thinking off unless `enable_thinking`);
  "plain"  problem + INSTRUCTION as plain text (base models without a chat template);
  "raw"    the problem text alone (the toy `arith`, whose demonstrations teach the format).
"""

from __future__ import annotations

import dataclasses

from s2d_jax.data.tokenizers import Tokenizer

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
STYLES = ("chat", "plain", "raw")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How problems become prompts; see the module docstring for the styles."""

    style: str = "chat"
    enable_thinking: bool = False

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"PromptConfig.style={self.style!r}: expected one of {STYLES}")


def with_instruction(problem: str) -> str:
    """`problem` followed by the answer-format instruction."""
    return f"{problem.strip()} {INSTRUCTION}"


def format_prompt(problem: str, tokenizer: Tokenizer, cfg: PromptConfig) -> str:
    """The prompt text for one problem."""
    if cfg.style == "raw":
        return problem
    if cfg.style == "plain":
        return with_instruction(problem)
    return tokenizer.apply_chat(with_instruction(problem), enable_thinking=cfg.enable_thinking)


def prompt_ids(problem: str, tokenizer: Tokenizer, cfg: PromptConfig) -> list[int]:
    """The prompt's token ids (BOS first when the tokenizer has one)."""
    return tokenizer.encode_prompt(format_prompt(problem, tokenizer, cfg))
