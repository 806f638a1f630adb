"""Orbax checkpoints: full train state for resume, params-only exports for the stage hand-off.

Layout of one stage directory `workdir/<stage>/`:
    checkpoints/<step>/{state,meta}   full TrainState + JSON meta, every `save_every` steps (resume)
    checkpoints/<step>/CHECKSUMS.json  sha256 of every file of that step, verified on restore
    params/                            params-only export written when the stage ends (next stage's input)
    params_checksums.json              sha256 of every file of `params/`, verified on load
    DONE                               written last: a finished stage is skipped on rerun

Restore takes the newest checkpoint whose files match their checksums: a corrupt one is reported
and deleted, and an older good one is used (its steps are recomputed); none good is an error.
A checkpoint without checksums (written by an older version) restores unverified, with a warning.

Load order (the one rule, used by `pipeline.py`): (1) the latest checkpoint of this stage (resume),
(2) the stage's `init_from` (a previous stage's `params/` or a Hugging Face directory), (3) fresh init.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

_log = logging.getLogger(__name__)
CHECKSUMS = "CHECKSUMS.json"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's files do not match the checksums recorded when it was written."""


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def directory_checksums(directory: Path, exclude: str = "") -> dict[str, str]:
    """{relative path: sha256} of every file under `directory` (but `exclude`)."""
    return {
        str(p.relative_to(directory)): _file_digest(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != exclude
    }


def write_checksums(directory: Path, out: Path, exclude: str = "") -> None:
    """Record the checksums of `directory`'s files in `out` (atomically: a kill leaves none)."""
    _write_atomic(out, json.dumps(directory_checksums(directory, exclude), indent=1))


def verify_checksums(directory: Path, recorded: Path) -> bool:
    """True when every file `recorded` lists matches; False when there is no record.

    Raises CorruptCheckpointError naming the first missing or changed file.
    """
    if not recorded.exists():
        return False
    try:
        digests = json.loads(recorded.read_text())
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"{recorded} is unreadable: {err}") from None
    for name, digest in digests.items():
        path = directory / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path} is missing (listed in {recorded})")
        if _file_digest(path) != digest:
            raise CorruptCheckpointError(f"{path} does not match its checksum in {recorded}")
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _abstract(tree, shardings=None):
    """ShapeDtypeStructs to restore against: `shardings` if given, else each leaf's own, else
    this process's first device (never the saved layout, whose devices may not exist here: a
    checkpoint written on a mesh restores on one device)."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local if s is None else s),
        tree,
        shardings,
    )


def state_manager(stage_dir: Path, keep: int = 2) -> ocp.CheckpointManager:
    """A CheckpointManager for one stage's full train state (synchronous, so a kill loses nothing).

    It keeps no save interval: the caller decides when to save (orbax's interval check would
    also write the first step it sees, a full-state write no schedule asked for)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(
        Path(stage_dir).absolute() / "checkpoints", options=options, item_names=("state", "meta")
    )


def save_state(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Save state + meta at `step` and wait until it is on disk."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager.save(step, args=args, force=True)  # force: past orbax's own should-save policy
    manager.wait_until_finished()
    if jax.process_index() == 0:
        step_dir = _step_dir(manager, step)
        write_checksums(step_dir, step_dir / CHECKSUMS, exclude=CHECKSUMS)
    if jax.process_count() > 1:  # no process reads a checkpoint before its checksums exist
        multihost_utils.sync_global_devices(f"s2d_jax checksums {step}")


def _step_dir(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(manager.directory) / str(step)


def restore_latest(manager: ocp.CheckpointManager, target_state) -> tuple[Any, dict] | None:
    """(state, meta) of the newest good checkpoint, restored onto `target_state`'s shapes and
    shardings; None when there is no checkpoint. Corrupt newer ones are reported and deleted
    (their steps are recomputed); raises CorruptCheckpointError when none is good."""
    steps = sorted(manager.all_steps(), reverse=True)
    bad: list[str] = []
    for step in steps:
        step_dir = _step_dir(manager, step)
        try:
            verified = verify_checksums(step_dir, step_dir / CHECKSUMS)
        except CorruptCheckpointError as err:
            bad.append(f"step {step}: {err}")
            continue
        if not verified:
            _log.warning("%s has no %s: restored unverified", step_dir, CHECKSUMS)
        # Any other restore error (e.g. shapes of a changed config) is no corruption: it is
        # raised, and no checkpoint is deleted for it.
        state, meta = _restore(manager, step, target_state)
        if bad:
            _drop_corrupt(manager, [s for s in steps if s > step], step, bad)
        return state, meta
    if bad:
        raise CorruptCheckpointError(
            f"{manager.directory}: no checkpoint is good ({'; '.join(bad)}); remove that "
            "directory to restart the stage from its init_from"
        )
    return None


def _drop_corrupt(manager: ocp.CheckpointManager, corrupt: list[int], good: int, why: list[str]):
    """Report the corrupt checkpoints newer than `good` and delete them: saving their steps again
    (recomputed from `good`) would collide with them."""
    _log.warning(
        "%s: checkpoint(s) %s are corrupt, resuming from step %d instead: %s",
        manager.directory,
        corrupt,
        good,
        "; ".join(why),
    )
    for step in corrupt:
        manager.delete(step)


def _restore(manager: ocp.CheckpointManager, step: int, target_state):
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target_state)), meta=ocp.args.JsonRestore()
    )
    restored = manager.restore(step, args=args)
    return restored.state, restored.meta


def export_params(stage_dir: Path, params, info: dict) -> Path:
    """Write the params-only export `stage_dir/params` (+ info.json) for the next stage."""
    path = Path(stage_dir).absolute() / "params"
    if jax.process_index() == 0:  # the old export's checksums must not vouch for the new one
        _params_checksums(stage_dir).unlink(missing_ok=True)
    # Closed when done: an open checkpointer's thread and event loop would otherwise be torn
    # down at interpreter exit, printing noise after a failure's traceback.
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, params, force=True)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        write_checksums(path, _params_checksums(stage_dir))
        (Path(stage_dir) / "params_info.json").write_text(json.dumps(info, indent=2))
    return path


def _params_checksums(stage_dir: Path) -> Path:
    return Path(stage_dir).absolute() / "params_checksums.json"


def load_exported_params(stage_dir: Path, target_params, shardings=None):
    """Params of a finished stage, restored onto the shapes (and shardings) of `target_params`."""
    path = Path(stage_dir).absolute() / "params"
    if not path.exists():
        raise FileNotFoundError(_missing_export_message(Path(stage_dir)))
    try:
        verified = verify_checksums(path, _params_checksums(stage_dir))
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(f"{err}: {_rerun_hint(Path(stage_dir))}") from None
    if not verified:
        _log.warning("%s has no checksums: loaded unverified", path)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, _abstract(target_params, shardings))


def _missing_export_message(stage_dir: Path) -> str:
    path = stage_dir.absolute() / "params"
    if (stage_dir / "DONE").exists():
        return f"no params export at {path}, yet the stage is marked done: {_rerun_hint(stage_dir)}"
    return (
        f"no params export at {path}: the stage that writes it has not finished "
        "(run it first, or point init_from at another stage or a Hugging Face directory)"
    )


def _rerun_hint(stage_dir: Path) -> str:
    return (
        f"rerun stage {stage_dir.name!r} by removing {stage_dir / 'DONE'} and {stage_dir / 'params'} "
        "(it resumes from its last checkpoint and writes the export again)"
    )


def mark_done(stage_dir: Path, summary: dict) -> None:
    if jax.process_index() == 0:  # atomic: a kill leaves no half-written marker
        _write_atomic(Path(stage_dir) / "DONE", json.dumps(summary, indent=2, default=float))


def is_done(stage_dir: Path) -> bool:
    """True when the stage's DONE marker exists and is readable; an unreadable one (torn by a
    crash) is reported and the stage counts as unfinished, so it resumes and writes it again."""
    return done_summary(stage_dir) is not None


def done_summary(stage_dir: Path) -> dict | None:
    """The summary in the DONE marker; None when there is none or it cannot be read."""
    path = Path(stage_dir) / "DONE"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        _log.warning(
            "%s line %d is unreadable (%s): stage %r is treated as unfinished and resumes from "
            "its last checkpoint",
            path,
            err.lineno,
            err.msg,
            Path(stage_dir).name,
        )
        return None
