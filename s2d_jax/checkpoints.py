"""Orbax checkpoints: full train state for resume, params-only exports for the stage hand-off.

Layout of one stage directory `workdir/<stage>/`:
    checkpoints/<step>/{state,meta}   full TrainState + JSON meta, every `save_every` steps (resume)
    params/                            params-only export written when the stage ends (next stage's input)
    DONE                               written last: a finished stage is skipped on rerun

Load order (the one rule, used by `pipeline.py`): (1) the latest checkpoint of this stage (resume),
(2) the stage's `init_from` (a previous stage's `params/` or a Hugging Face directory), (3) fresh init.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


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


def restore_latest(manager: ocp.CheckpointManager, target_state) -> tuple[Any, dict] | None:
    """(state, meta) of the latest checkpoint, restored onto `target_state`'s shapes/shardings."""
    step = manager.latest_step()
    if step is None:
        return None
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target_state)), meta=ocp.args.JsonRestore()
    )
    restored = manager.restore(step, args=args)
    return restored.state, restored.meta


def export_params(stage_dir: Path, params, info: dict) -> Path:
    """Write the params-only export `stage_dir/params` (+ info.json) for the next stage."""
    path = Path(stage_dir).absolute() / "params"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params, force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        (Path(stage_dir) / "params_info.json").write_text(json.dumps(info, indent=2))
    return path


def load_exported_params(stage_dir: Path, target_params, shardings=None):
    """Params of a finished stage, restored onto the shapes (and shardings) of `target_params`."""
    path = Path(stage_dir).absolute() / "params"
    if not path.exists():
        raise FileNotFoundError(
            f"no params export at {path}: the stage that writes it has not finished "
            "(run it first, or point init_from at another stage or a Hugging Face directory)"
        )
    return ocp.StandardCheckpointer().restore(path, _abstract(target_params, shardings))


def mark_done(stage_dir: Path, summary: dict) -> None:
    if jax.process_index() == 0:
        (Path(stage_dir) / "DONE").write_text(json.dumps(summary, indent=2, default=float))


def is_done(stage_dir: Path) -> bool:
    return (Path(stage_dir) / "DONE").exists()


def done_summary(stage_dir: Path) -> dict:
    return json.loads((Path(stage_dir) / "DONE").read_text())
