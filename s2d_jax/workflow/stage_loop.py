"""The one training loop every stage shares: resume, step, metrics, NaN policy, checkpoints.

A stage supplies `make_batch(params, step) -> (batch, metrics)` (sampling, grading, scoring happen
there, as a function of the step) and a jitted `update(state, batch) -> (state, metrics)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import tqdm

from s2d_jax.workflow import checkpoints, metrics


def run_loop(
    *,
    stage_dir: Path,
    state,
    total_steps: int,
    save_every: int,
    make_batch: Callable,
    update: Callable,
    periodic: Callable | None = None,
    nan_policy: str = "skip",
    max_skipped_frac: float,
    max_consecutive_skips: int,
    desc: str = "",
):
    """Run `update` from the last checkpoint (if any) to `total_steps`; returns (state, last metrics).

    Metrics of the update that makes `state.step == s` are logged with step s. A checkpoint every
    `save_every` steps and at the end; after a kill, the same call resumes from the last one and
    reproduces the uninterrupted run (batches depend only on (seed, step)). `nan_policy`: "skip"
    (the step left params untouched; counted, within a `SkipBudget`) or "raise". A checkpoint's
    meta holds the metric rows since the last one and the skips, so a resume repairs
    metrics.jsonl. `periodic(params, step) -> (metrics, stop)` runs after every update
    (evaluations, an early-stop check): `stop` ends the loop, that step checkpointed with
    `stopped_at` in its meta; a resume from it trains no further.
    """
    manager = checkpoints.state_manager(stage_dir)
    with contextlib.closing(manager):  # closed on failure too: no orbax thread outlives the error
        restored = checkpoints.restore_latest(manager, state)
        state, meta = restored if restored is not None else (state, {})
        start = int(jax.device_get(state.step))
        if "stopped_at" in meta:
            return state, {}
        budget = SkipBudget(desc or str(stage_dir), math.floor(max_skipped_frac * total_steps),
                            max_consecutive_skips, [tuple(s) for s in meta.get("skipped", [])])  # fmt: skip
        writer = metrics.MetricWriter(stage_dir, resume_step=start, saved_rows=meta.get("rows", []))
        with contextlib.closing(writer):
            last: dict = {}
            unsaved: list[dict] = []  # metric rows since the last checkpoint, saved in its meta
            bar = _progress(start, total_steps, desc)
            end = total_steps
            for step in bar:
                state, values = _step(state, step, make_batch, update)
                checked, stop = periodic(state.params, step + 1) if periodic else ({}, False)
                last = writer.write(step + 1, values | checked)
                unsaved.append({"step": step + 1, **last})
                if nan_policy == "raise":  # "skip": the step kept the old params and counted it
                    metrics.check_finite(step + 1, last, WATCHED)
                budget.record(step + 1, last)
                if stop:
                    end = step + 1
                    meta = budget.meta(end, unsaved) | {"stopped_at": end}
                    checkpoints.save_state(manager, end, state, meta)
                    break
                if (step + 1) % save_every == 0:
                    checkpoints.save_state(manager, step + 1, state, budget.meta(step + 1, unsaved))
                    unsaved = []
                bar.set_postfix(_postfix(last), refresh=False)
            if manager.latest_step() != end:
                checkpoints.save_state(manager, end, state, budget.meta(end, unsaved))
    return state, last


def _step(state, step: int, make_batch: Callable, update: Callable):
    """One update: its batch, the step, and their metrics with the step's wall time."""
    t0 = time.perf_counter()
    batch, batch_metrics = make_batch(state.params, step)
    state, step_metrics = update(state, batch)
    values = {**batch_metrics, **jax.device_get(step_metrics)}
    values["time/step_s"] = time.perf_counter() - t0
    if "rollout/tokens" in values:
        values["rollout/tokens_per_s"] = values["rollout/tokens"] / values["time/step_s"]
    return state, values


def _progress(start: int, total_steps: int, desc: str):
    return tqdm.tqdm(
        range(start, total_steps),
        initial=start,
        total=total_steps,
        desc=desc,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )


WATCHED = ("train/loss", "train/grad_norm")  # a non-finite one makes the train step skip
MAX_SKIPS_NAMED = 10  # skipped steps listed in the error; the rest are counted


@dataclasses.dataclass
class SkipBudget:
    """How many non-finite steps a stage may skip: at most `max_skipped` in all and
    `max_consecutive` in a row. A skip is safe when rare; many mean broken data or a diverged
    model, and a stage that went on would report a model that barely trained."""

    stage: str
    max_skipped: int
    max_consecutive: int
    skipped: list[tuple[int, list[str]]] = dataclasses.field(default_factory=list)

    def record(self, step: int, values: dict) -> None:
        """Count `step` if its update was skipped; raise FloatingPointError past the budget."""
        if not values.get("train/skipped", 0.0):
            return
        bad = [k for k in WATCHED if k in values and not math.isfinite(values[k])]
        if values.get("train/nonfinite_update", 0.0):  # finite loss and gradient, bad update
            bad.append("the update (params or optimizer state)")
        self.skipped.append((step, bad or ["train/skipped"]))
        run = self._trailing_run(step)
        if len(self.skipped) > self.max_skipped:
            self._fail(f"{len(self.skipped)} skipped steps, more than {self.max_skipped} allowed")
        if run > self.max_consecutive:
            self._fail(f"{run} consecutive skipped steps, more than {self.max_consecutive} allowed")

    def _trailing_run(self, step: int) -> int:
        run = 0
        for s, _ in reversed(self.skipped):
            if s != step - run:
                break
            run += 1
        return run

    def _fail(self, what: str) -> None:
        shown = self.skipped[:MAX_SKIPS_NAMED]
        steps = "; ".join(f"step {s}: {', '.join(keys)} not finite" for s, keys in shown)
        if len(self.skipped) > len(shown):
            steps += f"; ... and {len(self.skipped) - len(shown)} more"
        raise FloatingPointError(
            f"stage {self.stage!r}: {what} (stage settings max_skipped_frac, "
            f"max_consecutive_skips); the stage is not marked done: {steps}"
        )

    def meta(self, step: int, rows: list[dict]) -> dict:
        """A checkpoint's meta: its step, the rows since the last checkpoint, the skips so far."""
        return {"step": step, "rows": rows, "skipped": [list(s) for s in self.skipped]}


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


def last_value(stage_dir: Path, key: str) -> float:
    """The last logged value of a metric (NaN if never logged)."""
    values = [row[key] for row in metrics.read_metrics(stage_dir) if key in row]
    return float(values[-1]) if values else float("nan")
