"""Checkpoints through orbax's ``CheckpointManager``: asynchronous, sharded, atomic, checked.

    workdir/checkpoints/<step>/model/       the model's arrays (all a trained model needs: ``train.load_model``)
    workdir/checkpoints/<step>/opt_state/   the optimizer state (only resuming needs it)
    workdir/checkpoints/<step>/config.json  the run's config (the config the trainer passes in, as JSON)
    workdir/checkpoints/<step>/commit_success.txt, sha256.json

Each item is the list of a pytree's array leaves, in ``jax.tree.leaves(eqx.filter(tree, eqx.is_array))`` order: the
structure comes from the code (model config, optimizer), as with ``eqx.tree_serialise_leaves``. Every process
writes the shards its devices hold; orbax writes a step to a temporary directory and renames it when every
process is done (the commit), so a save cut short is never taken for a checkpoint. Right after the commit, a
thread of process 0 (off the training thread) writes the config beside the arrays and records a SHA-256 of every
file of the step in ``sha256.json``; a restore checks them and refuses a corrupted checkpoint, and a file the
record does not list. The batch of a step is a function of (seed, step), so the step is the loader's whole state.

Choice: a step whose ``sha256.json`` is missing, cut or unreadable (the run died between the commit and the
record, or the record was damaged) counts as incomplete, like a step without orbax's commit marker: a
checkpoint is loaded only when it can be checked. The run says which steps it passes over, and why.

Choice: this module, not orbax, deletes old steps (orbax's ``max_to_keep`` deletes them at the commit of the
next step, before that step is recorded): a step is deleted only once a newer one is recorded, so a kill at any
moment leaves at least ``keep`` complete steps (once ``keep`` were saved). A deleted step is first renamed
(``<step>.deleting-*``), so a kill during the deletion never leaves a half-deleted step under its own name.

Imports nothing of ``train``; of ``optimized``, the model class and ``with_layout`` (a checkpoint of either layout of
blocks loads in both).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from optimized import ViTMoE, with_layout

from .workdir import write_whole

KEEP = 2  # the newest checkpoints kept on disk
ITEMS = ("model", "opt_state")
SIDECAR = "sha256.json"
COMMIT = "commit_success.txt"  # orbax's commit marker at the root of a finished step
CONFIG = "config.json"  # the run's config, in each step
DELETING = ".deleting-"  # a step being deleted: <step>.deleting-<ns>


class CorruptCheckpointError(RuntimeError):
    pass


class CheckpointWriteError(RuntimeError):  # a save that failed (a full disk, a lost mount): one line, no traceback
    pass


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def directory_of(workdir) -> Path:
    """``workdir/checkpoints``, absolute: orbax refuses relative paths (``python -m train`` takes a relative
    ``--workdir``)."""
    return Path(workdir).absolute() / "checkpoints"


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != SIDECAR)


def _write_sidecar(step_dir: Path) -> None:
    record = {str(p.relative_to(step_dir)): digest(p) for p in _files(step_dir)}
    write_whole(step_dir / SIDECAR, json.dumps(record, indent=1, sort_keys=True))


def read_record(step_dir: Path) -> dict[str, str]:
    """The step's SHA-256 record ``{file: digest}``; CorruptCheckpointError naming the file if it is missing,
    cut or not such a record."""
    sidecar = Path(step_dir) / SIDECAR
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptCheckpointError(f"{sidecar} is unreadable ({err})") from None
    if not (isinstance(record, dict) and record and all(_is_entry(name, value) for name, value in record.items())):
        raise CorruptCheckpointError(f"{sidecar} is unreadable (not a record of file names and SHA-256 digests)")
    return record


def _is_entry(name, value) -> bool:  # a file of the step (a relative path inside it) and a SHA-256
    inside = isinstance(name, str) and not name.startswith("/") and ".." not in Path(name).parts
    return inside and isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _verify(step_dir: Path, items: tuple[str, ...] = ITEMS) -> None:
    """Check the files of ``items`` (and the step's own files) against the SHA-256 record: every recorded file
    is there with its digest, and every file there is recorded (an edited record cannot leave a file unchecked)."""
    try:
        record = read_record(step_dir)
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(f"{err}: checkpoint {step_dir} cannot be checked and was not loaded") from None
    others = set(ITEMS) - set(items)
    record = {name: recorded for name, recorded in record.items() if name.split("/")[0] not in others}
    on_disk = {str(p.relative_to(step_dir)) for p in _files(step_dir)}
    on_disk = {name for name in on_disk if name.split("/")[0] not in others}
    missing = sorted(set(record) - on_disk)
    if missing:
        raise CorruptCheckpointError(f"checkpoint {step_dir} is missing {missing[0]} (recorded in {SIDECAR}): it "
                                     "was not loaded. Delete the step's directory to resume from an earlier "
                                     "checkpoint, or use a new workdir.")  # fmt: skip
    unlisted = sorted(on_disk - set(record))
    if unlisted:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: {unlisted[0]} is not in its {SIDECAR} (the record was "
                                     "edited, or the file added): the step cannot be checked and was not loaded. "
                                     f"Delete {step_dir} to resume from an earlier checkpoint, or use a new "
                                     "workdir.")  # fmt: skip
    for name, recorded in record.items():
        if digest(step_dir / name) != recorded:
            raise CorruptCheckpointError(
                f"checkpoint {step_dir}: {name} does not match its recorded SHA-256: it is corrupted and was not "
                f"loaded. Delete {step_dir} to resume from an earlier checkpoint, or use a new workdir."
            )


def recorded_config(meta: dict) -> dict | None:
    """The config saved with the checkpoint ``meta`` (from ``latest``), checked against its SHA-256; None for a
    checkpoint written before configs were saved with them."""
    step_dir = Path(meta["path"])
    record = read_record(step_dir)
    if CONFIG not in record:
        return None
    path = step_dir / CONFIG
    if not path.exists() or digest(path) != record[CONFIG]:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: {CONFIG} is missing or does not match its recorded "
                                     f"SHA-256: it is corrupted. Delete {step_dir} to resume from an earlier "
                                     "checkpoint, or use a new workdir.")  # fmt: skip
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({err})") from None


def legacy_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("step_*.eqx"))


def _refuse_legacy(directory: Path) -> None:
    old = legacy_files(directory)
    if old:
        raise CorruptCheckpointError(
            f"{directory} holds checkpoints of the old format ({old[-1].name}, equinox-serialised); this version "
            f"reads orbax checkpoints. Convert them with `python -m train.convert_checkpoints {directory.parent}` "
            "(it keeps the old files in checkpoints/eqx-format/)."
        )


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr)


def _scan(directory: Path) -> tuple[list[int], list[Path], list[str]]:
    """(complete steps, incomplete step directories, why a record made a step incomplete)."""
    steps, skipped, unreadable = [], [], []
    if not directory.is_dir():
        return steps, skipped, unreadable
    for entry in directory.iterdir():
        if re.fullmatch(r"\d+", entry.name) and entry.is_dir():
            if not ((entry / COMMIT).exists() and (entry / SIDECAR).exists()):
                skipped.append(entry)
                continue
            try:
                read_record(entry)
            except CorruptCheckpointError as err:
                skipped.append(entry)
                unreadable.append(f"{err}: step {entry.name} is passed over")
                continue
            steps.append(int(entry.name))
        elif "orbax-checkpoint-tmp" in entry.name:
            skipped.append(entry)
    return sorted(steps), sorted(skipped), unreadable


def complete_steps(workdir, *, report: bool = False) -> list[int]:
    """Steps of ``workdir`` with a finished save (orbax's commit marker and a readable SHA-256 record), oldest
    first. With ``report``, the steps passed over (an interrupted save, a damaged record) are named on stderr."""
    directory = directory_of(workdir)
    steps, skipped, unreadable = _scan(directory)
    if report:
        for message in unreadable:
            _say(f"note: {message}")
    if report and skipped:
        names = ", ".join(p.name for p in skipped)
        _say(f"note: passing over incomplete checkpoint(s) {names} in {directory} (a save that did not finish); "
             + (f"resuming from step {steps[-1]}" if steps else "none is complete"))
    return steps


def latest(workdir, *, report: bool = False) -> dict | None:
    """The newest complete checkpoint as ``{"step", "path"}``, or None when there is none. Old-format
    checkpoints are refused with a message saying how to convert them."""
    directory = directory_of(workdir)
    if directory.is_dir():
        _refuse_legacy(directory)
    steps = complete_steps(workdir, report=report)
    if not steps:
        return None
    return {"step": steps[-1], "path": directory / str(steps[-1])}


def _arrays(tree) -> list:
    return jax.tree.leaves(eqx.filter(tree, eqx.is_array))


def _abstract(tree) -> list:
    def spec(x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return [spec(x) for x in _arrays(tree)]


def _fill(like, leaves: list):
    arrays, static = eqx.partition(like, eqx.is_array)
    flat, treedef = jax.tree.flatten(arrays)
    if len(flat) != len(leaves):
        raise CorruptCheckpointError(f"the checkpoint holds {len(leaves)} arrays, this model {len(flat)}")
    for have, want in zip(leaves, flat, strict=True):
        if have.shape != want.shape or have.dtype != want.dtype:
            raise CorruptCheckpointError(f"the checkpoint's array {have.shape} {have.dtype} does not fit this "
                                         f"model's {want.shape} {want.dtype}")  # fmt: skip
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def _stored(reader, step_dir: Path, name: str):
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a per-item metadata file it does not need is absent
    try:
        return reader.metadata(step_dir / name).item_metadata.tree
    finally:
        absl.setLevel(level)


def _fits(stored, like) -> bool:
    try:
        _check_shapes(stored, Path(), "model", like)
    except CorruptCheckpointError:
        return False
    return True


def _in_stored_layout(stored, like):
    """``like`` in the layout of blocks (``optimized.with_layout``) the stored arrays were saved in: a checkpoint
    written by a model in the other layout (e.g. before the sequence layout became the default) fits that one."""
    if _fits(stored, like):
        return like
    layout = _layout(like)
    if layout is None:
        return like
    other = with_layout(like, "stacked" if layout == "sequence" else "sequence")
    return other if _fits(stored, other) else like


def _layout(tree) -> str | None:
    """The layout of the Every-2 ``ViTMoE`` in ``tree``; None when it holds none (or another MoE placement)."""
    models = [m for m in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, ViTMoE)) if isinstance(m, ViTMoE)]
    return models[0].layout if models and models[0].config.every_2 else None


def _check_shapes(stored, step_dir: Path, name: str, like) -> None:
    """Refuse an item whose stored arrays (orbax's metadata, read without the arrays) differ from ``like``'s in
    number, shape or dtype: a checkpoint of another model. Checked before any array is read, since an orbax
    restore that fails midway leaves its asynchronous tasks to print "Event loop is closed" tracebacks at exit."""
    want = _abstract(like)
    what = "this model" if name == "model" else "this optimizer state"
    if not isinstance(stored, list) or len(stored) != len(want):
        count = len(stored) if isinstance(stored, list) else "an unknown number of"
        raise CorruptCheckpointError(f"checkpoint {step_dir} does not fit {what}: its {name} holds {count} arrays, "
                                     f"{what} {len(want)}")  # fmt: skip
    for i, (have, spec) in enumerate(zip(stored, want, strict=True)):
        if tuple(have.shape) != tuple(spec.shape) or np.dtype(have.dtype) != np.dtype(spec.dtype):
            raise CorruptCheckpointError(
                f"checkpoint {step_dir} does not fit {what}: its {name} array {i} is {tuple(have.shape)} "
                f"{np.dtype(have.dtype)}, {what}'s {tuple(spec.shape)} {np.dtype(spec.dtype)}"
            )


def restore(meta: dict, like, items: tuple[str, ...] = ITEMS):
    """The checkpoint ``meta`` (from ``latest``) in the shape of ``like``: ``(model, opt_state)`` for both items,
    the model alone for ``items=("model",)``. Arrays land on the shardings of ``like``'s arrays (restore under any
    mesh); the files are checked against their SHA-256 first."""
    ocp = _ocp()
    step_dir = Path(meta["path"])
    if not step_dir.exists():
        raise CorruptCheckpointError(f"checkpoint {step_dir} is missing")
    _verify(step_dir, items)
    likes = (like,) if len(items) == 1 else tuple(like)
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as reader:
            stored = {name: _stored(reader, step_dir, name) for name in items}
            saved = [_in_stored_layout(stored[name], tree) for name, tree in zip(items, likes, strict=True)]
            for name, tree in zip(items, saved, strict=True):  # before orbax reads: its failed reads leave noise
                _check_shapes(stored[name], step_dir, name, tree)
            args = {name: ocp.args.StandardRestore(_abstract(tree)) for name, tree in zip(items, saved, strict=True)}
            restored = {name: reader.restore(step_dir / name, args=arg) for name, arg in args.items()}
    except CorruptCheckpointError:
        raise
    except Exception as err:  # a checkpoint of another model, or unreadable files of the right digest
        what = "this model" if items == ("model",) else "this model and optimizer"
        raise CorruptCheckpointError(f"checkpoint {step_dir} does not fit {what}: {err}") from err
    out = []
    for name, tree, stored_tree in zip(items, likes, saved, strict=True):
        value = _fill(stored_tree, list(restored[name]))
        if stored_tree is not tree:  # saved in the other layout of blocks: rearranged, on the shardings of ``tree``
            arrays = _arrays(with_layout(value, _layout(tree)))
            value = _fill(tree, [jax.device_put(a, spec.sharding) for a, spec in
                                 zip(arrays, _abstract(tree), strict=True)])  # fmt: skip
        out.append(value)
    return out[0] if len(items) == 1 else tuple(out)


class Checkpoints:
    """The run's checkpoints: ``save`` returns once the arrays are copied off the devices; files are written in the
    background while training goes on (``asynchronous``), and a thread records the step (its config and
    ``sha256.json``) the moment orbax commits it, then deletes the steps no longer kept. ``finish`` waits for
    that. Keeps the newest ``keep`` and, with ``keep_every``, every step that is a multiple of it.
    ``config_json``: the run's config, saved in every step."""

    def __init__(self, workdir, *, keep: int = KEEP, keep_every: int | None = None, asynchronous: bool = True,
                 config_json: str | None = None):  # fmt: skip
        ocp = _ocp()
        self.directory = directory_of(workdir)
        self.directory.mkdir(parents=True, exist_ok=True)
        _refuse_legacy(self.directory)
        self.keep, self.keep_every, self.config_json = keep, keep_every, config_json
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=asynchronous,  # this class deletes old steps (see above)
            # Choice: our own step list (complete_steps) decides what is complete; orbax must not delete a step
            # we pass over, so the run can say what it found.
            cleanup_tmp_directories=False,
        )  # fmt: skip
        # Choice: incomplete steps are moved to checkpoints/incomplete/ (not deleted: the run reported them, a
        # person may look), so the steps they held can be saved again.
        if jax.process_index() == 0:
            for path in _scan(self.directory)[1]:
                (self.directory / "incomplete").mkdir(exist_ok=True)
                os.replace(path, self.directory / "incomplete" / f"{path.name}-{time.time_ns()}")
            for path in self.directory.glob(f"*{DELETING}*"):  # a deletion a kill cut short
                shutil.rmtree(path, ignore_errors=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("incomplete checkpoints moved")
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
        # Choice: the training loop is the one caller of JAX's preemption sync point (``train.preemption``), which
        # must see each process's steps in order. Orbax asks it too (for a log line and a statistic), from its
        # finalize thread with the step being saved: a step behind the loop's, which would move this process's
        # counter back while the processes agree on a stop step. Saves here are forced, so orbax's answer
        # decides nothing.
        self.manager.reached_preemption = lambda step: False
        self._pending: int | None = None
        self._recorder: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, step: int, model, opt_state) -> None:
        ocp = _ocp()
        self.finish()
        args = ocp.args.Composite(model=ocp.args.StandardSave(_arrays(model)),
                                  opt_state=ocp.args.StandardSave(_arrays(opt_state)))  # fmt: skip
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as err:
            raise self._failed(step, err) from err
        self._pending = step
        self._recorder = threading.Thread(target=self._record, args=(step,), name=f"record checkpoint {step}")
        self._recorder.start()

    def _record(self, step: int) -> None:
        """In the background: wait for orbax's commit of ``step``, then (process 0) write its config and its
        SHA-256 record, and delete the steps no longer kept."""
        try:
            self.manager.wait_until_finished()
            if jax.process_index() != 0:
                return
            step_dir = self.directory / str(step)
            if self.config_json is not None:
                write_whole(step_dir / CONFIG, self.config_json)
            _write_sidecar(step_dir)
            self._prune()
        except BaseException as err:  # raised on the training thread by finish()
            self._error = err

    def _prune(self) -> None:
        steps = _scan(self.directory)[0]
        kept = set(steps[-self.keep :])
        for step in steps:
            if step not in kept and not (self.keep_every and step % self.keep_every == 0):
                path = self.directory / str(step)
                gone = path.with_name(f"{step}{DELETING}{time.time_ns()}")
                os.replace(path, gone)
                shutil.rmtree(gone)

    def finish(self) -> None:
        """Wait until the last save is committed and recorded (raising what the recording raised)."""
        if self._pending is None:
            return
        self._recorder.join()
        step, error, self._error, self._pending = self._pending, self._error, None, None
        if isinstance(error, Exception):
            raise self._failed(step, error) from error
        if error is not None:
            raise error
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("checkpoint recorded")

    def _failed(self, step: int, err: Exception) -> CheckpointWriteError:
        """The error of a save that failed, once what it half-wrote is removed (process 0): its temporary
        directory, or the committed step it could not record. Earlier steps are untouched."""
        if jax.process_index() == 0:
            for path in [*self.directory.glob(f"{step}.orbax-checkpoint-tmp*"), self.directory / str(step)]:
                if path.is_dir() and not (path / SIDECAR).exists():
                    shutil.rmtree(path, ignore_errors=True)
        cause, reason = err, None
        while cause is not None and reason is None:  # the first OS error in the chain names the path and the cause
            if isinstance(cause, OSError) and cause.strerror:
                reason = f"{cause.strerror}: {cause.filename}" if cause.filename else cause.strerror
            cause = cause.__cause__ or cause.__context__
        if reason is None:
            text = str(err).strip()
            reason = text.splitlines()[0] if text else type(err).__name__
        steps = _scan(self.directory)[0]
        return CheckpointWriteError(
            f"could not write checkpoint {step} in {self.directory} ({reason}); its partial files were removed. "
            + (f"The last complete checkpoint is step {steps[-1]}." if steps else "There is no complete checkpoint.")
        )

    def close(self, *, quiet: bool = False) -> None:
        """Finish the last save and close. ``quiet`` (the run is already failing): a save that fails too is only
        noted, so the run's own error is the one reported."""
        try:
            self.finish()
        except Exception as err:
            if not quiet:
                raise
            _say(f"note: the last checkpoint could not be written either: {err}")
        finally:
            self.manager.close()


def save(workdir, step: int, model, opt_state, *, config_json: str | None = None) -> Path:
    """Write one checkpoint and wait for it (``Checkpoints`` for a run's repeated, asynchronous saves)."""
    checkpoints = Checkpoints(workdir, asynchronous=False, config_json=config_json)
    checkpoints.save(step, model, opt_state)
    checkpoints.close()
    return directory_of(workdir) / str(step)
