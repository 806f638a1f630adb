"""The one training loop every stage shares: resume, step, metrics, NaN policy, checkpoints.

A stage supplies `make_batch(params, step) -> (batch, metrics)` (sampling, grading, scoring happen
there, as a function of the step) and a jitted `update(state, batch) -> (state, metrics)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import tqdm

from s2d_jax import checkpoints, metrics


def run_loop(
    *,
    stage_dir: Path,
    state,
    total_steps: int,
    save_every: int,
    make_batch: Callable,
    update: Callable,
    evaluate: Callable | None = None,
    eval_every: int = 0,
    nan_policy: str = "skip",
    desc: str = "",
):
    """Run `update` from the last checkpoint (if any) to `total_steps`; returns (state, last metrics).

    Metrics of the update that makes `state.step == s` are logged with step s. A checkpoint is
    written every `save_every` steps and at the end; after a kill, the same call resumes from the
    last one and reproduces the uninterrupted run, since batches depend only on (seed, step).
    `nan_policy`: "skip" (the train step already left params untouched; count and go on) or "raise".
    """
    manager = checkpoints.state_manager(stage_dir)
    restored = checkpoints.restore_latest(manager, state)
    if restored is not None:
        state, _ = restored
    start = int(jax.device_get(state.step))
    writer = metrics.MetricWriter(stage_dir, resume_step=start)
    last: dict = {}
    bar = tqdm.tqdm(
        range(start, total_steps),
        initial=start,
        total=total_steps,
        desc=desc,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.perf_counter()
        batch, batch_metrics = make_batch(state.params, step)
        state, step_metrics = update(state, batch)
        values = {**batch_metrics, **jax.device_get(step_metrics)}
        values["time/step_s"] = time.perf_counter() - t0
        if "rollout/tokens" in values:
            values["rollout/tokens_per_s"] = values["rollout/tokens"] / values["time/step_s"]
        if evaluate is not None and eval_every and (step + 1) % eval_every == 0:
            values.update(evaluate(state.params, step + 1))
        last = writer.write(step + 1, values)
        if nan_policy == "raise":  # "skip": the step already kept the old params and counted it
            metrics.check_finite(step + 1, last)
        if (step + 1) % save_every == 0:
            checkpoints.save_state(manager, step + 1, state, {"step": step + 1})
        bar.set_postfix(_postfix(last), refresh=False)
    if manager.latest_step() != total_steps:
        checkpoints.save_state(manager, total_steps, state, {"step": total_steps})
    manager.close()
    writer.close()
    return state, last


def _postfix(values: dict) -> dict:
    keys = ("train/loss", "grpo/reward", "rollout/tokens_per_s", "kl/forward", "kl/reverse")
    return {k.split("/")[-1]: f"{values[k]:.3g}" for k in keys if k in values}


def stage_summary(stage_dir: Path) -> dict:
    """Mean of the last 10% of logged steps for each metric (the stage's one-line summary)."""
    rows = metrics.read_metrics(stage_dir)
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 10) :]
    keys = {k for row in tail for k in row if k != "step"}
    summary = {k: float(np.nanmean([row.get(k, np.nan) for row in tail])) for k in sorted(keys)}
    summary["train/skipped_total"] = float(sum(row.get("train/skipped", 0.0) for row in rows))
    summary["train/steps"] = float(rows[-1]["step"])
    return summary
