"""The study's results: one row per run, read from its workdir once it finished, and ``results.csv``.

A row holds the run's design (name, configuration, seed, ...), its accuracies and convergence, its expert usage,
and its training time from the interleaved timing pass (``timing.time_steps``); a diverged run's row holds NaN
where a finished run has numbers. The statistics, the plots and the report read these rows.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..config import Config
from ..workdir import read_metrics, read_summary
from .design import Run
from .execution import DIVERGED

CSV_FIELDS = (
    "name", "configuration", "control", "router", "factor", "combine_from", "seed", "steps", "learning_rate",
    "status", "test_accuracy", "test_accuracy_at_80", "convergence_gain", "fewshot_accuracy", "fewshot_draws",
    "train_seconds", "step_seconds", "timed_train_seconds", "images_per_second", "dropped_fraction", "load_cv",
    "experts_per_token", "plan_error", "workdir",
)  # fmt: skip


def test_curve(workdir: Path) -> dict[int, float]:
    """Test accuracy by step, from a run's ``metrics.jsonl``."""
    records = read_metrics(workdir)
    return {r["step"]: r["test_accuracy"] for r in records if "test_accuracy" in r}


def convergence_gain(curve: dict[int, float], steps: int) -> tuple[float, float]:
    """(accuracy at the last evaluation at or before 80% of the steps, final accuracy minus it)."""
    before = [s for s in curve if s <= 0.8 * steps]
    if not before or steps not in curve:
        return math.nan, math.nan
    at_80 = curve[max(before)]
    return at_80, curve[steps] - at_80


def result_row(run: Run, config: Config, workdir: Path, step_seconds: float) -> dict:
    """The run's row: ``step_seconds`` is its configuration's median step time from the timing pass."""
    row = {"name": run.name, "configuration": run.configuration, "control": run.control, "router": run.router,
           "factor": run.factor, "combine_from": run.combine_from, "seed": run.seed, "steps": config.steps,
           "learning_rate": config.learning_rate, "workdir": str(workdir), "step_seconds": step_seconds,
           "timed_train_seconds": step_seconds * config.steps}  # fmt: skip
    if (workdir / DIVERGED).exists():
        return row | {"status": "diverged", **{k: math.nan for k in CSV_FIELDS if k not in row and k != "status"}}
    summary = read_summary(workdir)
    layers = summary["moe_layers"]
    ips = summary["images_per_second"]
    at_80, gain = convergence_gain(test_curve(workdir), config.steps)

    def layer_mean(name):
        return float(np.mean([layer[name] for layer in layers])) if layers else math.nan

    records = read_metrics(workdir)
    plan_errors = next((r["moe/plan_error"] for r in reversed(records) if r.get("moe/plan_error")), None)
    return row | {
        "status": "finished",
        "test_accuracy": summary["test_accuracy"],
        "test_accuracy_at_80": at_80,
        "convergence_gain": gain,
        "fewshot_accuracy": summary["fewshot_accuracy"],
        "fewshot_draws": ";".join(f"{a:.4f}" for a in summary.get("fewshot_draw_accuracies") or []),
        # The runs' own throughput: steps x batch / steady-state images per second (compilation, evaluation and
        # interruptions excluded). The tables use the interleaved timing pass instead (timing.time_steps).
        "train_seconds": config.steps * config.batch_size / ips if ips else math.nan,
        "images_per_second": ips if ips else math.nan,
        "dropped_fraction": layer_mean("dropped_fraction"),
        "load_cv": layer_mean("load_cv"),
        "experts_per_token": layer_mean("experts_per_token_mean"),
        "plan_error": float(np.mean(plan_errors)) if plan_errors else math.nan,
    }


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in CSV_FIELDS})


def finished(rows: list[dict], configuration: str) -> list[dict]:
    """The rows of ``configuration``'s runs that finished (diverged runs are left out of every mean)."""
    return [r for r in rows if r["configuration"] == configuration and r["status"] == "finished"]


def evaluation_sizes(rows: list[dict]) -> dict:
    """How many test images the runs' upstream and few-shot accuracies count (from a finished run's summary)."""
    for r in rows:
        if r["status"] == "finished":
            summary = read_summary(r["workdir"])
            return {"test": summary.get("num_test", 0), "fewshot": summary.get("fewshot_num_test", 0)}
    return {"test": 0, "fewshot": 0}
