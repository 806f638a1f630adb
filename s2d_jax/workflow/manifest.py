"""What a run ran on: `manifest.json` in the run directory, written when the run starts.

It records the code (git revision, dirty or not), the command line, the versions of the libraries
that decide the numbers, the devices, mesh and process count, and content hashes of the data (the
examples of every pool a stage or the evaluation reads, and a user's training file) and of every
Hugging Face checkpoint's config.json and weight index. A resumed run compares: different data or
checkpoints stop it with a message naming them (its finished stages were computed from others);
different code, versions or devices are printed as a warning and recorded under "resumes".
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax

FILE = "manifest.json"
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "transformers",
    "math-verify",
    "numpy",
)
_REPO = Path(__file__).resolve().parents[2]
_INDEX_FILES = ("config.json", "model.safetensors.index.json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git() -> dict:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        revision = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        revision = status = None
    return {"revision": revision, "dirty": None if status is None else bool(status)}


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def checkpoint_hashes(path: str) -> dict:
    """Hashes of a checkpoint's config.json and weight index; without an index (one safetensors
    file), of each weight file's header, which names every tensor with its dtype and shape."""
    root = Path(path)
    hashes = {name: _file_sha256(root / name) for name in _INDEX_FILES if (root / name).exists()}
    if "model.safetensors.index.json" not in hashes:
        for weights in sorted(root.glob("*.safetensors")):
            with open(weights, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                hashes[f"{weights.name} (header)"] = _sha256(f.read(size))
    return hashes


def build(run_cfg, models: dict, task, mesh) -> dict:
    """The manifest of a run about to start (every process computes the same, but its devices)."""
    pools = sorted({s.data for s in run_cfg.stages if s.data} | set(run_cfg.eval.splits))
    data = {f"pool {name}": _sha256(json.dumps(task.pool(name), sort_keys=True).encode())
            for name in pools}  # fmt: skip
    if run_cfg.task.train_path:
        data[f"file {run_cfg.task.train_path}"] = _file_sha256(Path(run_cfg.task.train_path))
    checkpoints = {
        role: checkpoint_hashes(spec.hf_path)
        for role, spec in sorted(models.items())
        if spec.hf_path and not spec.random_weights  # a random twin is written by the run
    }
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": sys.argv,
        "git": _git(),
        "versions": _versions(),
        "devices": {
            "platform": jax.default_backend(),
            "kinds": sorted({d.device_kind for d in jax.devices()}),
            "count": jax.device_count(),
            "processes": jax.process_count(),
            "mesh": dict(mesh.shape) if mesh is not None else {"devices": 1},
        },
        "data": data,
        "checkpoints": checkpoints,
    }


def check_and_write(workdir: Path, manifest: dict, *, write: bool) -> None:
    """Write the manifest of a first run; on a resume compare with the one on disk."""
    path = Path(workdir) / FILE
    if not path.exists():
        if write:
            path.write_text(json.dumps(manifest, indent=2))
        return
    recorded = json.loads(path.read_text())
    for section in ("data", "checkpoints"):
        changed = _diff(recorded.get(section, {}), manifest[section])
        if changed:
            raise ValueError(
                f"{path}: the {section} differ from what this run started with ({', '.join(changed)}); "
                "its finished stages were computed from the recorded ones: restore them, or "
                "start a new --workdir"
            )
    added = {s: _added(recorded.get(s, {}), manifest[s]) for s in ("data", "checkpoints")}
    differs = [k for k in ("git", "versions", "devices") if recorded.get(k) != manifest[k]]
    if write and any(added.values()):  # e.g. a stage added to the config reads a new pool
        for section, entries in added.items():
            recorded.setdefault(section, {}).update(entries)
        path.write_text(json.dumps(recorded, indent=2))
    if differs:
        print(f"[manifest] warning: this resume differs from the run's start in {differs}; "
              f"recorded in {path} under 'resumes'")  # fmt: skip
        if write:
            entry = {k: manifest[k] for k in ("started", "command", *differs)}
            recorded.setdefault("resumes", []).append(entry)
            path.write_text(json.dumps(recorded, indent=2))


def _added(old: dict, new: dict) -> dict:
    return {k: v for k, v in new.items() if k not in old}


def _diff(old: dict, new: dict) -> list[str]:
    """Entries in both whose hashes differ (a pool or role the run did not use before is new)."""
    return sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
