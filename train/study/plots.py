"""The study's plots, in ``STUDY/plots/``: the contrasts with their intervals, accuracy against training time (the
paper's Figures 1 and 2) and test accuracy during training. Drawn from the rows and their analyses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from optimized import ROUTERS

from .design import LABELS, MARKERS, StudySpec, configuration_label, configurations, contrasts
from .results import finished, test_curve
from .statistics import METRIC_LABELS, mean_ci


def plot(rows, spec: StudySpec, analyses: dict[str, dict], studydir: Path) -> list[Path]:
    """Write the three plots; ``analyses``: ``statistics.analyse_all`` of ``rows``. Returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = studydir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    # The contrasts with their intervals: what the study found, in one picture.
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.9 + 0.45 * len(contrasts(spec))), sharey=True)
    for ax, metric in zip(axes, METRIC_LABELS, strict=True):
        a = analyses[metric]
        labels, ys = [], []
        for i, f in enumerate(a["contrasts"]):
            c = f["contrast"]
            labels.append(c.claim.split(" (")[0] + ("" if len(spec.factors) == 1 else f", capacity {c.factor}"))
            ys.append(-i)
            if f["n"] == 0:
                continue
            color = "C2" if "supported" in f["verdict"] else "C3" if "contradicted" in f["verdict"] else "0.4"
            half = 0 if math.isnan(f["half"]) else 100 * f["half"]
            ax.errorbar(100 * f["mean"], -i, xerr=half, marker="o", color=color, capsize=3)
            if f["diffs"]:
                ax.scatter([100 * d for d in f["diffs"]], [-i - 0.18] * len(f["diffs"]), s=8, color=color, alpha=0.5)
        ax.axvline(0, color="k", lw=0.8)
        if not math.isnan(a["mdd"]):
            ax.axvspan(-100 * a["mdd"], 100 * a["mdd"], color="0.9", zorder=0, label="below the detectable difference")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlabel(f"{METRIC_LABELS[metric]}: A - B (points), within seed")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_title("paired contrasts: mean, 95% interval, one dot per seed")
    fig.tight_layout()
    fig.savefig(out / "contrasts.png", dpi=110)
    plt.close(fig)
    written.append(out / "contrasts.png")

    # Accuracy against training time (the paper's Figures 1 and 2).
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, metric in zip(axes, METRIC_LABELS, strict=True):
        for c in configurations(spec):
            got = finished(rows, c)
            if not got:
                continue
            y, yh, _ = mean_ci([r[metric] for r in got])
            x = got[0]["timed_train_seconds"]
            r0 = got[0]
            if r0["control"]:
                marker, color, label = {"dense": ("D", "k", "dense (control)"),
                                        "agnostic": ("v", "0.5", "content-agnostic router (control)"),
                                        "hash": ("^", "0.7", "frozen random linear router (hash)")}[r0["control"]]
            else:
                marker, color, label = MARKERS[r0["router"]], f"C{ROUTERS.index(r0['router'])}", LABELS[r0["router"]]
                if r0["combine_from"] == "plan":
                    marker, label = "X", "Sinkhorn TC, plan combine"
            ax.errorbar(x, 100 * y, yerr=None if math.isnan(yh) else 100 * yh, marker=marker,
                        markersize=6 + 4 * (r0["factor"] - 1), color=color, capsize=2, linestyle="none",
                        label=label if r0["factor"] == spec.factors[0] or r0["control"] else None)  # fmt: skip
        ax.set_xlabel("training time (s): steps x median step time, interleaved timing")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("upstream (cf. Figure 1)")
    axes[1].set_title("10-shot linear probe (cf. Figure 2)")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{spec.preset}, {len(spec.seeds)} seed(s); bars: 95% intervals; larger markers: k or c = 2")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=110)
    plt.close(fig)
    written.append(out / "accuracy_vs_time.png")

    # Test accuracy during training, every configuration (and the Figure 3 ablation when it ran).
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, c in enumerate(configurations(spec)):
        curves = [test_curve(Path(r["workdir"])) for r in finished(rows, c)]
        curves = [cv for cv in curves if cv]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(cv) for cv in curves)))
        values = np.array([[cv[s] for s in steps] for cv in curves]) * 100
        dashed = "plan" in c or c.startswith(("dense", "agnostic", "hash"))
        line = ax.plot(steps, values.mean(0), marker="o", markersize=3, label=configuration_label(c),
                       color=f"C{i % 10}", linestyle="--" if dashed else "-")[0]
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("test accuracy during training (mean; band: min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=110)
    plt.close(fig)
    written.append(out / "convergence.png")
    return written
