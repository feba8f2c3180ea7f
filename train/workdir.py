"""A run's directory and its files, named in this one place: write, refuse, read.

    workdir/config.json       the run's config (``Config.to_json``); a workdir holds one config
    workdir/metrics.jsonl     one JSON object per logged step (training metrics, test accuracy)
    workdir/summary.json      the run's results, written once training and evaluation are done
    workdir/plots/            PNG plots of the run
    workdir/checkpoints/      orbax checkpoints (``train.checkpoint`` names what is inside)
    workdir/lock              who trains in the workdir (pid, host), locked while it does (``WorkdirLock``)

Imports only ``train.config``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from optimized import ViTMoEConfig

from .config import Config

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOTS = "plots"
LOCK = "lock"

# Choice: the fields that cannot change a number a run computes, so they may change when a run resumes: where it
# executes (mesh: a run resumes under any mesh), how many grain worker processes decode (every random choice is a
# function of (seed, example, epoch)), how often it saves and how many checkpoints it keeps. log_every and
# eval_every are not here: they decide which records metrics.jsonl holds.
RESUMABLE_CHANGES = ("mesh", "data.workers", "checkpoint_every", "keep_checkpoints", "keep_checkpoints_every")


class ConfigMismatchError(ValueError):
    pass


class WorkdirInUseError(RuntimeError):
    pass


def _comparable(saved: dict) -> dict:
    try:  # a config saved before a field existed (data.augment, ...) reads with that field's default
        saved = json.loads(Config.from_dict(saved).to_json())
    except (KeyError, TypeError, AttributeError, ValueError):
        pass  # not a config of a known shape: the comparison reports the differences
    model = saved.get("model") if isinstance(saved, dict) else None
    if isinstance(model, dict):  # a loss weight of None means its router's default: compared as that number (the
        try:  # configs written before None existed hold 0.005)
            model["importance_weight"], model["load_weight"] = ViTMoEConfig(**model).loss_weights()
        except (TypeError, ValueError):
            pass
    for name in RESUMABLE_CHANGES:
        *section, field = name.split(".")
        owner = saved.get(section[0], {}) if section else saved
        if isinstance(owner, dict):
            owner.pop(field, None)
    return saved


def check_config(config: Config, saved: dict, where) -> None:
    """Refuse ``config`` if it differs from the config ``saved`` (read from ``where``) in a field that can change a
    result (any field but ``RESUMABLE_CHANGES``)."""
    diffs = config_differences(saved, config)
    if diffs:
        raise ConfigMismatchError(
            f"{where} holds a run of a different config; differences (saved -> now): " + "; ".join(diffs[:10])
            + ". Use a new --workdir, or the same options to resume."
        )  # fmt: skip


def config_differences(saved: dict, config: Config) -> list[str]:
    """The fields in which ``config`` differs from the config ``saved`` (a dict, as written), as
    ``"model.mlp_dim: 64 -> 48"`` (saved -> now); ``RESUMABLE_CHANGES`` are not compared."""
    saved, current = _comparable(saved), _comparable(json.loads(config.to_json()))
    if not isinstance(saved, dict):
        return [f"{saved!r} is not a config"]
    return _diff(saved, current)


def check_or_write_config(config: Config, workdir: Path, *, write: bool = True) -> None:
    """Refuse a workdir that holds another config; with ``write``, record this one."""
    path = Path(workdir) / CONFIG
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigMismatchError(f"{path} is not valid JSON ({err}); use a new workdir") from err
        check_config(config, saved, f"workdir {workdir}")
    if write:  # a new run, or the same run perhaps under another mesh: record this one
        # Whole or not at all: with several processes the others read it (above) while process 0 writes it, and a
        # file truncated mid-write read as "not valid JSON" there ended a resumed two-process run in CI.
        write_whole(path, config.to_json())


def write_whole(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole or is left as it was, and a reader sees the old file or the new one, never a
    part: written aside (a name of this process's own), flushed to disk, renamed over it, the directory flushed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WorkdirLock:
    """The lock of the one training in a workdir: ``acquire`` refuses at once, naming the holder (pid, host, since
    when), while another process holds it; ``release`` (or the holder's death) frees it.

    Choice: ``fcntl.flock`` on ``workdir/lock``, not a file created with O_EXCL: the kernel releases a flock when
    its process dies however it dies (``kill -9``, a crashed node's NFS lease), so a stale lock never needs a
    guess from a pid that another host cannot check or that was reused. The file names the holder for the
    message; one left by a dead process is taken over, with a note. A filesystem without locks (some FUSE
    mounts) gets a note and no lock. With several processes only process 0 takes it (the trainer's choice: the
    processes of one run are one program, and a second run's process 0 is refused).
    """

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK
        self._file = None

    def acquire(self) -> None:
        if self._file is not None:
            return
        if not self.workdir.is_dir():
            raise ValueError(f"--workdir {self.workdir} is {'a file' if self.workdir.exists() else 'missing'}, "
                             "not a directory")  # fmt: skip
        try:
            f = open(self.path, "a+")
        except OSError as err:
            raise ValueError(f"--workdir {self.workdir}: cannot write in it ({err.strerror or err})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                print(f"note: {self.path}: this filesystem has no locks ({err.strerror}); nothing stops a second "
                      "training in this workdir", file=sys.stderr)  # fmt: skip
                self._file = f
                return
            holder = _holder(f)
            f.close()
            raise WorkdirInUseError(f"workdir {self.workdir} is in use by another training ({holder}); wait for it "
                                    "to end or stop it, or use another --workdir") from None  # fmt: skip
        previous = _holder(f) if os.fstat(f.fileno()).st_size else None
        if previous is not None:
            print(f"note: taking over the lock of {previous} in {self.workdir} (no longer running)", file=sys.stderr)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")  # fmt: skip
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self._file.truncate(0)  # an empty lock file: released, not abandoned
            self._file.flush()
        except OSError:
            pass
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def _holder(f) -> str:
    f.seek(0)
    text = f.read()
    try:
        who = json.loads(text)
        return f"pid {who['pid']} on {who['host']}, since {who['since']}"
    except (ValueError, TypeError, KeyError):
        return f"a process that wrote {text.strip()[:80]!r} in {f.name}"


def _diff(a, b, prefix=""):
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def saved_config(workdir) -> Config:
    """The config a run in ``workdir`` was trained with; FileNotFoundError if it is not a training workdir."""
    path = Path(workdir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir")
    return Config.from_dict(json.loads(path.read_text()))


def metrics_path(workdir) -> Path:
    return Path(workdir) / METRICS


def _metric_records(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl``. A last line cut short (a full disk, a kill during the write) is dropped
    with a note; another line that is not a JSON record is an error naming the file and the line."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")  # the last item is what follows the last newline: "" unless the file was cut
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif number == len(lines):
            print(f"note: {path}: dropping its last line, cut short ({line[:40]!r}...)", file=sys.stderr)
        else:
            raise ValueError(f"{path}, line {number} is not a JSON record ({line[:40]!r}); delete that line or use a "
                             "new workdir")  # fmt: skip
    return records


def read_metrics(workdir) -> list[dict]:
    """Every logged record of the run, in order."""
    return _metric_records(metrics_path(workdir))


def truncate_metrics(workdir, step: int) -> None:
    """Drop logged lines past the restored checkpoint (the resumed run will log them again), and a line cut short.
    The file is replaced whole, never left half rewritten."""
    path = metrics_path(workdir)
    if not path.exists():
        return
    keep = [record for record in _metric_records(path) if record.get("step", 0) <= step]
    write_whole(path, "".join(json.dumps(record) + "\n" for record in keep))


def summary_path(workdir) -> Path:
    return Path(workdir) / SUMMARY


def write_summary(workdir, summary: dict) -> None:
    write_whole(summary_path(workdir), json.dumps(summary, indent=2))


def read_summary(workdir) -> dict:
    return json.loads(summary_path(workdir).read_text())


def plots_dir(workdir) -> Path:
    return Path(workdir) / PLOTS
