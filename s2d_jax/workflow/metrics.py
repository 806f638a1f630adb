"""Metrics: one JSONL line per step plus TensorBoard event files; process 0 writes.

On resume the JSONL is rebuilt to exactly one row per step up to the restored step (rows the
checkpoint carries replace torn or missing ones), so a killed-and-resumed run ends with the same
file as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

_log = logging.getLogger(__name__)


def _to_float(value) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Writes `{"step": s, **metrics}` lines to `<dir>/metrics.jsonl` and scalars to TensorBoard."""

    def __init__(
        self,
        directory: Path,
        resume_step: int = 0,
        tensorboard: bool = True,
        saved_rows: Sequence[dict] = (),
    ):
        """`saved_rows`: rows the restored checkpoint carries; they win over the file's."""
        self.path = Path(directory) / "metrics.jsonl"
        self.active = jax.process_index() == 0
        self._tb = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or saved_rows:
            rows = repaired_rows(self.path, resume_step, saved_rows)
            self.path.write_text("".join(_dumps(row) + "\n" for row in rows))
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                str(Path(directory) / "tensorboard"), purge_step=resume_step + 1
            )

    def write(self, step: int, metrics: dict) -> dict:
        """Record metrics of `step`; returns them as Python floats."""
        values = {k: _to_float(v) for k, v in metrics.items()}
        if self.active:
            with self.path.open("a") as f:
                f.write(_dumps({"step": step, **values}) + "\n")
            if self._tb is not None:
                for key, value in values.items():
                    if math.isfinite(value):
                        self._tb.add_scalar(key, value, step)
        return values

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _dumps(row: dict) -> str:
    return json.dumps(row, allow_nan=True)


def repaired_rows(path: Path, resume_step: int, saved_rows=()) -> list[dict]:
    """One row per step 1..resume_step: the file's readable rows (the last of duplicates),
    replaced by `saved_rows` where given; steps neither has are reported as lost."""
    by_step = {row["step"]: row for row in _readable_rows(path) if row["step"] <= resume_step}
    by_step.update({row["step"]: row for row in saved_rows if row["step"] <= resume_step})
    lost = sorted(set(range(1, resume_step + 1)) - set(by_step))
    if lost:
        _log.warning(
            "%s: no metrics survive for step(s) %s (resumed at %d)", path, lost, resume_step
        )
    return [by_step[s] for s in sorted(by_step)]


def _readable_rows(path: Path) -> list[dict]:
    """The rows of a metrics file, skipping (and reporting by line) any that cannot be read."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["step"] = int(row["step"])
        except (ValueError, KeyError, TypeError) as err:  # a line torn by a kill or crash
            _log.warning("%s line %d is unreadable and skipped: %s", path, number, err)
            continue
        rows.append(row)
    return rows


def read_metrics(stage_dir: Path) -> list[dict]:
    """All readable metric lines of a stage (for reports, plots and notebooks)."""
    return _readable_rows(Path(stage_dir) / "metrics.jsonl")


def check_finite(step: int, metrics: dict, keys=("train/loss", "train/grad_norm")) -> None:
    """Raise naming the step and the metric when a watched metric is NaN/Inf, or when the train
    step found its update non-finite (`train/nonfinite_update`) (nan_policy="raise")."""
    for key in keys:
        if key in metrics and not math.isfinite(metrics[key]):
            raise FloatingPointError(f"step {step}: metric {key} = {metrics[key]} is not finite")
    if metrics.get("train/nonfinite_update", 0.0):
        raise FloatingPointError(
            f"step {step}: the update made parameters or optimizer state non-finite "
            "(train/nonfinite_update = 1; loss and gradient norm were finite)"
        )
