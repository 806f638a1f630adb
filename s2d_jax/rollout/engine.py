"""Continuous batching: a fixed pool of decode slots fed by a queue of requests (`run`).

The static engine (sampler.py) decodes all B = prompts x samples rows as one batch, each with
P + N_bucket cache slots, every step attending over all of them until the longest row ends: its
cost follows the allocation and its memory grows with B. Here:

- Pool. `pool_slots` rows are in flight at once, as many as `kv_budget_bytes` holds (a power
  of two per data shard, at most the call's rows), so the KV memory of a call is bounded by the
  budget however many rows it asks for. The requests (prompt, sample)
  wait in a queue, prompt-major; when a row ends its slot takes the next one.
- Windows. Decode runs in fused windows of `window_steps` steps (slots.window_jit: one
  `lax.while_loop`, ended rows masked, the pool donated). Between windows the host reads what
  was sampled, frees the slots of ended rows and refills them (slots.prefill_jit, admit_jit).
  A window's steps trade host round trips (one per window) against the steps a row ending
  mid-window leaves its slot idle (window_steps / 2 on average, small beside RL lengths of
  hundreds of tokens).
- Read length. A window attends over the first R cache slots, R = `inputs.bucket` of the
  longest row in flight at the window's end, never the pool's unfilled tail.
- One prefill per prompt. The samples of a prompt fork from its KV: the prompt is prefilled
  once into one slot, and `admit` copies its cache rows into the slots of its other samples
  (from the slot that holds it, when its samples span refills).
- Compaction. On CPU a decode step is compute-bound once the pool holds more than a few rows, so
  a finished row sitting in the pool would keep costing compute. Once the queue is empty and at
  the running rows fit in a smaller power of two of slots per shard, they move into such a pool
  (slots.compact, within the KV budget), down to one slot per shard: on CPU a step of
  one row (a matrix-vector product) is several times cheaper than one of 2 to 8 rows
  (`benchmarks/rollout_engine.py --sweep_slots` prints the step time per pool size). Sizing the
  pool for throughput instead and leaving the tail unpacked would pay a full pool's step for
  the last few rows, which on RL lengths (a few long rows) is much of the call's time.
- Shape buckets. Pool sizes are powers of two per shard, refill batches are padded to powers
  of two, read lengths to `bucket`, so nothing recompiles from one window to the next: every
  phase compiles once per (pool size, cache length, read length or refill bucket).

A row's randomness is fold_in(fold_in(key(seed), row), token index) with row = prompt *
num_samples + sample, as in the static engine, so the pool size, the refill order and the other
requests change nothing about what a row samples. Its arithmetic can change in the last bits:
XLA:CPU's matmuls round differently for different row counts (~1e-6 relative), so a draw that
lands that close to the boundary between two tokens' shares of the CDF can go either way. On
peaked distributions that is rare (tests/test_sampler.py: equal tokens); on a random model's
near-uniform 32000-token distribution some rows part after tens of tokens, in either engine.

On a mesh the pool is split over the data axes (its size a multiple of their product); a
refill's prompts are split over them too.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from s2d_jax.model.decode_kernels import KERNEL_SLOT_MULTIPLE
from s2d_jax.rollout import slots
from s2d_jax.rollout.inputs import axes, bucket, cache_bytes, data_shards
from s2d_jax.rollout.phases import Settings

# The default KV budget per data shard (per device holding part of the pool): a fixed fraction
# of an accelerator's memory (`memory_stats()["bytes_limit"]`), leaving the rest to the weights,
# a training stage's state and temporaries; CPU_KV_BUDGET_BYTES on a CPU (no memory stats). Fixed
# per device kind, not taken from the free memory at the call, so a resumed run schedules (and
# rounds) its rollouts as the first one did. A row costs 2 x layers x kv heads x head_dim x
# itemsize bytes per cache slot: a 32 GB budget (0.4 of 80 GB; on a GPU bytes_limit is XLA's
# preallocated share) gives Qwen3-1.7B in bfloat16 (112 KiB) 64 rows of 256 + 4096 slots; the
# CPU budget gives bench_30m in float32 (12 KiB) 512 rows of 64 + 256 slots (`pool_slots`: a
# power of two, at most the call's rows).
DEVICE_KV_FRACTION = 0.4
CPU_KV_BUDGET_BYTES = 2 * 2**30
WINDOW_STEPS = 16
MIN_COMPACT_SLOTS = 1  # per shard


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def rows_bucket(n: int, shards: int) -> int:
    """`n` rows rounded up to `shards` x a power of two (a refill or pool shape)."""
    return shards * _pow2_at_least(-(-n // shards))


def cache_length(prompts, max_new_tokens: int, decode_attention: str = "reference") -> int:
    """Cache slots per pool row: the longest prompt and max_new_tokens, each rounded up to a
    `bucket` (the static engine's row), so a training run's calls share a few lengths; with a
    decode kernel, rounded up to a multiple of the slots its blocks divide."""
    length = bucket(max(len(p) for p in prompts)) + bucket(max_new_tokens)
    if decode_attention == "reference":
        return length
    return -(-length // KERNEL_SLOT_MULTIPLE) * KERNEL_SLOT_MULTIPLE


def default_kv_budget_bytes(mesh=None) -> int:
    """DEVICE_KV_FRACTION of the (first) device's memory limit, or CPU_KV_BUDGET_BYTES (see
    there how they are chosen)."""
    # A device of this process: another process's device has no memory stats to read here.
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()] if mesh else []
    device = local[0] if local else jax.local_devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return int(DEVICE_KV_FRACTION * limit) if limit else CPU_KV_BUDGET_BYTES


def pool_slots(cfg, rows: int, length: int, kv_budget_bytes: int, shards: int = 1) -> int:
    """The pool size: per shard the largest power of two of rows of `length` cache slots that
    fits in kv_budget_bytes, and no more than the call's rows (their share per shard); times
    `shards`."""
    fit = kv_budget_bytes // cache_bytes(cfg, 1, length)
    if fit < 1:
        raise ValueError(
            f"kv_budget_bytes={kv_budget_bytes} holds no row of {length} cache slots "
            f"({cache_bytes(cfg, 1, length)} bytes); raise it or shorten max_new_tokens"
        )
    return min(1 << (fit.bit_length() - 1), -(-rows // shards)) * shards


def _to_host(x) -> np.ndarray:
    if not x.is_fully_addressable:  # spans processes: every process gets all of it
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


class _Scheduler:
    """The host side of a call: the queue, which row each slot holds and how far it got (host
    mirrors of the pool's counters), and the tokens sampled so far [R, N]."""

    def __init__(self, cfg, params, prompts, settings, *, num_samples, max_new_tokens, slots_B,
                 length, shards, mesh, data_axis, window_steps, decode_attention):  # fmt: skip
        self.cfg, self.params, self.prompts, self.settings = cfg, params, prompts, settings
        self.kernel = decode_attention
        self.G, self.N, self.length, self.W = num_samples, max_new_tokens, length, window_steps
        self.width = bucket(max(len(p) for p in prompts))
        self.split = dict(mesh=mesh, data_axis=axes(data_axis))
        self.shards, self.R, self.next_row = shards, len(prompts) * num_samples, 0
        self.held = None  # (prompt, slot): the queue's next prompt, already in that slot's KV
        self.row_B = np.full(slots_B, -1)  # -1: free
        self.prompt_len_B = np.ones(slots_B, np.int64)
        self.index_B = np.zeros(slots_B, np.int64)
        self.tokens_RN = np.full((self.R, self.N), settings.pad_id, np.int32)
        self.logprobs_RN = np.zeros((self.R, self.N), np.float32)
        self.lengths_R = np.zeros(self.R, np.int32)

    @property
    def busy(self) -> bool:
        return self.next_row < self.R or bool((self.row_B >= 0).any())

    def refill(self, pool):
        """Give the free slots the next requests: prefill the prompts not yet in a slot (once
        each), fork every admitted sample from the slot holding its prompt."""
        free = [int(b) for b in np.flatnonzero(self.row_B < 0)]
        take = min(len(free), self.R - self.next_row)
        if take == 0:
            return pool
        source = {}  # prompt -> a slot holding its KV
        if self.held is not None:
            source[self.held[0]] = self.held[1]
            if self.held[1] in free:  # its slot is free: it takes its own prompt's next sample
                free.remove(self.held[1])
                free.insert(0, self.held[1])
        new, admits = [], []  # (prompt, slot) prefilled; (source, slot, row, prompt) admitted
        for slot, row in zip(free, range(self.next_row, self.next_row + take), strict=False):
            prompt = row // self.G
            if prompt not in source:
                source[prompt] = slot
                new.append((prompt, slot))
            admits.append((source[prompt], slot, row, prompt))
        self.next_row += take
        following = self.next_row // self.G
        self.held = (following, source[following]) if following in source else None
        return self._admit(self._prefill(pool, new), admits)

    def _prefill(self, pool, new):
        if not new:
            return pool
        U = rows_bucket(len(new), self.shards)
        prompt_UP = np.full((U, self.width), self.settings.pad_id, np.int32)
        dest_U = np.full(U, len(self.row_B), np.int32)  # past the pool: dropped
        for u, (prompt, slot) in enumerate(new):
            prompt_UP[u, : len(self.prompts[prompt])] = self.prompts[prompt]
            dest_U[u] = slot
        return slots.prefill_jit(pool, self.params, prompt_UP, dest_U, cfg=self.cfg, **self.split)

    def _admit(self, pool, admits):
        A = _pow2_at_least(len(admits))
        source_A, row_A = np.zeros(A, np.int32), np.zeros(A, np.int32)
        dest_A = np.full(A, len(self.row_B), np.int32)  # past the pool: dropped
        prompt_len_A = np.ones(A, np.int32)
        last_token_A = np.full(A, self.settings.pad_id, np.int32)
        for a, (source, slot, row, prompt) in enumerate(admits):
            source_A[a], dest_A[a], row_A[a] = source, slot, row
            prompt_len_A[a], last_token_A[a] = len(self.prompts[prompt]), self.prompts[prompt][-1]
            self.row_B[slot], self.prompt_len_B[slot], self.index_B[slot] = row, prompt_len_A[a], 0
        return slots.admit_jit(pool, source_A, dest_A, row_A, prompt_len_A, last_token_A,
                               prompt_width=self.width, **self.split)  # fmt: skip

    def compact(self, pool):
        """Once the queue is empty, move each shard's running rows into a smaller power of two
        of slots, when they fit (not below MIN_COMPACT_SLOTS per shard)."""
        if self.next_row < self.R:
            return pool
        live_HB = (self.row_B >= 0).reshape(self.shards, -1)
        B = live_HB.shape[1]
        C = max(_pow2_at_least(int(live_HB.sum(axis=1).max())), MIN_COMPACT_SLOTS)
        if C >= B:
            return pool
        keep_HC = np.argsort(~live_HB, axis=1, kind="stable")[:, :C].astype(np.int32)
        keep = (np.arange(self.shards)[:, None] * B + keep_HC).reshape(-1)
        self.row_B, self.prompt_len_B = self.row_B[keep], self.prompt_len_B[keep]
        self.index_B = self.index_B[keep]
        return slots.compact(pool, keep_HC, **self.split)

    def window(self, pool):
        """One decode window over the slots, reading up to the longest row at its end (a kernel:
        each row up to its own length, out of the whole cache, with one compile)."""
        live = self.row_B >= 0
        longest = int((self.prompt_len_B + self.index_B)[live].max()) + self.W - 1
        read_length = min(self.length, bucket(longest))
        traced_under = contextlib.nullcontext()
        if self.kernel != "reference":
            read_length = self.length
            if self.split["mesh"] is not None:  # each device runs the kernel on its own rows
                traced_under = jax.sharding.use_abstract_mesh(self.split["mesh"].abstract_mesh)
        with traced_under:
            pool, tokens_BW, logprobs_BW = slots.window_jit(
                pool.replace(settings=self.settings), self.params, cfg=self.cfg,
                read_length=read_length, steps=self.W, kernel=self.kernel,
            )  # fmt: skip
        index_B, done_B = _to_host(pool.index_B), _to_host(pool.done_B)
        self._collect(_to_host(tokens_BW), _to_host(logprobs_BW), index_B, done_B)
        return pool.replace(settings=None)

    def _collect(self, tokens_BW, logprobs_BW, index_B, done_B):
        for b in np.flatnonzero(self.row_B >= 0):
            row, start, stop = self.row_B[b], self.index_B[b], index_B[b]
            self.tokens_RN[row, start:stop] = tokens_BW[b, : stop - start]
            self.logprobs_RN[row, start:stop] = logprobs_BW[b, : stop - start]
            self.index_B[b] = stop
            if done_B[b]:
                self.lengths_R[row] = stop
                self.row_B[b] = -1

    def outputs(self) -> dict[str, np.ndarray]:
        """The Rollout's fields as host arrays (sampler.Rollout's layout)."""
        prompts = [p for p in self.prompts for _ in range(self.G)]
        prompt_RP = np.full((self.R, self.width), self.settings.pad_id, np.int32)
        prompt_mask_RP = np.zeros((self.R, self.width), bool)
        for r, prompt in enumerate(prompts):
            prompt_RP[r, self.width - len(prompt) :] = prompt
            prompt_mask_RP[r, self.width - len(prompt) :] = True
        last_R = self.tokens_RN[np.arange(self.R), self.lengths_R - 1]
        return dict(
            tokens=np.concatenate([prompt_RP, self.tokens_RN], axis=1),
            prompt_mask=prompt_mask_RP,
            completion_mask=np.arange(self.N)[None, :] < self.lengths_R[:, None],
            logprobs=self.logprobs_RN,
            lengths=self.lengths_R,
            truncated=~np.isin(last_R, self.settings.eos_ids),
        )


def run(cfg, params, prompts, settings: Settings, *, max_new_tokens: int, seed: int,
        num_samples: int, mesh, data_axis, kv_budget_bytes: int,
        window_steps: int = WINDOW_STEPS,
        decode_attention: str = "reference") -> dict[str, np.ndarray]:  # fmt: skip
    """Sample every (prompt, sample) request through the slot pool (arguments as
    `sampler.generate`, inputs already checked, `params` per layer); the Rollout's fields as
    host arrays, rows prompt-major."""
    shards = data_shards(mesh, data_axis)
    length = cache_length(prompts, max_new_tokens, decode_attention)
    slots_B = pool_slots(cfg, len(prompts) * num_samples, length, kv_budget_bytes, shards)
    schedule = _Scheduler(
        cfg, params, prompts, settings, num_samples=num_samples, max_new_tokens=max_new_tokens,
        slots_B=slots_B, length=length, shards=shards, mesh=mesh, data_axis=data_axis,
        window_steps=window_steps, decode_attention=decode_attention,
    )  # fmt: skip
    pool = slots.new_pool_jit(
        np.uint32(seed), max_new_tokens, cfg=cfg, slots=slots_B, length=length,
        **schedule.split,
    )  # fmt: skip
    while schedule.busy:
        pool = schedule.window(schedule.compact(schedule.refill(pool)))
    return schedule.outputs()
