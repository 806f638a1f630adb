"""Stage 2a's teacher rollouts on disk: written chunk by chunk as the sampler makes them, read back
a batch's rows at a time.

    cache = rollout_cache.fill(cache_dir, num_chunks, make_chunk)  # makes the chunks not on disk
    prompts, completions = cache.rows(idx_B)                       # token arrays of those rows
    cache.correct_mean()                                           # the graded share right

`cache_dir/chunk_00000.npz`, ...: one file per sampler call, an uncompressed npz of
    tokens_N [N] int32      row after row, each row's prompt tokens then its completion tokens
    offsets_2R1 [2R+1] int64  row r's prompt is tokens_N[offsets_2R1[2r]:offsets_2R1[2r+1]], its
                            completion tokens_N[offsets_2R1[2r+1]:offsets_2R1[2r+2]]
    correct [R] int8        row r's completion graded right against its prompt's answer (1) or
                            not (0; a truncated row is 0), graded as the chunk is made
A chunk goes to a temporary file that is then renamed, so a chunk file is always whole and a kill
loses at most the chunk being made. Each chunk is a function of its index alone, so a cache
completed after a kill equals one made in one go. A read seeks to each row's tokens inside the
stored member: a batch reads its rows' bytes and nothing else, and no process ever holds the whole
cache (many GB at the paper's scale) in memory. The index holds each chunk's offsets and grades
(a few bytes a row), so the cache's accuracy is known without reading a token. A chunk without
grades (written before chunks carried them) is not regraded: opening the cache fails, naming it,
and says to remove the cache so that the stage makes and grades it again.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

CHUNK_ROWS = 256  # rollouts per sampler call: CHUNK_ROWS // K prompts of K rollouts each
_TMP = ".tmp"
_TOKEN_DTYPE = np.dtype("<i4")
_ZIP_LOCAL_HEADER = 30  # bytes before a member's name; name and extra-field lengths at 26..30


def chunk_path(cache_dir: Path, index: int) -> Path:
    return Path(cache_dir) / f"chunk_{index:05d}.npz"


def pack_rows(prompts: Sequence, completions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids -> (tokens_N int32, offsets_2R1 int64), the chunk layout."""
    pairs = zip(prompts, completions, strict=True)
    pieces = [np.asarray(piece, _TOKEN_DTYPE) for pair in pairs for piece in pair]
    offsets_2R1 = np.zeros(len(pieces) + 1, np.int64)
    offsets_2R1[1:] = np.cumsum([len(piece) for piece in pieces], dtype=np.int64)
    tokens_N = np.concatenate(pieces) if pieces else np.zeros(0, _TOKEN_DTYPE)
    return tokens_N, offsets_2R1


def write_chunk(path: Path, prompts: Sequence, completions: Sequence, correct_R) -> None:
    """One chunk, whole or not at all: written to `<path>.tmp`, synced, renamed. `correct_R` [R]:
    each row's grade, 0 or 1."""
    tokens_N, offsets_2R1 = pack_rows(prompts, completions)
    correct_R = np.asarray(correct_R)
    if correct_R.shape != (len(prompts),) or not np.isin(correct_R, (0, 1)).all():
        raise ValueError(
            f"{path}: correct_R must hold one grade (0 or 1) per row: got shape "
            f"{correct_R.shape} for {len(prompts)} rows"
        )
    tmp = path.with_name(path.name + _TMP)
    # A file object (np.savez would add ".npz" to a name); savez stores, not deflates, its
    # members, which is what lets a read seek to a row.
    with open(tmp, "wb") as f:
        np.savez(f, tokens=tokens_N, offsets=offsets_2R1, correct=correct_R.astype(np.int8))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _tokens_start(path: Path) -> int:
    """The byte offset in `path` of the `tokens` member's array data: its zip local header, its
    name and extra field, then the .npy header (np.savez stores members uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("tokens.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: the tokens member is compressed; chunks are written stored")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", f.read(_ZIP_LOCAL_HEADER)[26:30])
        f.seek(name_len + extra_len, os.SEEK_CUR)
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        _, fortran_order, dtype = read_header(f)
        if dtype != _TOKEN_DTYPE or fortran_order:
            raise ValueError(
                f"{path}: tokens are {dtype} (fortran order {fortran_order}), not int32"
            )
        return f.tell()


@dataclasses.dataclass(frozen=True)
class RolloutCache:
    """The index of a complete cache: where each chunk's rows lie. Rows are numbered across chunks
    in the order they were generated (prompt-major, as the sampler returns them)."""

    paths: tuple[Path, ...]  # [C]
    tokens_starts: tuple[int, ...]  # [C] byte offset of each chunk's token data in its file
    offsets: tuple[np.ndarray, ...]  # [C] of offsets_2R1 [2R+1]
    correct: tuple[np.ndarray, ...]  # [C] of correct_R [R] int8
    first_rows_C1: np.ndarray  # [C+1] the first row of each chunk, then the row count

    @property
    def num_rows(self) -> int:
        return int(self.first_rows_C1[-1])

    def completion_tokens(self) -> int:
        """Tokens generated by the teacher: every row's completion (prompts not counted)."""
        return int(sum((o[2::2] - o[1:-1:2]).sum() for o in self.offsets))

    def correct_mean(self) -> float:
        """The share of rows graded right (truncated rows count as wrong), from the grades alone."""
        return float(sum(int(c.sum()) for c in self.correct) / max(self.num_rows, 1))

    def rows(self, idx_B) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The prompt and completion tokens of rows `idx_B`, reading only the chunks they lie in
        and, in each, only their bytes."""
        idx_B = np.asarray(idx_B, np.int64)
        if idx_B.size and not 0 <= idx_B.min() <= idx_B.max() < self.num_rows:
            raise IndexError(f"rows {idx_B.tolist()} outside the cache's {self.num_rows}")
        chunk_B = np.searchsorted(self.first_rows_C1, idx_B, side="right") - 1
        prompts, completions = [None] * len(idx_B), [None] * len(idx_B)
        for c in np.unique(chunk_B):
            offsets_2R1 = self.offsets[c]
            with open(self.paths[c], "rb") as f:
                for b in np.flatnonzero(chunk_B == c):
                    r = idx_B[b] - self.first_rows_C1[c]
                    start, middle, end = offsets_2R1[2 * r : 2 * r + 3]
                    f.seek(self.tokens_starts[c] + start * _TOKEN_DTYPE.itemsize)
                    row = np.frombuffer(f.read((end - start) * _TOKEN_DTYPE.itemsize), _TOKEN_DTYPE)
                    prompts[b], completions[b] = row[: middle - start], row[middle - start :]
        return prompts, completions


def open_cache(cache_dir: Path, num_chunks: int) -> RolloutCache:
    """The index of chunks 0..num_chunks-1 (each chunk's offsets and grades, a few bytes a row)."""
    paths = tuple(chunk_path(cache_dir, c) for c in range(num_chunks))
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{cache_dir}: teacher rollout chunks missing: {missing}")
    offsets, correct = [], []
    for path in paths:
        with np.load(path) as chunk:  # reads the offsets and correct members only
            if "correct" not in chunk.files:
                raise ValueError(
                    f"{path}: a chunk without grades (no `correct` member), written before chunks "
                    f"carried them; remove {cache_dir} and rerun: the stage makes and grades its "
                    "rollouts again (remove its checkpoints too, to train on them from step 0)"
                )
            offsets.append(chunk["offsets"])
            correct.append(chunk["correct"])
        rows = (len(offsets[-1]) - 1) // 2
        if len(correct[-1]) != rows:
            raise ValueError(f"{path}: {len(correct[-1])} grades for {rows} rows")
    first_rows_C1 = np.zeros(num_chunks + 1, np.int64)
    first_rows_C1[1:] = np.cumsum([(len(o) - 1) // 2 for o in offsets], dtype=np.int64)
    return RolloutCache(
        paths, tuple(map(_tokens_start, paths)), tuple(offsets), tuple(correct), first_rows_C1
    )


def fill(
    cache_dir: Path, num_chunks: int, make_chunk: Callable[[int], tuple[Sequence, Sequence, Any]]
) -> RolloutCache:
    """Make the chunks not on disk yet, in order, each written as soon as it is made, and open the
    cache. `make_chunk(index) -> (prompts, completions, correct_R)` runs on every process (the
    sampler and the grading are programs over all of them); process 0 alone writes, and its view
    of what is on disk decides which chunks every process makes."""
    cache_dir = Path(cache_dir)
    writer = jax.process_index() == 0
    if writer:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stray in cache_dir.glob(f"*{_TMP}"):  # the chunk a kill interrupted: remade below
            stray.unlink()
    missing_C = np.array([not chunk_path(cache_dir, c).exists() for c in range(num_chunks)], int)
    if jax.process_count() > 1:
        missing_C = np.asarray(multihost_utils.broadcast_one_to_all(missing_C))
    for c in np.flatnonzero(missing_C):
        rows = make_chunk(int(c))
        if writer:
            write_chunk(chunk_path(cache_dir, int(c)), *rows)
    if jax.process_count() > 1:  # every chunk is on disk before any process reads one
        multihost_utils.sync_global_devices("s2d_jax teacher rollouts")
    return open_cache(cache_dir, num_chunks)
