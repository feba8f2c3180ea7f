"""PNG plots of a run's curves, from its metrics.jsonl: loss, accuracy and, for an MoE, the tokens each MoE layer
drops. What the routers do (expert usage per class, routing maps) is ``train.routing_plots``. Imports
``train.workdir`` only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from .workdir import plots_dir, read_metrics, saved_config


def plot_run(workdir) -> list[Path]:
    """Write ``plots/curves.png`` of the run in ``workdir``; returns its path in a list."""
    records = read_metrics(workdir)
    try:  # the MoE layers' block indices (Every-2 unless model.moe_layers says otherwise)
        blocks = saved_config(workdir).model.moe_block_indices
    except FileNotFoundError:
        blocks = ()
    out = plots_dir(workdir)
    out.mkdir(exist_ok=True)
    train = [r for r in records if "loss" in r]
    tests = [r for r in records if "test_accuracy" in r]
    moe = [r for r in train if r.get("moe/dropped_fraction")]
    fig, axes = plt.subplots(1, 3 if moe else 2, figsize=(15 if moe else 10, 3.8))
    ax_loss, ax_acc = axes[:2]
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
    if moe:
        dropped = np.array([r["moe/dropped_fraction"] for r in moe])  # (records, layers)
        for i in range(dropped.shape[1]):
            block = blocks[i] if i < len(blocks) else 2 * i + 1
            axes[2].plot([r["step"] for r in moe], dropped[:, i], label=f"block {block}")
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("tokens processed by no expert")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return [out / "curves.png"]
