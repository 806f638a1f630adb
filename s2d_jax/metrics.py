"""Metrics: one JSONL line per step plus TensorBoard event files; process 0 writes.

On resume the JSONL is truncated to the restored step, so a killed-and-resumed run ends with the
same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np


def _to_float(value) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Writes `{"step": s, **metrics}` lines to `<dir>/metrics.jsonl` and scalars to TensorBoard."""

    def __init__(self, directory: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(directory) / "metrics.jsonl"
        self.active = jax.process_index() == 0
        self._tb = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop lines past the checkpoint we resumed from
            kept = [
                line for line in self.path.read_text().splitlines() if _step(line) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
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
                f.write(json.dumps({"step": step, **values}, allow_nan=True) + "\n")
            if self._tb is not None:
                for key, value in values.items():
                    if math.isfinite(value):
                        self._tb.add_scalar(key, value, step)
        return values

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a kill: dropped


def read_metrics(stage_dir: Path) -> list[dict]:
    """All metric lines of a stage (for reports, plots and notebooks)."""
    path = Path(stage_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
