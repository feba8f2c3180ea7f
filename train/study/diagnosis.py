"""What the routers do: routing maps and per-class expert usage of every router configuration, and why Sinkhorn
Token Choice drops more tokens (its balance at inference with more Sinkhorn iterations).

Both read the first seed's trained run of each configuration (its workdir's checkpoint) and the study's data.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import numpy as np

from ..evaluators import evaluation_order
from ..trained import load_trained
from ..workdir import saved_config
from .design import LABELS, TOKEN_CHOICE, StudySpec, configuration_label, configurations
from .execution import StudyData, say
from .results import finished


def pictures(rows, spec: StudySpec, studydir: Path, *, data: StudyData | None = None,
             progress: bool = True) -> dict[str, list[Path]]:  # fmt: skip
    """Routing maps and per-class expert usage of every router configuration, from its first seed's run.

    ``data``: the study's dataset (default: loaded from the first run's config when a picture needs it).
    """
    from ..visualize import visualize_run

    out = {}
    for c in configurations(spec):
        got = [r for r in finished(rows, c) if r["seed"] == spec.seeds[0]]
        if not got or got[0]["control"] == "dense":
            continue
        data = StudyData(saved_config(got[0]["workdir"])) if data is None else data
        target = studydir / "plots" / "routing" / c
        say(progress, f"[pictures] {configuration_label(c)}")
        out[c] = visualize_run(Path(got[0]["workdir"]), out=target, progress=False, dataset=data())
    return out


def sinkhorn_diagnosis(rows, spec: StudySpec, *, iterations=(20, 100, 1000), images: int = 2048,
                       data: StudyData | None = None) -> list[dict]:  # fmt: skip
    """Token Choice balance at inference on test images, for the trained Token Choice routers (first seed) with
    the Sinkhorn iterations they trained with and more: dropped tokens, load CV and the plan's marginal error.

    If more iterations remove Sinkhorn Token Choice's extra dropping, its plan had not converged; if they do not,
    a balanced plan still gives unbalanced top-k choices per token (its rows are flat: the router's logits are
    small next to the entropic regularization). ``data``: as for ``pictures``.
    """
    found = []
    for factor in spec.factors:
        for router in TOKEN_CHOICE:
            got = [r for r in finished(rows, f"{router}-c{factor}") if r["seed"] == spec.seeds[0]]
            if not got:
                continue
            workdir = Path(got[0]["workdir"])
            config = saved_config(workdir)
            data = StudyData(config) if data is None else data
            dataset = data()
            order = evaluation_order(dataset.test_images)[: images - images % config.batch_size]
            for iters in iterations if router == "sinkhorn_token_choice" else iterations[:1]:
                # the trained weights, in a model that runs Sinkhorn for `iters` iterations
                model, _, _ = load_trained(workdir, config.replace(model=config.model.replace(sinkhorn_iters=iters)))
                metrics = [_inference_metrics(model, dataset.test_images[order[s : s + config.batch_size]])
                           for s in range(0, len(order), config.batch_size)]  # fmt: skip
                means = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
                found.append({"router": router, "factor": factor,
                              "sinkhorn_iters": iters if "sinkhorn" in router else None, **means})  # fmt: skip
    return found


def _inference_metrics(model, images) -> dict:
    moe = _inference_moe(model, images)
    return {name: float(np.mean(moe[name])) for name in ("dropped_fraction", "load_cv", "plan_error")}


@eqx.filter_jit
def _inference_moe(model, images):
    return model(images, inference=True)[1]["moe"]


def diagnosis_heading(diagnosis: list[dict]) -> str:
    """The report's heading over ``diagnosis_text``: what its data shows about dropping, Sinkhorn against Softmax
    Token Choice at the iterations they trained with (first capacity that has both).

    >>> diagnosis_heading([{"router": "sinkhorn_token_choice", "factor": 1, "dropped_fraction": 0.139},
    ...                    {"router": "softmax_token_choice", "factor": 1, "dropped_fraction": 0.188}])
    'Sinkhorn Token Choice drops fewer tokens than Softmax Token Choice (13.9% vs 18.8% at k = 1)'
    """
    for factor in sorted({d["factor"] for d in diagnosis}):
        sink = [d for d in diagnosis if d["router"] == "sinkhorn_token_choice" and d["factor"] == factor]
        soft = [d for d in diagnosis if d["router"] == "softmax_token_choice" and d["factor"] == factor]
        if sink and soft:
            a, b = 100 * sink[0]["dropped_fraction"], 100 * soft[0]["dropped_fraction"]
            how = "fewer" if round(a, 1) < round(b, 1) else "more" if round(a, 1) > round(b, 1) else "as many"
            return (f"Sinkhorn Token Choice drops {how} tokens {'as' if how == 'as many' else 'than'} Softmax Token "
                    f"Choice ({a:.1f}% vs {b:.1f}% at k = {factor:g})")  # fmt: skip
    return "Token dropping of the Sinkhorn routers"


def diagnosis_text(diagnosis: list[dict]) -> list[str]:
    """The report's lines on ``sinkhorn_diagnosis``: a table, and per capacity what more iterations change."""
    lines = ["Measured at inference on test images (first seed's trained model, grouped as in evaluation), with "
             "the Sinkhorn iterations it trained with (20) and more:", "",
             "| router | k | Sinkhorn iterations | tokens dropped (%) | load CV | plan marginal error |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for d in diagnosis:
        iters = "-" if d["sinkhorn_iters"] is None else str(d["sinkhorn_iters"])
        lines.append(f"| {LABELS[d['router']]} | {d['factor']} | {iters} | {100 * d['dropped_fraction']:.1f} | "
                     f"{d['load_cv']:.3f} | {d['plan_error']:.3g} |")  # fmt: skip
    for factor in sorted({d["factor"] for d in diagnosis}):
        sink = [d for d in diagnosis if d["router"] == "sinkhorn_token_choice" and d["factor"] == factor]
        soft = [d for d in diagnosis if d["router"] == "softmax_token_choice" and d["factor"] == factor]
        if len(sink) < 2 or not soft:
            continue
        first, last = sink[0], sink[-1]
        change = first["dropped_fraction"] - last["dropped_fraction"]
        gap = first["dropped_fraction"] - soft[0]["dropped_fraction"]
        if gap <= 0:
            text = (f"At k = {factor}, Sinkhorn Token Choice drops no more tokens than Softmax Token Choice here "
                    f"({100 * first['dropped_fraction']:.1f}% vs {100 * soft[0]['dropped_fraction']:.1f}%).")
        elif change >= 0.5 * gap:
            text = (f"At k = {factor}, more Sinkhorn iterations remove most of the extra dropping "
                    f"({100 * first['dropped_fraction']:.1f}% at {first['sinkhorn_iters']} iterations, "
                    f"{100 * last['dropped_fraction']:.1f}% at {last['sinkhorn_iters']}; plan error "
                    f"{first['plan_error']:.3g} -> {last['plan_error']:.3g}): with {first['sinkhorn_iters']} "
                    "iterations the plan is not yet balanced at this logit scale.")
        else:
            text = (f"At k = {factor}, more Sinkhorn iterations balance the plan (error {first['plan_error']:.3g} -> "
                    f"{last['plan_error']:.3g}) but barely change dropping ({100 * first['dropped_fraction']:.1f}% -> "
                    f"{100 * last['dropped_fraction']:.1f}%, Softmax Token Choice "
                    f"{100 * soft[0]['dropped_fraction']:.1f}%): the balanced plan's rows are flat, and each token's "
                    "top-k of a flat row is decided by small differences that are not balanced across experts. "
                    "Balance holds for the plan's mass, not for its per-token argmax.")
        lines += ["", text]
    return lines
