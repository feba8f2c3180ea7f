"""A finished run's summary: made from its metrics (``summarize``) and printed (``format_summary``)."""

from __future__ import annotations

from .config import Config
from .workdir import read_metrics


def _block(config: Config, layer: int) -> int:
    """The 0-based block index of MoE layer ``layer`` (Every-2: 1, 3, 5, ...; else ``model.moe_layers``)."""
    blocks = config.model.moe_block_indices
    return blocks[layer] if layer < len(blocks) else 2 * layer + 1


def summarize(config: Config, workdir, test_accuracy: float, probe: dict, images_per_second) -> dict:
    """The summary of the run in ``workdir``: its results, and per MoE layer the routing figures of the last
    logged step."""
    records = read_metrics(workdir)
    last = records[-1] if records else {}
    layers = []
    num_moe = len(last.get("moe/dropped_fraction", []) or [])
    for i in range(num_moe):
        layers.append(
            {
                "block": _block(config, i),
                "dropped_fraction": last["moe/dropped_fraction"][i],
                "experts_per_token_mean": last["moe/experts_per_token_mean"][i],
                "load_cv": last["moe/load_cv"][i],
                "expert_load": last["moe/expert_load"][i],
            }
        )
    if images_per_second is None:  # resumed with nothing left to time: take the last logged figure
        images_per_second = next((r["images_per_second"] for r in reversed(records) if r.get("images_per_second")),
                                 None)  # fmt: skip
    return {
        "router": config.model.router,
        "factor": config.model.factor,
        "steps": config.steps,
        "test_accuracy": test_accuracy,
        "fewshot_accuracy": probe["accuracy"],
        "fewshot_shots": probe.get("shots", config.fewshot_shots),
        "fewshot_l2": probe.get("l2"),
        "fewshot_draw_accuracies": probe.get("draw_accuracies"),
        "images_per_second": images_per_second,
        "final_train_loss": last.get("loss"),
        "moe_layers": layers,
    }


def format_summary(summary: dict) -> str:
    """The summary as the lines ``python -m train`` prints."""
    ips = summary["images_per_second"]
    lines = [
        f"router {summary['router']} (factor {summary['factor']}), {summary['steps']} steps",
        f"test accuracy           {100 * summary['test_accuracy']:.2f}%",
        f"{summary['fewshot_shots']}-shot linear probe    {100 * summary['fewshot_accuracy']:.2f}%",
        f"images per second       {ips:.0f}" if ips else "images per second       n/a",
    ]
    if summary["moe_layers"]:
        lines.append("MoE layer  dropped tokens  experts/token  load CV  expert load (min-max)")
        for layer in summary["moe_layers"]:
            load = layer["expert_load"]
            lines.append(
                f"block {layer['block']:<4} {100 * layer['dropped_fraction']:>13.1f}%  "
                f"{layer['experts_per_token_mean']:>13.2f}  {layer['load_cv']:>7.3f}  {min(load):.2f}-{max(load):.2f}"
            )
    return "\n".join(lines)
