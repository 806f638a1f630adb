"""Prompt-length caps (`max_prompt_tokens`): prompts over a stage's cap are dropped from its pool
before the stage runs, counted in its summary and the report, and never truncated."""

import collections
import math

import numpy as np
import pytest
from conftest import shrink_config

from configs import toy_arith
from s2d_jax.data.task import Task, build_tokenizer
from s2d_jax.workflow import config as config_lib
from s2d_jax.workflow import pipeline, pools, rollout_cache, stages
from s2d_jax.workflow.context import RunContext


def test_keep_short_keeps_order_and_names_the_longest_dropped():
    kept, longest = pools.keep_short("abcde", [3, 9, 4, 7, 2], 4)
    assert kept == ("a", "c", "e") and longest == 9
    assert pools.keep_short("ab", [1, 2], 5) == (("a", "b"), 0)


def _toy_config():
    return shrink_config(toy_arith.get_config("stage3=false"))


def _task(config, workdir) -> Task:
    """The toy task with its tokenizer trained into `workdir` (where a run would put it)."""
    task_cfg = config_lib.parse_task(config)
    return Task(task_cfg, build_tokenizer(task_cfg, workdir, ""))


def _median_cap(task, pool_name):
    """A cap that drops some prompts of the pool and keeps others, and the ids it keeps."""
    pool = task.pool(pool_name)
    lengths = np.array([len(task.prompt_ids(ex)) for ex in pool])
    cap = int(np.median(lengths))
    kept = [ex["id"] for ex, n in zip(pool, lengths, strict=True) if n <= cap]
    assert 0 < len(kept) < len(pool)  # the tests below are not vacuous
    return cap, kept


def test_batches_draw_only_the_kept_prompts_and_epochs_follow_the_kept_pool(tmp_path, monkeypatch):
    config = _toy_config()
    task = _task(config, tmp_path)
    cap, kept = _median_cap(task, "demos")
    config.stages.student_sft.update(steps=0, epochs=2, max_prompt_tokens=cap)
    config.stages.student_sft.stop.accuracy = 0.0  # no held-out demos: the cap alone decides
    stage = config_lib.parse_stage("student_sft", config.stages.student_sft)
    ctx = RunContext(tmp_path, 0, "skip", task, {}, None, None, None)
    seen = []
    demonstration_ids = task.demonstration_ids
    monkeypatch.setattr(
        task, "demonstration_ids", lambda ex: seen.append(ex["id"]) or demonstration_ids(ex)
    )
    make_batch, total = stages.sft_batches(ctx, stage, None, None, tmp_path)
    assert total == 2 * math.ceil(len(kept) / stage.batch_size)
    for step in range(total):
        make_batch(None, step)
    assert set(seen) == set(kept) and len(seen) == total * stage.batch_size
    # Every kept example once an epoch (the last batch runs into a third pass over the pool).
    assert min(collections.Counter(seen).values()) >= 2


def test_a_capped_stage_drops_counts_reports_and_never_truncates(tmp_path):
    """A forward-KL stage over one epoch of a pool whose longer half is over the cap: the teacher
    rollouts hold exactly the kept prompts, each whole, K times; the summary and report count the
    dropped ones; the steps follow the kept pool."""
    config = _toy_config()
    for name in list(config.stages):
        if name != "fkl":
            del config.stages[name]
    config.export_hf = ""
    config.eval.splits = ""
    config.probe.data = ""  # its references are stages deleted above
    task = _task(config, tmp_path)
    cap, kept = _median_cap(task, "rl")
    config.stages.fkl.update(
        init_from="base", teacher="base", steps=0, epochs=1, max_prompt_tokens=cap
    )
    summaries = pipeline.run(config, tmp_path)
    stage, pool = config.stages.fkl, task.pool("rl")
    dropped = len(pool) - len(kept)
    assert summaries["fkl"]["data/pool_size"] == len(pool)
    assert summaries["fkl"]["data/prompts_dropped"] == dropped
    assert summaries["fkl"]["data/max_prompt_tokens"] == cap
    K = stage.samples_per_prompt
    assert summaries["fkl"]["train/steps"] == math.ceil(len(kept) * K / stage.batch_size)
    n_chunks = len(list((tmp_path / "fkl" / "teacher_rollouts").glob("*.npz")))
    cache = rollout_cache.open_cache(tmp_path / "fkl" / "teacher_rollouts", n_chunks)
    prompts, _ = cache.rows(np.arange(cache.num_rows))
    by_id = {ex["id"]: ex for ex in pool}
    whole = [tuple(task.prompt_ids(by_id[i])) for i in kept]
    assert collections.Counter(tuple(p.tolist()) for p in prompts) == collections.Counter(whole * K)
    report = (tmp_path / "report.md").read_text()
    assert f"| fkl | {len(pool)} | {cap} | {dropped} | {len(kept)} |" in report


def test_a_cap_that_drops_every_prompt_fails_before_any_stage_runs(tmp_path):
    config = shrink_config(
        toy_arith.get_config("stage3=false"), keep_stages=("student_sft", "teacher_sft", "raw_fkl")
    )
    config.stages.raw_fkl.max_prompt_tokens = 1
    with pytest.raises(
        ValueError, match=r"stage 'raw_fkl'.*16 prompts of pool 'rl'.*max_prompt_tokens = 1 tokens"
    ):
        pipeline.run(config, tmp_path)
    assert not (tmp_path / "student_sft").exists()  # the first stage never started
