"""The chunked teacher-rollout cache of Stage 2a: format, resume after a kill, reads per batch."""

import io

import numpy as np
import pytest
from conftest import shrink_config
from test_c1 import ParityGrader

from configs import toy_arith
from s2d_jax.grading import rewards
from s2d_jax.workflow import batches, metrics, pipeline, rollout_cache

NUM_CHUNKS = 4


def fake_chunk(index: int):
    """Rows of a chunk as a function of its index alone (as the stage's seeds make them)."""
    rng = np.random.default_rng(index)
    rows = 3 if index == NUM_CHUNKS - 1 else 5  # a short last chunk, as a pool's tail gives
    prompts = [rng.integers(0, 50_000, rng.integers(1, 9)) for _ in range(rows)]
    completions = [rng.integers(0, 50_000, rng.integers(0, 12)) for _ in range(rows)]
    return prompts, completions, rng.integers(0, 2, rows).astype(np.float32)


def all_rows(cache):
    prompts, completions = cache.rows(np.arange(cache.num_rows))
    grades = np.concatenate(cache.correct).tolist()
    return [p.tolist() for p in prompts], [c.tolist() for c in completions], grades


def test_rows_read_back_exactly_in_any_order(tmp_path):
    cache = rollout_cache.fill(tmp_path, NUM_CHUNKS, fake_chunk)
    expected = [fake_chunk(c) for c in range(NUM_CHUNKS)]
    prompts = [p.tolist() for ps, _, _ in expected for p in ps]
    completions = [c.tolist() for _, cs, _ in expected for c in cs]
    assert cache.num_rows == len(prompts) == 18
    idx_B = np.array([17, 0, 5, 5, 12, 4])  # across chunks, repeated, unordered
    got_prompts, got_completions = cache.rows(idx_B)
    assert [p.tolist() for p in got_prompts] == [prompts[i] for i in idx_B]
    assert [c.tolist() for c in got_completions] == [completions[i] for i in idx_B]
    assert all(p.dtype == np.int32 for p in got_prompts)
    with np.load(rollout_cache.chunk_path(tmp_path, 0)) as chunk:  # the documented layout
        assert chunk["tokens"].dtype == np.int32 and chunk["offsets"].shape == (2 * 5 + 1,)
        assert chunk["correct"].dtype == np.int8
        np.testing.assert_array_equal(chunk["correct"], expected[0][2])
    with pytest.raises(IndexError):
        cache.rows([18])


def test_the_cache_accuracy_is_its_rows_grades_read_without_tokens(tmp_path, monkeypatch):
    cache = rollout_cache.fill(tmp_path, NUM_CHUNKS, fake_chunk)
    grades = [g for c in range(NUM_CHUNKS) for g in fake_chunk(c)[2].tolist()]
    assert 0 < sum(grades) < len(grades) == cache.num_rows  # not vacuous
    assert all_rows(rollout_cache.open_cache(tmp_path, NUM_CHUNKS))[2] == grades

    def no_reads(*args, **kwargs):
        raise AssertionError("a file was read")

    monkeypatch.setattr(rollout_cache, "open", no_reads, raising=False)
    monkeypatch.setattr(np, "load", no_reads)
    assert cache.correct_mean() == sum(grades) / len(grades)  # from the index alone


def test_a_chunk_without_grades_is_named_and_bad_grades_are_refused(tmp_path):
    prompts, completions, grades = fake_chunk(0)
    with pytest.raises(ValueError, match="one grade"):
        rollout_cache.write_chunk(tmp_path / "x.npz", prompts, completions, grades[:-1])
    with pytest.raises(ValueError, match="one grade"):
        rollout_cache.write_chunk(tmp_path / "x.npz", prompts, completions, grades + 0.5)
    tokens_N, offsets_2R1 = rollout_cache.pack_rows(prompts, completions)
    old = rollout_cache.chunk_path(tmp_path, 0)
    np.savez(old, tokens=tokens_N, offsets=offsets_2R1)  # a chunk as written before grades
    with pytest.raises(ValueError, match=r"chunk_00000\.npz: a chunk without grades.*remove"):
        rollout_cache.open_cache(tmp_path, 1)


def test_resume_after_a_kill_mid_generation_matches_an_uninterrupted_run(tmp_path):
    straight = all_rows(rollout_cache.fill(tmp_path / "straight", NUM_CHUNKS, fake_chunk))

    def killed_at_chunk_2(index):
        if index == 2:
            raise RuntimeError("killed")
        return fake_chunk(index)

    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        rollout_cache.fill(killed, NUM_CHUNKS, killed_at_chunk_2)
    assert sorted(p.name for p in killed.iterdir()) == ["chunk_00000.npz", "chunk_00001.npz"]
    # A kill during the write of chunk 2 leaves its half-written temporary file.
    (killed / "chunk_00002.npz.tmp").write_bytes(b"PK\x03\x04 half a chunk")
    made = []
    resumed = rollout_cache.fill(killed, NUM_CHUNKS, lambda i: made.append(i) or fake_chunk(i))
    assert made == [2, 3]  # only what the kill left unwritten
    assert all_rows(resumed) == straight
    assert not list(killed.glob("*.tmp"))


def test_reading_a_batch_touches_only_its_chunks_and_rows(tmp_path, monkeypatch):
    cache = rollout_cache.fill(tmp_path, NUM_CHUNKS, fake_chunk)
    for c in (0, 2, 3):  # a batch inside chunk 1 needs no other chunk
        rollout_cache.chunk_path(tmp_path, c).unlink()
    read = []

    class CountingFile(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append((self.name, len(data)))
            return data

    monkeypatch.setattr(rollout_cache, "open", CountingFile, raising=False)
    idx_B = np.array([6, 8])  # rows 1 and 3 of chunk 1
    prompts, completions = cache.rows(idx_B)
    expected_prompts, expected_completions, _ = fake_chunk(1)
    assert [p.tolist() for p in prompts] == [expected_prompts[r].tolist() for r in (1, 3)]
    assert [c.tolist() for c in completions] == [expected_completions[r].tolist() for r in (1, 3)]
    row_bytes = 4 * sum(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    assert {str(name) for name, _ in read} == {str(rollout_cache.chunk_path(tmp_path, 1))}
    assert sum(n for _, n in read) == row_bytes  # those rows' tokens and nothing else


def _fkl_only(steps=2):
    """A forward-KL stage from random init on a random teacher: no earlier stage to train."""
    config = shrink_config(toy_arith.get_config("stage3=false"), steps=steps, keep_stages=("fkl",))
    config.stages.fkl.update(init_from="base", teacher="base")
    config.eval.splits = ""
    config.probe.data = ""  # every sampler call is one of the stage's chunks
    return config


def test_a_stage_killed_while_making_rollouts_resumes_with_the_same_rollouts(tmp_path, monkeypatch):
    """The stage's sampler calls: 16 prompts x 2 rollouts in chunks of 4 prompts. A kill at the
    third call, then a rerun: only the missing chunks are sampled, and the cache (its grades
    too) and the stage's metrics equal an uninterrupted run's."""
    monkeypatch.setattr(rollout_cache, "CHUNK_ROWS", 8)
    monkeypatch.setattr(rewards, "Grader", ParityGrader)  # mixed grades
    pipeline.run(_fkl_only(), tmp_path / "straight")
    calls = []
    sample = batches.sample

    def killed_at_third_call(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return sample(*args, **kwargs)

    monkeypatch.setattr(batches, "sample", killed_at_third_call)
    with pytest.raises(RuntimeError, match="killed"):
        pipeline.run(_fkl_only(), tmp_path / "killed")
    cache_dir = tmp_path / "killed" / "fkl" / "teacher_rollouts"
    assert len(list(cache_dir.glob("*.npz"))) == 2
    (cache_dir / "chunk_00002.npz.tmp").write_bytes(b"half a chunk")
    calls.clear()
    monkeypatch.setattr(batches, "sample", lambda *a, **k: calls.append(0) or sample(*a, **k))
    pipeline.run(_fkl_only(), tmp_path / "killed")
    assert len(calls) == 2  # chunks 2 and 3
    caches = [
        rollout_cache.open_cache(tmp_path / run / "fkl" / "teacher_rollouts", 4)
        for run in ("straight", "killed")
    ]
    assert all_rows(caches[0]) == all_rows(caches[1])
    assert caches[0].num_rows == 32 and 0 < caches[0].correct_mean() < 1

    def rows(run):
        return [
            {k: v for k, v in r.items() if not k.startswith("time/")}
            for r in metrics.read_metrics(tmp_path / run / "fkl")
        ]

    assert rows("straight") == rows("killed")


TWO_PROCESSES = """
import json, sys
import jax
jax.distributed.initialize({address!r}, num_processes=2, process_id={pid})
sys.path.insert(0, {tests!r})
from test_rollout_cache import NUM_CHUNKS, all_rows, fake_chunk
from s2d_jax.workflow import rollout_cache

made = []
cache = rollout_cache.fill({cache_dir!r}, NUM_CHUNKS, lambda i: made.append(i) or fake_chunk(i))
with open({out!r} + str(jax.process_index()), "w") as f:
    json.dump(dict(made=made, rows=all_rows(cache)), f)
jax.distributed.shutdown()
"""


def test_two_processes_make_the_same_missing_chunks_and_read_the_same_rows(tmp_path):
    """Process 0's view of the disk decides what both sample; only it writes; both then read the
    same rows, equal to a one-process run's."""
    import json
    import sys

    from test_multihost import REPO, _run_two_processes

    straight = all_rows(rollout_cache.fill(tmp_path / "straight", NUM_CHUNKS, fake_chunk))
    shared = tmp_path / "shared"
    shared.mkdir()
    rollout_cache.write_chunk(rollout_cache.chunk_path(shared, 0), *fake_chunk(0))
    (shared / "chunk_00001.npz.tmp").write_bytes(b"half a chunk")

    def command(address, pid):
        code = TWO_PROCESSES.format(
            address=address,
            pid=pid,
            tests=str(REPO / "tests"),
            cache_dir=str(shared),
            out=str(tmp_path / "result_"),
        )
        return [sys.executable, "-c", code]

    _run_two_processes(tmp_path, command, timeout=240)
    for pid in range(2):
        result = json.loads((tmp_path / f"result_{pid}").read_text())
        assert result["made"] == [1, 2, 3], pid
        assert result["rows"] == [list(x) for x in straight], pid
