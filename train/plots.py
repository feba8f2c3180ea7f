"""PNG plots of a run, from its metrics.jsonl: loss and accuracy curves, expert load per MoE layer."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np


def plot_run(workdir) -> list[Path]:
    workdir = Path(workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    out = workdir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    train = [r for r in records if "loss" in r]
    tests = [r for r in records if "test_accuracy" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (incl. aux)")
    ax_loss.plot([r["step"] for r in train], [r["cross_entropy"] for r in train], label="cross-entropy", alpha=0.7)
    ax_loss.set_xlabel("step")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train batch")
    ax_acc.plot([r["step"] for r in tests], [r["test_accuracy"] for r in tests], "o-", label="test")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    written.append(out / "curves.png")

    moe = [r for r in train if r.get("moe/expert_load")]
    if moe:
        load = np.array(moe[-1]["moe/expert_load"])  # (layers, E)
        dropped = np.array([r["moe/dropped_fraction"] for r in moe])  # (records, layers)
        fig, (ax_load, ax_drop) = plt.subplots(1, 2, figsize=(10, 3.8))
        im = ax_load.imshow(load, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax_load.set_yticks(range(len(load)), [f"block {2 * i + 1}" for i in range(len(load))])
        ax_load.set_xlabel("expert")
        ax_load.set_title("slot fill per expert (last logged step)")
        fig.colorbar(im, ax=ax_load)
        for i in range(dropped.shape[1]):
            ax_drop.plot([r["step"] for r in moe], dropped[:, i], label=f"block {2 * i + 1}")
        ax_drop.set_xlabel("step")
        ax_drop.set_ylabel("tokens processed by no expert")
        ax_drop.legend()
        fig.tight_layout()
        fig.savefig(out / "experts.png", dpi=110)
        plt.close(fig)
        written.append(out / "experts.png")
    return written
