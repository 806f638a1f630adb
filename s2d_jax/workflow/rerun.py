"""A rerun's config against the one its workdir ran with: what a change may touch.

A run records its parsed config (`run_config.json`). On a rerun of the same workdir the new config
is compared with it, field by field:
  * a change to what a finished or started stage ran with (its own fields, its models, the task,
    the seed, the evaluation, the grader's limit, or anything of a stage it reads) stops the run,
    listing the fields: those stages keep their results only under the settings that made them;
  * a change that touches only stages not yet started stops too, unless the run is given
    `accept_changes` (`--accept_config_changes`): then it runs them with the new settings;
  * run-level fields that cannot change results (`HARMLESS`) are allowed.
Every accepted change is appended to `config_changes.jsonl` (field, old, new, when).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from s2d_jax.workflow import checkpoints
from s2d_jax.workflow.config import RunConfig
from s2d_jax.workflow.stages import KINDS

RECORD = "run_config.json"
CHANGES = "config_changes.jsonl"
# How the work is spread and reported, not what it computes (results match across meshes).
HARMLESS = ("grader.workers", "mesh.", "report_rows", "export_hf")
# Fields every stage's results depend on, besides its own and its models'.
SHARED = ("seed", "nan_policy", "grader.timeout_s", "task.", "eval.")
_ABSENT = "<absent>"


def as_record(run_cfg: RunConfig) -> dict:
    """The parsed config as JSON values, stages keyed by name."""
    record = dataclasses.asdict(run_cfg)
    record["stages"] = {s["name"]: s for s in record["stages"]}
    return json.loads(json.dumps(record))


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out |= (
            _flatten(value, f"{prefix}{key}.")
            if isinstance(value, dict)
            else {f"{prefix}{key}": value}
        )
    return out


def _status(stage_dir: Path) -> str:
    if checkpoints.is_done(stage_dir):
        return "finished"
    if stage_dir.is_dir() and any(stage_dir.iterdir()):
        return "started"
    return "not started"


def _depends_on(run_cfg: RunConfig, name: str, field: str) -> bool:
    """Whether stage `name`'s results depend on `field` (a flattened key)."""
    by_name = {s.name: s for s in run_cfg.stages}
    seen, todo = set(), [name]
    while todo:
        stage = by_name[todo.pop()]
        if stage.name in seen:
            continue
        seen.add(stage.name)
        roles = [stage.model] + (["teacher"] if KINDS[stage.kind].uses_teacher else [])
        owned = [f"stages.{stage.name}."] + [f"models.{role}." for role in roles]
        if field.startswith(tuple(owned)) or field.startswith(SHARED):
            return True
        todo += [ref for ref in (stage.init_from, stage.teacher) if ref in by_name]
    return False


def check(workdir: Path, run_cfg: RunConfig, *, accept_changes: bool) -> list[dict]:
    """The changes from the recorded config that this run may make (see the module docstring);
    raises ValueError naming the stages and fields when it may not. [] on a first run."""
    path = Path(workdir) / RECORD
    if not path.exists():
        return []
    old, new = _flatten(json.loads(path.read_text())), _flatten(as_record(run_cfg))
    changed = [
        {"field": k, "old": old.get(k, _ABSENT), "new": new.get(k, _ABSENT)}
        for k in sorted(old.keys() | new.keys())
        if old.get(k, _ABSENT) != new.get(k, _ABSENT)
    ]
    relevant = [c for c in changed if not c["field"].startswith(HARMLESS)]
    ran = {s.name: _status(Path(workdir) / s.name) for s in run_cfg.stages}
    blocked = [
        f"  stage {name!r} ({status}): "
        + "; ".join(f"{c['field']} {c['old']!r} -> {c['new']!r}" for c in fields)
        for name, status in ran.items()
        if status != "not started"
        and (fields := [c for c in relevant if _depends_on(run_cfg, name, c["field"])])
    ]
    if blocked:
        raise ValueError(
            f"{workdir}: the config differs from the one this run started with, in what these "
            "stages ran with:\n" + "\n".join(blocked) + "\nTheir results hold only for the "
            "settings that made them: run the new config in a new --workdir, or set these "
            "fields back."
        )
    if relevant and not accept_changes:
        fields = ", ".join(f"{c['field']} {c['old']!r} -> {c['new']!r}" for c in relevant)
        raise ValueError(
            f"{workdir}: the config differs from the one this run started with, for stages not "
            f"yet started only: {fields}. Rerun with --accept_config_changes to run them with "
            f"the new settings (recorded in {CHANGES}), or use a new --workdir."
        )
    return changed


def record(workdir: Path, run_cfg: RunConfig, changes: list[dict]) -> None:
    """Write the config this run goes on with, and append the changes it accepted."""
    workdir = Path(workdir)
    if changes:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(workdir / CHANGES, "a", encoding="utf-8") as f:
            for change in changes:
                f.write(json.dumps({"time": stamp, **change}) + "\n")
    tmp = workdir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(as_record(run_cfg), indent=2))
    tmp.replace(workdir / RECORD)
