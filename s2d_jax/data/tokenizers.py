"""One small tokenizer interface over Hugging Face tokenizers and sentencepiece models.

`load_tokenizer(path)` takes a Hugging Face tokenizer directory (tokenizer.json /
tokenizer_config.json, as saved next to a checkpoint) or a sentencepiece `.model` file (the toy's)
and returns a frozen `Tokenizer`. Nothing is downloaded and no remote code runs
(`trust_remote_code` stays off).

Conventions the pipeline relies on:
- `encode(text)` adds no special tokens; `encode_prompt(text)` prepends BOS when the tokenizer has
  one and the text does not already start with it (chat templates such as Llama 3's write it).
- `decode(ids)` drops special tokens (pad, EOS, BOS), so a padded completion decodes cleanly.
- `eos_ids` holds every id that ends a response (Qwen3: `<|im_end|>` and `<|endoftext|>`);
  `eos_id` (the first) is the one appended to demonstrations.
- `vocab_size` counts the tokenizer's ids (added tokens included); a model's embedding may be
  larger (Qwen3 pads to 151936).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

# Special tokens that end a turn or a document in common chat families; any present in a
# tokenizer's vocabulary stops generation, whatever its config calls "eos".
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>")
_HF_FILES = ("tokenizer.json", "tokenizer_config.json")
# Qwen3's chat layout (im_start / im_end turns, an empty think block when thinking is off), for
# tokenizers trained here: prompts then take the same path as a real Qwen3 checkpoint's.
QWEN3_STYLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Token ids <-> text, with the special ids a sampler and a trainer need."""

    kind: str  # "hf" or "sentencepiece"
    path: str
    vocab_size: int
    eos_ids: tuple[int, ...]
    pad_id: int
    bos_id: int | None
    has_chat_template: bool
    backend: Any = dataclasses.field(repr=False, compare=False)

    @property
    def eos_id(self) -> int:
        """The primary end id (appended after a demonstration's completion)."""
        return self.eos_ids[0]

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without special tokens."""
        if self.kind == "sentencepiece":
            return list(self.backend.encode(text))
        return list(self.backend.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt text -> ids, BOS first when the tokenizer has one (once, never twice)."""
        ids = self.encode(text)
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, special tokens dropped."""
        ids = [int(i) for i in ids]
        if self.kind == "sentencepiece":
            return self.backend.decode(ids)
        return self.backend.decode(ids, skip_special_tokens=True)

    def apply_chat(self, user_text: str, *, enable_thinking: bool = False) -> str:
        """`user_text` as one user turn in the chat template, ending with the assistant's header.

        `enable_thinking` is passed to the template (Qwen3 reads it; other templates ignore it).
        """
        if not self.has_chat_template:
            raise ValueError(f"tokenizer {self.path} has no chat template; use plain prompts")
        return self.backend.apply_chat_template(
            [{"role": "user", "content": user_text}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )


def load_tokenizer(path: str) -> Tokenizer:
    """A Hugging Face tokenizer directory or a sentencepiece `.model` file -> `Tokenizer`.

    A directory without HF tokenizer files but with exactly one `.model` file loads that file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, name)) for name in _HF_FILES):
            return _load_hf(path)
        models = sorted(name for name in os.listdir(path) if name.endswith(".model"))
        if len(models) == 1:
            return _load_sentencepiece(os.path.join(path, models[0]))
    elif os.path.isfile(path) and path.endswith(".model"):
        return _load_sentencepiece(path)
    raise FileNotFoundError(
        f"{path}: not a tokenizer; expected a Hugging Face tokenizer directory (with "
        f"{' or '.join(_HF_FILES)}) or a sentencepiece .model file"
    )


def _load_sentencepiece(path: str) -> Tokenizer:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    if sp.eos_id() < 0:
        raise ValueError(f"sentencepiece model {path} has no EOS id (train it with eos_id set)")
    return Tokenizer(
        kind="sentencepiece",
        path=path,
        vocab_size=sp.get_piece_size(),
        eos_ids=(sp.eos_id(),),
        pad_id=sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id(),
        bos_id=sp.bos_id() if sp.bos_id() >= 0 else None,
        has_chat_template=False,
        backend=sp,
    )


def _load_hf(path: str) -> Tokenizer:
    import transformers  # lazy: 3 s to import, and the toy never needs it

    tok = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    eos_ids = _hf_eos_ids(tok, path)
    return Tokenizer(
        kind="hf",
        path=path,
        vocab_size=len(tok),
        eos_ids=eos_ids,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0],
        bos_id=tok.bos_token_id,
        has_chat_template=bool(tok.chat_template),
        backend=tok,
    )


def _hf_eos_ids(tok, path: str) -> tuple[int, ...]:
    """The tokenizer's EOS, then generation_config.json's eos ids, then known end tokens."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    gen_config = os.path.join(path, "generation_config.json")
    if os.path.isfile(gen_config):
        with open(gen_config, encoding="utf-8") as f:
            value = json.load(f).get("eos_token_id")  # an optional key of a foreign file
        ids += value if isinstance(value, list) else [value] if isinstance(value, int) else []
    for token in _END_TOKENS:
        token_id = tok.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tok.unk_token_id:
            ids.append(token_id)
    if not ids:
        raise ValueError(f"tokenizer {path} has no EOS token and no known end token")
    return tuple(dict.fromkeys(int(i) for i in ids))


def train_chat_tokenizer(out_dir: str, texts: Sequence[str], vocab_size: int, *, bos=None):
    """Train a byte-level BPE tokenizer on `texts` and save it as a Hugging Face tokenizer
    directory with Qwen3's special tokens and chat template; returns the `tokenizers.Tokenizer`.

    Byte-level: any text encodes, whatever `texts` held. Deterministic for the same inputs.
    """
    import tokenizers as hf_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + ([bos] if bos else [])
    tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=bos
    )
    fast.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return tok
