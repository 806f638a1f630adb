"""Random-weight Hugging Face checkpoints: the laptop twin of a launch config loads real files.

A model role with `random_weights` names a preset and no path. Before the first stage the pipeline
calls `materialize`, which writes once per run directory

    random_models/tokenizer/   a byte-level BPE chat tokenizer (Qwen3's specials and template)
    random_models/<role>/      config.json + model.safetensors of the preset's random init,
                               with the tokenizer's files (teacher and student share them)

and the role then loads from `random_models/<role>` like any checkpoint: the same HF reader,
tokenizer, chat template and preset check as a pod run with real weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from s2d_jax.data import builders, prompts, tokenizers
from s2d_jax.model import decoder, hf_io
from s2d_jax.workflow.models import ModelSpec

# The tokenizer learns its merges from the shipped MATH train problems and the answer instruction
# (weighted like the problems together: every prompt ends with it), so a math prompt takes tens of
# tokens, not hundreds of bytes, and the twin's sequences stay short.
TOKENIZER_PROBLEMS = 2000
TOKENIZER_VOCAB = 1024


def materialize(models: dict[str, ModelSpec], workdir: Path, seed: int) -> dict[str, ModelSpec]:
    """`models` with every `random_weights` role pointed at its checkpoint under `workdir`,
    written by process 0 when absent (a rerun reuses it: it depends only on preset and seed)."""
    roles = sorted(role for role, spec in models.items() if spec.random_weights)
    if not roles:
        return models
    root = Path(workdir) / "random_models"
    if jax.process_index() == 0:
        tokenizer_dir = _write_once(root / "tokenizer", write_tokenizer)
        for role in roles:
            cfg = decoder.ModelConfig.preset(models[role].preset)
            key = init_key(seed, role)
            write = functools.partial(
                _write_checkpoint, cfg=cfg, key=key, tokenizer_dir=tokenizer_dir
            )
            _write_once(root / role, write)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("s2d_jax random models")
    return {
        role: dataclasses.replace(spec, hf_path=str(root / role)) if role in roles else spec
        for role, spec in models.items()
    }


def init_key(seed: int, role: str) -> jax.Array:
    """The key of a role's random init: a fresh-init toy and a random checkpoint draw alike."""
    return jax.random.fold_in(jax.random.key(seed), sum(map(ord, role)))


def _write_once(out: Path, write) -> Path:
    """`write(tmp)` then rename to `out`: a kill never leaves a half-written directory behind."""
    if not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        tmp.rename(out)
    return out


def write_tokenizer(out: Path) -> None:
    """The twin's tokenizer into the directory `out` (deterministic)."""
    lines = (Path(builders.FILES_DIR) / "math_train.jsonl").read_text(encoding="utf-8").splitlines()
    problems = [json.loads(line)["problem"] for line in lines[:TOKENIZER_PROBLEMS]]
    texts = [prompts.INSTRUCTION] * (TOKENIZER_PROBLEMS // 10) + problems
    tokenizers.train_chat_tokenizer(str(out), texts, vocab_size=TOKENIZER_VOCAB)


def _write_checkpoint(out: Path, cfg: decoder.ModelConfig, key, tokenizer_dir: Path) -> None:
    tok = tokenizers.load_tokenizer(str(tokenizer_dir))
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"tokenizer vocabulary {tok.vocab_size} exceeds the preset's vocab_size {cfg.vocab_size}"
        )
    hf_io.save_hf(
        out,
        cfg,
        jax.jit(decoder.init_params, static_argnums=0)(cfg, key),  # one compile, not one a shape
        eos_token_id=list(tok.eos_ids),
        pad_token_id=tok.pad_id,
    )
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
