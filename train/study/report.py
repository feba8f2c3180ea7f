"""``STUDY/report.md``: what the design can resolve, then what it found, beside the paper's numbers.

Written from the rows (``results``), their analyses (``statistics.analyse_all``), the plan (its schedule and a
run's config) and, when they ran, the Sinkhorn diagnosis and the pictures (``diagnosis``); it computes nothing.
"""

from __future__ import annotations

import datetime
import math
import platform
from pathlib import Path

from .. import paper
from ..config import Config
from .design import CONVERGENCE_POINTS, Plan, configuration_label, configurations, contrasts
from .diagnosis import diagnosis_heading, diagnosis_text
from .regimes import REGIMES
from .results import evaluation_sizes, finished
from .statistics import METRIC_LABELS, mean_ci


def write_report(rows, plan: Plan, analyses: dict[str, dict], studydir: Path, *, command: str,
                 wall_seconds: float, trained: int, diagnosis: list[dict] | None = None,
                 pictures: dict | None = None, pilot: dict | None = None, workers: int = 1) -> Path:  # fmt: skip
    """Write ``report.md``: the design and what it can resolve, the controls, the paper's findings as contrasts,
    the per-configuration tables, convergence, expert usage and what the routers do. ``analyses``:
    ``statistics.analyse_all`` of ``rows``; ``diagnosis`` and ``pictures``: from ``train.study.diagnosis``."""
    results = paper.load()
    spec = plan.spec
    steps, lr, source = plan.schedule
    config = plan.configs[plan.runs[0]]
    sizes = evaluation_sizes(rows)
    n_seeds = len(spec.seeds)
    where = f"regime `{spec.regime}`" if spec.regime else f"`{spec.preset}` preset"
    up = analyses["test_accuracy"]
    lines = [
        f"# Router study: {where}, {steps} steps, seeds {', '.join(map(str, spec.seeds))}", "",
        *_resolution(up, pilot), "",
        f"Command: `{command}`  ",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node() or 'this machine'} "
        f"({platform.machine()}, {_devices()}). This invocation trained {trained} of {len(rows)} runs in "
        f"{wall_seconds / 60:.1f} min of wall time with {workers} worker process{'es' if workers > 1 else ''} (the "
        "others were finished earlier and reused).  ",
        f"Overrides applied to every run: {', '.join(spec.overrides) or 'none'}. One row per run: "
        "[`results.csv`](results.csv).", "",
        "## Design (fixed before the runs)", "",
        *([f"- **Regime**: `{spec.regime}`: {REGIMES[spec.regime].description}; accepted by the pilot "
           f"([pilot.md]({'pilot.md' if (studydir / 'pilot.md').exists() else '../routing/pilot.md'})) because both "
           "controls reached 2 points on both pilot seeds."] if spec.regime else []),
        f"- **Arms**: {', '.join(configuration_label(c) for c in configurations(spec))}.",
        f"- **Seeds**: {n_seeds} ({', '.join(map(str, spec.seeds))}). A seed fixes a run's initialization, its "
        "training data order, its router noise and its probe's shot draws; every arm runs every seed, and "
        "every difference below is taken within seed (paired).",
        f"- **Training**: {steps} steps of batch {config.batch_size}, peak learning rate {lr:g} (from {source}), "
        f"warmup {config.warmup_steps} steps, cosine decay. {_variants(config)}",
        f"- **Evaluation**: upstream accuracy on {sizes['test']} test images; 10-shot linear probe on "
        f"{sizes['fewshot']} test images of held-out classes, averaged over {config.fewshot_draws} shot draws. "
        "Images are grouped for routing in an order that depends only on the images (a hash of their bytes), "
        "so results do not depend on how the test set is stored, and groups mix classes as training batches do.",
        "- **Contrasts** (pre-declared; each a mean of within-seed differences): "
        + "; ".join(f"{c.claim}{'' if len(spec.factors) == 1 else f' at capacity {c.factor}'}"
                    for c in contrasts(spec)) + ".",
        "- **Tests** (upstream accuracy), in two stages: stage 1, the two controls, each a two-sided paired t test "
        "(`scipy.stats.ttest_1samp` on the within-seed differences), Holm over the 2; stage 2, only if both "
        "controls are supported, the paper's findings (ii) and (iii), Holm over them. **supported** / "
        "**contradicted**: Holm-adjusted p < 0.05 with the difference above / below 0; otherwise **not "
        "resolved**. Sinkhorn vs Softmax Token Choice, the Figure 3 ablation, the hash arm and every 10-shot "
        "difference are descriptive: an interval, no test. Intervals: 95% Student t over seeds, not adjusted. "
        "A diverged run is excluded, and named, by the rule fixed before the runs: its loss turned non-finite.",
        "", "### What this design can resolve, per contrast", "",
        "Exact minimum detectable difference (80% power, two-sided paired t over the seeds at Holm's strictest "
        "level 0.05 / m of the contrast's family, noncentral t), from the sd of that contrast's within-seed "
        "differences in this study:", "",
        "| contrast | stage | seeds | sd (pts) | m | detectable (pts) |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for f in up["contrasts"]:
        lines.append(f"| {_short(f['contrast'])} | {_stage(f['stage'])} | {f['n']} | {_pts(f['sd'])} | {f['m']} | "
                     f"**{_pts(f['mdd'])}** |")  # fmt: skip
    late = [c for c in configurations(spec) if any(not r["convergence_gain"] < CONVERGENCE_POINTS / 100
                                                   for r in finished(rows, c))]  # fmt: skip
    if late:
        lines += ["", f"**Not converged**: in {len(late)} of {len(configurations(spec))} configurations at least one "
                  f"run gains {CONVERGENCE_POINTS} points or more of test accuracy over its last 20% of steps (see "
                  "Convergence): those models were still improving when training stopped, and differences between "
                  "arms measured here may change with longer training."]  # fmt: skip
    binomial = 100 * math.sqrt(0.25 / sizes["test"]) if sizes["test"] else math.nan
    lines += ["", f"For scale: the binomial standard error of one model's accuracy on {sizes['test']} test images is "
              f"at most {binomial:.2f} points.", ""]  # fmt: skip
    diverged = [r for r in rows if r["status"] == "diverged"]
    if diverged:
        lines += ["**Diverged runs** (excluded from every mean and contrast): "
                  + ", ".join(r["name"] for r in diverged), ""]  # fmt: skip

    # Controls first: they say whether the rest can mean anything.
    lines += ["## Controls: can this task rank routers?", ""]
    control_rows = [f for f in up["contrasts"] if f["stage"] == 1]
    if not control_rows:
        lines += ["This study ran without controls (`--no-controls`): nothing here shows that routing matters on "
                  "this task, so the findings below cannot be read as a ranking of routers.", ""]  # fmt: skip
    else:
        lines += _contrast_table(control_rows, analyses["fewshot_accuracy"], paper_columns=False)
        failing = [f["contrast"].claim.split(" (")[0] for f in control_rows if "supported" not in f["verdict"]]
        if failing:
            lines += ["", f"**This task cannot rank routers at this design's resolution**: not shown on upstream "
                      f"accuracy: {'; '.join(failing)}. Where MoE does not beat a dense model of one expert's "
                      "per-token compute, or learned routing does not beat content-agnostic routing, differences "
                      "between routers measure something other than routing quality: stage 2 is not tested.", ""]
        else:
            lines += ["", "Both controls are clearly positive on upstream accuracy: on this task, experts and "
                      "learned routing matter, so differences between routers are differences in routing.", ""]

    lines += ["## The paper's findings, as pre-declared contrasts", "",
              "Ours: mean within-seed difference ± 95% interval, in points. The paper's columns: the same "
              "difference computed from its tables (JFT-300M precision@1 upstream, ImageNet 10-shot), single "
              "runs without intervals.", ""]  # fmt: skip
    finding_rows = [f for f in up["contrasts"] if f["stage"] == 2]
    lines += _contrast_table(finding_rows, analyses["fewshot_accuracy"], paper_columns=True)
    described = [f for f in up["contrasts"] if f["stage"] == 0]
    if described:
        lines += ["", "### Descriptive contrasts (no test)", ""]
        lines += _contrast_table(described, analyses["fewshot_accuracy"], paper_columns=True)
    lines += ["", "![contrasts](plots/contrasts.png)", ""]

    lines += ["## Accuracy per configuration (the analogue of Tables 1-8)", "",
              "Mean ± 95% interval over seeds, in %. Training time: steps x the median time of one training step of "
              f"the configuration, timed for every configuration in turn in one pass ({spec.timing_rounds} rounds, "
              "after compiling), so that changes of machine load touch all configurations alike. Paper: Appendix B "
              "(B/32; n/r: not reported).", "",
              "| Configuration | upstream test accuracy | 10-shot accuracy | training time (s) | paper B/32 upstream | "
              "paper B/32 10-shot |", "|---|---|---|---|---|---|"]  # fmt: skip
    for c in configurations(spec):
        got = finished(rows, c)
        router, factor = (got[0]["router"], got[0]["factor"]) if got else (None, None)
        is_router = got and not got[0]["control"] and got[0]["combine_from"] == "softmax"
        up = _paper_cell(results, "jft_precision_at_1", "B/32", router, factor) if is_router else "-"
        few = _paper_cell(results, "imagenet_10shot", "B/32", router, factor) if is_router else "-"
        lines.append(f"| {configuration_label(c)} | {_fmt([r['test_accuracy'] for r in got])} | "
                     f"{_fmt([r['fewshot_accuracy'] for r in got])} | "
                     f"{_fmt([r['timed_train_seconds'] for r in got][:1], 1, 1)} | {up} | {few} |")  # fmt: skip
    lines += ["", "![accuracy against training time](plots/accuracy_vs_time.png)", ""]

    lines += ["## Convergence", "",
              f"Rule: test accuracy gains less than {CONVERGENCE_POINTS} points over the last 20% of steps (from the "
              "evaluation at 80% of the steps to the last). Per configuration, over seeds:", "",
              "| Configuration | gain over the last 20% (pts) | largest gain | converged |", "|---|---|---|---|"]
    for c in configurations(spec):
        gains = [r["convergence_gain"] for r in finished(rows, c)]
        gains = [g for g in gains if not math.isnan(g)]
        ok = "yes" if gains and max(gains) < CONVERGENCE_POINTS / 100 else ("no" if gains else "-")
        lines.append(f"| {configuration_label(c)} | {_fmt(gains)} | {_pts(max(gains) if gains else math.nan)} | "
                     f"{ok} |")  # fmt: skip
    lines += ["", "![test accuracy during training](plots/convergence.png)", ""]

    lines += ["## Expert usage (last logged training step, mean over MoE layers)", "",
              "| Configuration | tokens dropped (%) | load CV | experts per token | Sinkhorn plan error |",
              "|---|---|---|---|---|"]  # fmt: skip
    for c in configurations(spec):
        got = finished(rows, c)
        if not got or got[0]["control"] == "dense":
            continue
        lines.append(f"| {configuration_label(c)} | {_fmt([r['dropped_fraction'] for r in got], 100, 1)} | "
                     f"{_fmt([r['load_cv'] for r in got], 1, 3)} | {_fmt([r['experts_per_token'] for r in got], 1, 2)}"
                     f" | {_fmt([r['plan_error'] for r in got], 1, 3)} |")  # fmt: skip
    if diagnosis:
        lines += ["", f"### {diagnosis_heading(diagnosis)}", "", *diagnosis_text(diagnosis)]
    if pictures:
        lines += ["", "## What the routers do", "",
                  f"For each router configuration (seed {spec.seeds[0]}): per-class expert usage on the test set "
                  "(fraction of a class's tokens each expert processes; Soft MoE: mean combine weight) and routing "
                  "maps of test images (each patch coloured by the expert giving it the largest weight; a number: "
                  "how many experts processed it; crossed: dropped). Also for any run: "
                  "`python -m train.visualize --workdir DIR`.", ""]  # fmt: skip
        for c, paths in pictures.items():
            lines.append(f"- {configuration_label(c)}: " + ", ".join(
                f"[{Path(p).stem.replace('_', ' ')}]({Path(p).relative_to(studydir).as_posix()})" for p in paths))
    lines += ["", "## Reading this", "",
              "The paper trains B/32 to L/16 on 305M JFT images for days of TPU time; this study trains a small "
              "ViT-MoE for minutes on a CPU, on a procedural task built so that tokens differ in kind. A finding "
              "not resolved here is not refuted: the design resolves differences of the size stated at the top, "
              "no smaller. More seeds narrow the intervals: rerun with more `--seeds` in the same directory and only "
              "the new runs train. Accuracies do not depend on the machine's load (a run's numbers are a function "
              "of its config); the runs' own throughput in the CSV does, which is why training time comes from the "
              "interleaved timing pass.", ""]  # fmt: skip
    path = studydir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _contrast_table(upstream: list[dict], fewshot: dict, *, paper_columns: bool) -> list[str]:
    by_key = {(f["contrast"].key, f["contrast"].factor): f for f in fewshot["contrasts"]}
    head = "| contrast | capacity | metric | ours (pts) | seeds | detectable (pts) | p | Holm p | verdict |"
    rule = "|---|---|---|---|---|---|---|---|---|"
    if paper_columns:
        head += " paper B/32 | paper B/16 | paper L/16 |"
        rule += "---|---|---|"
    lines = [head, rule]
    for f in upstream:
        c = f["contrast"]
        for metric, g in (("test_accuracy", f), ("fewshot_accuracy", by_key.get((c.key, c.factor)))):
            if g is None:
                continue
            ours = "-" if g["n"] == 0 else (f"{100 * g['mean']:+.2f}" if math.isnan(g["half"]) else
                                            f"{100 * g['mean']:+.2f} ± {100 * g['half']:.2f}")  # fmt: skip
            line = (f"| {c.claim} | {c.factor:g} | {METRIC_LABELS[metric]} | {ours} | {g['n']} | "
                    f"{_pts(g['mdd'])} | {_p(g['p'])} | {_p(g['p_holm'])} | {g['verdict']} |")  # fmt: skip
            if paper_columns:
                line += " " + " | ".join(g["paper"][a] for a in paper.ARCHITECTURES) + " |"
            lines.append(line)
    return lines


def _resolution(up: dict, pilot: dict | None) -> list[str]:
    """The report's first lines: the detectable difference declared before the runs, and each contrast's own."""
    lines = []
    if pilot and pilot.get("declared"):
        d = pilot["declared"]
        lines.append(f"**Declared before the runs** (by the pilot, from its sd of {d['sd_points']:.2f} points): with "
                     f"{d['seeds']} seeds this design detects a true difference of **{d['mdd_points']:.2f} points** "
                     f"with probability {d['power']:.0%} (exact, noncentral t, Holm over {d['tests']}).  ")  # fmt: skip
    tested = [f for f in up["contrasts"] if f["stage"]]
    if tested:
        lines.append("**Detectable in this study** (exact, from each contrast's own sd): "
                     + "; ".join(f"{_short(f['contrast'])} {_pts(f['mdd'])}" for f in tested) + ".")  # fmt: skip
    return lines


def _short(c) -> str:
    return c.claim.split(" (")[0]


def _stage(stage: int) -> str:
    return {1: "1 (control)", 2: "2 (finding)"}.get(stage, "descriptive")


def _variants(config: Config) -> str:
    """Which variant of the Sinkhorn routers and of Soft MoE the study runs."""
    m = config.model
    sinkhorn = ("no noise, Sinkhorn Token Choice with the importance loss (the paper's text: Sinkhorn balances by "
                "itself)" if m.sinkhorn_style == "paper" else "training noise N(0, (1/E)^2) for both Sinkhorn routers, "
                "importance and load losses for Sinkhorn Token Choice (the authors' released router code)")  # fmt: skip
    soft = ("eq. (10) as written (no normalization)" if not m.soft_moe_normalize else
            "l2-normalized tokens and slot parameters with a learned scale (the authors' released router)")  # fmt: skip
    return (f"Sinkhorn routers: `model.sinkhorn_style={m.sinkhorn_style}`: {sinkhorn}. Soft MoE: "
            f"`model.soft_moe_normalize={m.soft_moe_normalize}`: {soft}. Other variants: `--set` either field.")


def _pts(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f} pts"


def _devices() -> str:
    import jax

    devices = jax.devices()
    return f"{len(devices)} {devices[0].platform.upper()} device{'s' if len(devices) > 1 else ''}"


def _paper_cell(results, metric, arch, router, factor, field="accuracy") -> str:
    try:
        value = getattr(paper.lookup(results, metric, arch, router, factor), field)
    except KeyError:
        return "-"
    if math.isnan(value):
        return "n/r"
    return f"{100 * value:.2f}" if field == "accuracy" else f"{value:.2f}"


def _fmt(values, scale=100.0, digits=2, unit="") -> str:
    mean, half, n = mean_ci(values)
    if n == 0:
        return "-"

    def num(v):  # fixed digits, but never a bare 0.0 for a small positive figure
        return f"{v:.{digits}f}" if abs(v) >= 10 ** (1 - digits) or v == 0 else f"{v:.2g}"

    if n == 1 or math.isnan(half):
        return f"{num(scale * mean)}{unit}"
    return f"{num(scale * mean)} ± {num(scale * half)}{unit}"


def _p(value: float) -> str:
    return "-" if math.isnan(value) else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")
