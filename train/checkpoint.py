"""Checkpoints: written to a temporary file and renamed, with a SHA-256 so a corrupted file is never loaded."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import equinox as eqx

KEEP = 2  # checkpoints kept on disk (the newest ones)


class CorruptCheckpointError(RuntimeError):
    pass


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(workdir: Path, step: int, tree) -> Path:
    """Write ``tree`` (any pytree of arrays, e.g. (model, optimizer state)) as the checkpoint of ``step``."""
    directory = Path(workdir) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.eqx"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        eqx.tree_serialise_leaves(f, tree)
        f.flush()
        os.fsync(f.fileno())
    digest = _digest(tmp)
    os.replace(tmp, path)
    _atomic_write_text(path.with_suffix(".json"), json.dumps({"step": step, "sha256": digest, "file": path.name}))
    for old in sorted(directory.glob("step_*.json"))[:-KEEP]:
        old.unlink()
        old.with_suffix(".eqx").unlink(missing_ok=True)
    return path


def latest(workdir: Path) -> dict | None:
    """The newest checkpoint's record (``step``, ``sha256``, ``path``), or None when there is none."""
    directory = Path(workdir) / "checkpoints"
    for meta_path in sorted(directory.glob("step_*.json"), reverse=True):
        meta = json.loads(meta_path.read_text())
        meta["path"] = directory / meta["file"]
        return meta
    return None


def restore(meta: dict, like):
    """Load the checkpoint described by ``meta`` into a pytree shaped like ``like``, after checking its digest."""
    path = Path(meta["path"])
    if not path.exists():
        raise CorruptCheckpointError(f"checkpoint {path} is missing (its record {path.with_suffix('.json')} exists)")
    if _digest(path) != meta["sha256"]:
        raise CorruptCheckpointError(
            f"checkpoint {path} does not match its recorded SHA-256: it is corrupted and was not loaded. "
            f"Delete it and its .json record to resume from an earlier checkpoint, or use a new workdir."
        )
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except Exception as err:  # a file of the right digest but the wrong structure
        raise CorruptCheckpointError(f"checkpoint {path} does not fit this model and optimizer: {err}") from err
