"""A run's directory and its files, named in this one place: write, refuse, read.

    workdir/config.json       the run's config (``Config.to_json``); a workdir holds one config
    workdir/metrics.jsonl     one JSON object per logged step (training metrics, test accuracy)
    workdir/summary.json      the run's results, written once training and evaluation are done
    workdir/plots/            PNG plots of the run
    workdir/checkpoints/      orbax checkpoints (``train.checkpoint`` names what is inside)

Imports only ``train.config``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import Config

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOTS = "plots"


class ConfigMismatchError(ValueError):
    pass


def check_or_write_config(config: Config, workdir: Path, *, write: bool = True) -> None:
    """Refuse a workdir that holds another config; with ``write``, record this one."""
    path = Path(workdir) / CONFIG
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigMismatchError(f"{path} is not valid JSON ({err}); use a new workdir") from err
        try:  # a config saved before a field existed (data.augment, ...) reads with that field's default
            saved = json.loads(Config.from_dict(saved).to_json())
        except (KeyError, TypeError):
            pass  # not a config of a known shape: the comparison below reports the differences
        current = json.loads(config.to_json())
        # Choice: the mesh says where the run executes, not what it computes; a run resumes under any mesh. How
        # many checkpoints are kept is not what it computes either.
        for name in ("mesh", "keep_checkpoints", "keep_checkpoints_every"):
            saved.pop(name, None)
            current.pop(name)
        if saved != current:
            diffs = _diff(saved, current)
            raise ConfigMismatchError(
                f"workdir {workdir} holds a run of a different config; differences (saved -> now): "
                + "; ".join(diffs[:10])
                + ". Use a new --workdir, or the same options to resume."
            )
    if write:
        path.write_text(config.to_json())  # a new run, or the same run perhaps under another mesh: record this one


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


def read_metrics(workdir) -> list[dict]:
    """Every logged record of the run, in order."""
    return [json.loads(line) for line in metrics_path(workdir).read_text().splitlines() if line]


def truncate_metrics(workdir, step: int) -> None:
    """Drop logged lines past the restored checkpoint: the resumed run will log them again."""
    path = metrics_path(workdir)
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def summary_path(workdir) -> Path:
    return Path(workdir) / SUMMARY


def write_summary(workdir, summary: dict) -> None:
    summary_path(workdir).write_text(json.dumps(summary, indent=2))


def read_summary(workdir) -> dict:
    return json.loads(summary_path(workdir).read_text())


def plots_dir(workdir) -> Path:
    return Path(workdir) / PLOTS
