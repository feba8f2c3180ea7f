"""``python -m train.study``: the paper's router comparison (Tables 1-8, Figures 1-3), rerun end to end.

    grid: 6 routers x 2 capacities (k = 1, 2 for Token Choice; c = 1, 2 for Expert Choice and Soft MoE)
          x seeds, + the Figure 3 ablation (Sinkhorn Token Choice, combine weights from the plan)
    each run: train_and_evaluate(config, STUDY/runs/NAME)  (resumable; a finished run is never repeated)
    STUDY/results.csv   one row per run
    STUDY/report.md     means and 95% confidence intervals beside the paper's numbers, findings (i)-(iv)
    STUDY/plots/        accuracy_vs_time.png (Figures 1, 2), ablation.png (Figure 3)

Default: the ``synthetic`` preset (80 pre-training classes, 10-shot probe on 20 held-out ones, like JFT then
ImageNet), 1000 steps per run, seeds 0, 1, 2: 42 runs, measured 53 minutes on 2 CPU cores that were also
running other jobs (2026-11-23), plus 2 minutes for the timing pass. ``--quick`` checks
the pipeline in under a minute (the ``tiny`` preset, two routers, one seed, a few steps); its numbers mean
nothing. Interrupt the study at any time; the same command resumes it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from optimized import ROUTERS

from . import paper
from .checkpoint import CorruptCheckpointError
from .config import Config, resolve
from .loop import ConfigMismatchError, NonFiniteLossError, _check_or_write_config, load_data, train_and_evaluate

TOKEN_CHOICE = ("softmax_token_choice", "sinkhorn_token_choice")
EXPERT_CHOICE = ("softmax_expert_choice", "sinkhorn_expert_choice", "sparsity_constrained_expert_choice")
SPARSE = TOKEN_CHOICE + EXPERT_CHOICE
LABELS = {
    "softmax_token_choice": "Softmax Token Choice",
    "sinkhorn_token_choice": "Sinkhorn Token Choice",
    "softmax_expert_choice": "Softmax Expert Choice",
    "sinkhorn_expert_choice": "Sinkhorn Expert Choice",
    "sparsity_constrained_expert_choice": "Sparsity-constrained Expert Choice",
    "soft_moe": "Soft MoE",
}
MARKERS = {  # the paper's Figures 1 and 2
    "softmax_token_choice": "x",
    "sinkhorn_token_choice": "P",
    "softmax_expert_choice": "s",
    "sinkhorn_expert_choice": "o",
    "sparsity_constrained_expert_choice": "^",
    "soft_moe": "*",
}
CONFIDENCE = 0.95
METRIC_LABELS = {"test_accuracy": "upstream test accuracy", "fewshot_accuracy": "10-shot accuracy"}
CSV_FIELDS = (
    "name", "configuration", "router", "factor", "combine_from", "seed", "steps", "status", "test_accuracy",
    "fewshot_accuracy", "train_seconds", "step_seconds", "timed_train_seconds", "images_per_second",
    "dropped_fraction", "load_cv", "experts_per_token", "workdir",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StudySpec:
    preset: str = "synthetic"
    steps: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    timing_rounds: int = 10  # interleaved training steps timed per configuration (see time_steps)
    routers: tuple[str, ...] = ROUTERS
    factors: tuple[int, ...] = (1, 2)
    ablation: bool = True
    overrides: tuple[str, ...] = ()

    def validate(self) -> None:
        for router in self.routers:
            if router not in ROUTERS:
                raise ValueError(f"--routers: unknown router {router!r}; valid routers: {', '.join(ROUTERS)}")
        if not self.routers:
            raise ValueError("--routers: at least one router is needed")
        if len(set(self.routers)) != len(self.routers):
            raise ValueError(f"--routers: {self.routers} names a router twice")
        for factor in self.factors:
            if factor < 1:
                raise ValueError(f"--factors: {factor} is not a positive integer (k or c)")
        if not self.factors or len(set(self.factors)) != len(self.factors):
            raise ValueError(f"--factors: {self.factors} must be one or more distinct positive integers")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds: {self.seeds} must be one or more distinct non-negative integers")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.timing_rounds < 1:
            raise ValueError(f"--timing-rounds must be >= 1, got {self.timing_rounds}")
        if self.ablation and "sinkhorn_token_choice" not in self.routers:
            raise ValueError(
                "the Figure 3 ablation compares against Sinkhorn Token Choice: add sinkhorn_token_choice to "
                "--routers, or pass --no-ablation"
            )


def quick_spec() -> StudySpec:
    """The pipeline check used by the tests: seconds per run, numbers without meaning."""
    return StudySpec(preset="tiny", steps=6, seeds=(0,), routers=("sinkhorn_token_choice", "soft_moe"), factors=(1,),
                     timing_rounds=2)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    router: str
    factor: int
    seed: int
    combine_from: str = "softmax"  # "plan": the "without softmax combine" arm of Figure 3

    @property
    def name(self) -> str:
        return f"{self.configuration}-s{self.seed}"

    @property
    def configuration(self) -> str:
        """The run without its seed: what the tables average over."""
        plan = "-plan" if self.combine_from == "plan" else ""
        return f"{self.router}-c{self.factor}{plan}"

    def describe(self) -> str:
        capacity = "k" if self.router in TOKEN_CHOICE else "c"
        combine = ", combine from the plan (Figure 3 ablation)" if self.combine_from == "plan" else ""
        return f"{LABELS[self.router]} {capacity}={self.factor} seed {self.seed}{combine}"


def plan_runs(spec: StudySpec) -> list[Run]:
    """Seeds outermost: an interrupted study already holds whole replicates of the grid."""
    runs = []
    for seed in spec.seeds:
        for factor in spec.factors:
            runs += [Run(router, factor, seed) for router in spec.routers]
            if spec.ablation:
                runs.append(Run("sinkhorn_token_choice", factor, seed, combine_from="plan"))
    return runs


def run_config(spec: StudySpec, run: Run) -> Config:
    # Choice: test accuracy is evaluated 10 times per run (the curves of Figure 3), whatever the preset says.
    overrides = (f"eval_every={max(1, spec.steps // 10)}", *spec.overrides)
    config = resolve(spec.preset, router=run.router, factor=run.factor, seed=run.seed, steps=spec.steps,
                     overrides=overrides)  # fmt: skip
    return config.replace(model=config.model.replace(combine_from=run.combine_from))


# --------------------------------------------------------------------------------------------------- running


def execute(spec: StudySpec, studydir, *, progress: bool = True) -> list[dict]:
    """Train every run of ``spec`` not finished yet in ``studydir``; return one result row per run."""
    spec.validate()
    studydir = Path(studydir)
    runs = plan_runs(spec)
    configs = {run: run_config(spec, run) for run in runs}  # every bad option fails here, before any training
    for config in configs.values():
        config.validate()
    dataset = None
    rows = []
    for i, run in enumerate(runs, 1):
        workdir = studydir / "runs" / run.name
        head = f"[study {i}/{len(runs)}] {run.describe()}"
        if (workdir / "summary.json").exists() or (workdir / "diverged.txt").exists():
            _check_or_write_config(configs[run], workdir)  # a different study in the same directory is refused
            _say(progress, f"{head}: finished earlier, reused")
        else:
            _say(progress, f"{head}: training in {workdir}")
            dataset = load_data(configs[run]) if dataset is None else dataset
            try:
                train_and_evaluate(configs[run], workdir, progress=progress, dataset=dataset)
            except NonFiniteLossError as err:
                (workdir / "diverged.txt").write_text(str(err) + "\n")
                _say(progress, f"{head}: diverged ({err}); recorded, the study goes on")
        rows.append(result_row(run, configs[run], workdir))
    return rows


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def result_row(run: Run, config: Config, workdir: Path) -> dict:
    row = {"name": run.name, "configuration": run.configuration, "router": run.router, "factor": run.factor,
           "combine_from": run.combine_from, "seed": run.seed, "steps": config.steps,
           "workdir": str(workdir)}  # fmt: skip
    if (workdir / "diverged.txt").exists():
        return row | {"status": "diverged", **{k: math.nan for k in CSV_FIELDS if k not in row and k != "status"}}
    summary = json.loads((workdir / "summary.json").read_text())
    layers = summary["moe_layers"]
    ips = summary["images_per_second"]
    return row | {
        "status": "finished",
        "test_accuracy": summary["test_accuracy"],
        "fewshot_accuracy": summary["fewshot_accuracy"],
        # Choice: training time is steps x batch / steady-state images per second: compilation, evaluation
        # and interruptions excluded, so that a resumed run and an uninterrupted one cost the same.
        "train_seconds": config.steps * config.batch_size / ips if ips else math.nan,
        "images_per_second": ips if ips else math.nan,
        "dropped_fraction": float(np.mean([layer["dropped_fraction"] for layer in layers])),
        "load_cv": float(np.mean([layer["load_cv"] for layer in layers])),
        "experts_per_token": float(np.mean([layer["experts_per_token_mean"] for layer in layers])),
    }


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in CSV_FIELDS})


# ---------------------------------------------------------------------------------------------------- timing


def time_steps(spec: StudySpec, studydir: Path, *, progress: bool = True) -> dict[str, float]:
    """Median seconds per training step of every configuration of the study, timed in one interleaved pass.

    Choice: the tables and plots take training time from this pass (steps x median step time), not from the
    runs' own throughput. Runs happen minutes apart on a machine whose load changes; here every configuration
    is compiled first, then one step of each is timed in turn, ``spec.timing_rounds`` times, so that a change
    of load touches them all alike. The runs' own figure is kept in the CSV (``train_seconds``). Cached in
    ``step_times.json``, keyed by each configuration's full config.
    """
    import equinox as eqx
    import jax

    from optimized import ViTMoE

    from .loop import make_optimizer, make_step

    configs = {}
    for run in plan_runs(spec):
        configs.setdefault(run.configuration, run_config(spec, run))
    path = studydir / "step_times.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    keys = {name: config.replace(seed=0).to_json() for name, config in configs.items()}
    if cache.get("rounds") == spec.timing_rounds and all(
        cache.get("configs", {}).get(name) == key for name, key in keys.items()
    ):
        return {name: cache["step_seconds"][name] for name in configs}

    first = next(iter(configs.values()))
    dataset = load_data(first)
    images = jax.numpy.asarray(dataset.train_images[: first.batch_size])
    labels = jax.numpy.asarray(dataset.train_labels[: first.batch_size])
    steppers = {}
    for i, (name, config) in enumerate(configs.items(), 1):
        _say(progress, f"[timing {i}/{len(configs)}] compiling {name}")
        model = ViTMoE(config.model, key=jax.random.key(0))
        optimizer, _ = make_optimizer(config)
        state = [model, optimizer.init(eqx.filter(model, eqx.is_array))]
        step_fn = make_step(optimizer, config.label_smoothing, config.model.num_classes)

        def step(i, state=state, step_fn=step_fn):
            state[0], state[1], metrics = step_fn(images, state[0], state[1], labels, jax.random.key(i))
            jax.block_until_ready(metrics["loss"])

        step(0)
        steppers[name] = step
    times = {name: [] for name in configs}
    _say(progress, f"[timing] {spec.timing_rounds} interleaved rounds of {len(configs)} steps")
    for r in range(spec.timing_rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            step(r + 1)
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    path.write_text(json.dumps({"rounds": spec.timing_rounds, "configs": keys, "step_seconds": medians}, indent=2))
    return medians


# ------------------------------------------------------------------------------------------------ statistics


def mean_ci(values) -> tuple[float, float, int]:
    """(mean, half-width of the two-sided 95% Student t interval, n); half-width NaN for fewer than 2 values."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(values[0]), math.nan, 1
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half), n


def _finished(rows, router, factor, combine_from="softmax"):
    return [r for r in rows if (r["router"], r["factor"], r["combine_from"], r["status"])
            == (router, factor, combine_from, "finished")]  # fmt: skip


def paired_difference(rows, side_a, side_b, factor, metric) -> list[float] | None:
    """Per seed: mean of ``metric`` over side A's configurations minus the mean over side B's.

    A side is a list of (router, combine_from). Seeds are shared by every configuration, so the difference is
    taken within each seed (a paired design) and only seeds where every configuration finished count. None if
    a configuration is not part of the study.
    """
    configs = list(side_a) + list(side_b)
    by_config = [{r["seed"]: r[metric] for r in _finished(rows, router, factor, combine)}
                 for router, combine in configs]  # fmt: skip
    if any(not values for values in by_config):
        return None
    seeds = sorted(set.intersection(*(set(v) for v in by_config)))
    a, b = by_config[: len(side_a)], by_config[len(side_a) :]
    return [float(np.mean([v[s] for v in a]) - np.mean([v[s] for v in b])) for s in seeds]


def verdict(diffs: list[float] | None) -> tuple[str, str]:
    """(our difference as text, what it says)."""
    if diffs is None:
        return "not measured", "not part of this study"
    mean, half, n = mean_ci(diffs)
    if n == 0:
        return "no finished seeds", "no data"
    if n == 1:
        return f"{100 * mean:+.2f} pts (1 seed)", "direction only: one seed gives no interval"
    text = f"{100 * mean:+.2f} ± {100 * half:.2f} pts (n={n})"
    if mean - half > 0:
        return text, "**supported**"
    if mean + half < 0:
        return text, "**contradicted**"
    return text, "not resolved: the 95% interval contains 0"


# ---------------------------------------------------------------------------------------------------- report


def _fmt(values, scale=100.0, digits=2, unit="") -> str:
    mean, half, n = mean_ci(values)
    if n == 0:
        return "-"
    def num(v):  # fixed digits, but never a bare 0.0 for a small positive figure
        return f"{v:.{digits}f}" if abs(v) >= 10 ** (1 - digits) or v == 0 else f"{v:.2g}"

    if n == 1:
        return f"{num(scale * mean)}{unit}"
    return f"{num(scale * mean)} ± {num(scale * half)}{unit}"


def _paper_cell(results, metric, arch, router, factor, field="accuracy") -> str:
    try:
        value = getattr(paper.lookup(results, metric, arch, router, factor), field)
    except KeyError:
        return "-"
    if math.isnan(value):
        return "n/r"
    return f"{100 * value:.2f}" if field == "accuracy" else f"{value:.2f}"


def _paper_difference(results, metric, arch, side_a, side_b, factor) -> float | None:
    def mean(side):
        values = [paper.lookup(results, metric, arch, r, factor).accuracy for r in side]
        return math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))

    diff = mean(side_a) - mean(side_b)
    return None if math.isnan(diff) else diff


def findings(rows: list[dict], spec: StudySpec) -> list[dict]:
    """Findings (i)-(iv) of the paper, each per capacity and metric, ours beside the paper's."""
    results = paper.load()
    out = []

    def add(key, claim, factor, metric, ours_a, ours_b, paper_a=None, paper_b=None, paper_metric=None, note=""):
        diffs = paired_difference(rows, ours_a, ours_b, factor, metric)
        ours, says = verdict(diffs)
        papers = {}
        for arch in paper.ARCHITECTURES:
            d = None
            if paper_a and paper_b:
                d = _paper_difference(results, paper_metric, arch, paper_a, paper_b, factor)
            papers[arch] = "n/r" if d is None else f"{100 * d:+.2f}"
        out.append({"key": key, "claim": claim, "factor": factor, "metric": metric, "ours": ours, "verdict": says,
                    "paper": papers, "note": note, "diffs": diffs})  # fmt: skip

    soft = [("soft_moe", "softmax")]
    for factor in spec.factors:
        for metric, paper_metric in (("test_accuracy", "jft_precision_at_1"), ("fewshot_accuracy", "imagenet_10shot")):
            add("i", "Expert Choice beats Token Choice (mean of the 3 EC routers - mean of the 2 TC routers)",
                factor, metric, [(r, "softmax") for r in EXPERT_CHOICE], [(r, "softmax") for r in TOKEN_CHOICE],
                EXPERT_CHOICE, TOKEN_CHOICE, paper_metric)  # fmt: skip
            best = _best_sparse(rows, factor, metric)
            add("ii", "Soft MoE beats the sparse routers (Soft MoE - the best sparse router of this study)",
                factor, metric, soft, [(best, "softmax")] if best else [("__none__", "softmax")],
                ("soft_moe",), (best,) if best else None, paper_metric,
                note=LABELS[best] if best else "")  # fmt: skip
            add("iii", "Sinkhorn Token Choice beats Softmax Token Choice", factor, metric,
                [("sinkhorn_token_choice", "softmax")], [("softmax_token_choice", "softmax")],
                ("sinkhorn_token_choice",), ("softmax_token_choice",), paper_metric)  # fmt: skip
        add("iv", "Softmax combine weights help Sinkhorn Token Choice (softmax combine - plan combine)", factor,
            "test_accuracy", [("sinkhorn_token_choice", "softmax")], [("sinkhorn_token_choice", "plan")],
            note=f"paper: about +{paper.FIGURE3_GAIN_PERCENT:.0f} pt on JFT-300M for B/32, k = 1 and 2 "
            "(sec. 3.4, Figure 3; no table)")  # fmt: skip
    return out


def _best_sparse(rows, factor, metric) -> str | None:
    """The sparse router with the highest mean: chosen on the same data, which favours the sparse side."""
    means = {r: mean_ci([x[metric] for x in _finished(rows, r, factor)])[0] for r in SPARSE}
    means = {r: m for r, m in means.items() if not math.isnan(m)}
    return max(means, key=means.get) if means else None


def write_report(rows, spec: StudySpec, studydir: Path, *, command: str, wall_seconds: float, trained: int) -> Path:
    results = paper.load()
    lines = [
        f"# Router study: `{spec.preset}` preset, {spec.steps} steps, seeds {', '.join(map(str, spec.seeds))}",
        "",
        f"Command: `{command}`  ",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node() or 'this machine'} "
        f"({platform.machine()}, {_devices()}). This invocation trained {trained} of {len(rows)} runs in "
        f"{wall_seconds / 60:.1f} min of wall time; the others were finished earlier and reused.  ",
        f"Overrides applied to every run: {', '.join(spec.overrides) or 'none'}. One row per run: "
        "[`results.csv`](results.csv).",
        "",
        "Our numbers: mean ± half-width of the 95% Student t interval over seeds (a lone value: one seed). "
        "Accuracies in %. Training time: steps x the median time of one training step of the configuration, "
        f"timed for every configuration in turn in one pass ({spec.timing_rounds} rounds, after compiling), so "
        "that changes of machine load touch all configurations alike; the runs' own throughput, taken minutes "
        "apart, is in the CSV (`train_seconds`). Paper: Appendix B (`train/paper_tables.csv`); n/r: not reported.",
        "",
    ]
    diverged = [r for r in rows if r["status"] == "diverged"]
    if diverged:
        lines += ["**Diverged runs** (excluded from every mean): " + ", ".join(r["name"] for r in diverged), ""]

    lines += ["## Upstream accuracy (the analogue of Tables 1-3)", "",
              "| Router | capacity | ours: test accuracy | ours: training time (s) | paper B/32 | paper B/16 | "
              "paper L/16 | paper B/32 TPUv3-days |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for factor in spec.factors:
        for router in spec.routers:
            got = _finished(rows, router, factor)
            cells = [_paper_cell(results, "jft_precision_at_1", a, router, factor) for a in paper.ARCHITECTURES]
            days = _paper_cell(results, "jft_precision_at_1", "B/32", router, factor, "tpu_v3_days")
            lines.append(
                f"| {LABELS[router]} | {_capacity(router, factor)} | {_fmt([r['test_accuracy'] for r in got])} | "
                f"{_fmt([r['timed_train_seconds'] for r in got][:1], 1, 1)} | {' | '.join(cells)} | {days} |"
            )
    lines += ["", "## 10-shot linear probe (the analogue of Tables 4, 6 and 8)", "",
              "| Router | capacity | ours: 10-shot accuracy | paper B/32 | paper B/16 | paper L/16 |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for factor in spec.factors:
        for router in spec.routers:
            got = _finished(rows, router, factor)
            cells = [_paper_cell(results, "imagenet_10shot", a, router, factor) for a in paper.ARCHITECTURES]
            lines.append(f"| {LABELS[router]} | {_capacity(router, factor)} | "
                         f"{_fmt([r['fewshot_accuracy'] for r in got])} | {' | '.join(cells)} |")  # fmt: skip
    if spec.ablation:
        lines += ["", "## Ablation: softmax combine in Sinkhorn Token Choice (Figure 3)", "",
                  "| k | with softmax combine | without (combine from the plan) | 10-shot with | 10-shot without |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for factor in spec.factors:
            with_, without = _finished(rows, "sinkhorn_token_choice", factor), _finished(
                rows, "sinkhorn_token_choice", factor, "plan")  # fmt: skip
            lines.append(
                f"| {factor} | {_fmt([r['test_accuracy'] for r in with_])} | "
                f"{_fmt([r['test_accuracy'] for r in without])} | {_fmt([r['fewshot_accuracy'] for r in with_])} | "
                f"{_fmt([r['fewshot_accuracy'] for r in without])} |"
            )

    lines += ["", "## The paper's findings, tested on our data", "",
              "A difference is taken within each seed (every configuration shares the seeds), then averaged; "
              "**supported** means its 95% interval lies above 0, **contradicted** below 0. The paper's column is "
              "the same difference computed from its tables (JFT-300M for upstream, ImageNet 10-shot for the "
              "probe); its runs are single runs, so they carry no interval.", ""]  # fmt: skip
    found = findings(rows, spec)
    for key, title in (("i", "(i) Expert Choice beats Token Choice in sparse MoEs"),
                       ("ii", "(ii) Soft MoE beats the sparse routers at the same capacity"),
                       ("iii", "(iii) Sinkhorn Token Choice beats Softmax Token Choice"),
                       ("iv", "(iv) Softmax combine weights help Sinkhorn routers (Figure 3)")):  # fmt: skip
        items = [f for f in found if f["key"] == key]
        lines += [f"### {title}", "", items[0]["claim"] + ".", ""]
        if key == "iv":
            lines += ["| capacity | metric | ours | verdict |", "|---|---|---|---|"]
            for f in items:
                lines.append(f"| {f['factor']} | {METRIC_LABELS[f['metric']]} | {f['ours']} | {f['verdict']} |")
            lines += ["", items[0]["note"] + "."]
        else:
            against = key == "ii"
            lines += ["| capacity | metric | " + ("against | " if against else "") + "ours | verdict | paper B/32 | "
                      "paper B/16 | paper L/16 |", "|---|---|---|---|---|---|---|" + ("---|" if against else "")]
            for f in items:
                p = f["paper"]
                lines.append(f"| {f['factor']} | {METRIC_LABELS[f['metric']]} | "
                             + (f"{f['note'] or '-'} | " if against else "")
                             + f"{f['ours']} | {f['verdict']} | {p['B/32']} | {p['B/16']} | {p['L/16']} |")
            if against:
                lines += ["", "Against: the sparse router with the best mean on this metric at this capacity in this "
                          "study. Choosing it on the same data favours the sparse side, so a supported verdict is "
                          "conservative; the paper's columns compare Soft MoE with that same router."]  # fmt: skip
        lines.append("")

    lines += ["## Expert usage (last logged training step, mean over MoE layers)", "",
              "| Router | capacity | combine | tokens dropped (%) | load CV | experts per token |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for factor in spec.factors:
        for router, combine in [(r, "softmax") for r in spec.routers] + (
            [("sinkhorn_token_choice", "plan")] if spec.ablation else []
        ):
            got = _finished(rows, router, factor, combine)
            lines.append(f"| {LABELS[router]} | {_capacity(router, factor)} | {combine} | "
                         f"{_fmt([r['dropped_fraction'] for r in got], 100, 1)} | "
                         f"{_fmt([r['load_cv'] for r in got], 1, 3)} | "
                         f"{_fmt([r['experts_per_token'] for r in got], 1, 2)} |")  # fmt: skip
    lines += ["", "## Plots", "", "Accuracy against training time (the analogue of Figures 1 and 2; marker size: "
              "capacity; bars: 95% intervals):", "", "![accuracy against training time](plots/accuracy_vs_time.png)"]
    if spec.ablation:
        lines += ["", "Test accuracy during training, with and without softmax combine (Figure 3; band: min-max "
                  "over seeds):", "", "![ablation](plots/ablation.png)"]  # fmt: skip
    lines += ["", "## Reading this", "",
              "The paper trains B/32 to L/16 on 305M JFT images for days of TPU time; this study trains a small "
              "ViT-MoE for minutes on a CPU. Whether its findings hold at this scale is the question the table "
              "answers, no more: a finding not resolved here is not refuted, and a finding supported here was "
              "tested on this preset only. More seeds narrow the intervals: rerun with `--seeds 0 1 2 3 4` "
              "in the same directory and only the new seeds train. Accuracies do not depend on the machine's "
              "load (a run's numbers are a function of its config); the runs' own throughput in the CSV does, "
              "which is why training time comes from the interleaved timing pass.", ""]  # fmt: skip
    path = studydir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _capacity(router: str, factor: int) -> str:
    return f"k={factor}" if router in TOKEN_CHOICE else f"c={factor}"


def _devices() -> str:
    import jax

    devices = jax.devices()
    return f"{len(devices)} {devices[0].platform.upper()} device{'s' if len(devices) > 1 else ''}"


# ----------------------------------------------------------------------------------------------------- plots


def plot(rows, spec: StudySpec, studydir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = studydir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, metric in zip(axes, ("test_accuracy", "fewshot_accuracy"), strict=True):
        for router in spec.routers:
            for factor in spec.factors:
                got = _finished(rows, router, factor)
                if not got:
                    continue
                y, yh, _ = mean_ci([r[metric] for r in got])
                x, xh, _ = mean_ci([r["timed_train_seconds"] for r in got][:1])
                ax.errorbar(
                    x, 100 * y, yerr=None if math.isnan(yh) else 100 * yh, xerr=None if math.isnan(xh) else xh,
                    marker=MARKERS[router], markersize=6 + 4 * (factor - 1), color=f"C{ROUTERS.index(router)}",
                    label=LABELS[router] if factor == spec.factors[0] else None, linestyle="none", capsize=2,
                )  # fmt: skip
        ax.set_xlabel("training time (s): steps x median step time, interleaved timing")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("upstream (cf. Figure 1)")
    axes[1].set_title("10-shot linear probe (cf. Figure 2)")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{spec.preset}, {spec.steps} steps, {len(spec.seeds)} seed(s); larger markers: k or c = 2")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=110)
    plt.close(fig)
    written.append(out / "accuracy_vs_time.png")

    if spec.ablation:
        fig, axes = plt.subplots(1, len(spec.factors), figsize=(5.5 * len(spec.factors), 4), squeeze=False)
        for ax, factor in zip(axes[0], spec.factors, strict=True):
            for combine, label in (("softmax", "with softmax combine"), ("plan", "without softmax combine")):
                curves = [_test_curve(Path(r["workdir"])) for r in _finished(rows, "sinkhorn_token_choice", factor,
                                                                             combine)]  # fmt: skip
                curves = [c for c in curves if c]
                if not curves:
                    continue
                steps = sorted(set.intersection(*(set(c) for c in curves)))
                values = np.array([[c[s] for s in steps] for c in curves]) * 100
                line = ax.plot(steps, values.mean(0), marker="o", markersize=3, label=label)[0]
                ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
            ax.set_title(f"Sinkhorn Token Choice, k = {factor}")
            ax.set_xlabel("training step")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "ablation.png", dpi=110)
        plt.close(fig)
        written.append(out / "ablation.png")
    return written


def _test_curve(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["test_accuracy"] for r in records if "test_accuracy" in r}


# ------------------------------------------------------------------------------------------------------- CLI


def run_study(spec: StudySpec, studydir, *, progress: bool = True, command: str = "") -> dict:
    """Run (or resume) the study and write ``results.csv``, ``report.md`` and the plots; return their paths."""
    studydir = Path(studydir)
    studydir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    before = sum((studydir / "runs" / r.name / "summary.json").exists() for r in plan_runs(spec))
    rows = execute(spec, studydir, progress=progress)
    step_seconds = time_steps(spec, studydir, progress=progress)
    for row in rows:
        seconds = step_seconds[row["configuration"]]
        row["step_seconds"], row["timed_train_seconds"] = seconds, seconds * row["steps"]
    wall = time.perf_counter() - start
    trained = sum(r["status"] == "finished" for r in rows) - before
    write_csv(rows, studydir / "results.csv")
    report = write_report(rows, spec, studydir, command=command or "train.study.run_study(...)",
                          wall_seconds=wall, trained=max(trained, 0))  # fmt: skip
    plots = plot(rows, spec, studydir)
    return {"csv": studydir / "results.csv", "report": report, "plots": plots, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = StudySpec()
    parser.add_argument("--preset", default=defaults.preset, help="default: synthetic")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="steps per run (default: 1000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds), help="default: 0 1 2")
    parser.add_argument("--routers", nargs="+", default=list(defaults.routers), help="default: all six")
    parser.add_argument("--factors", type=int, nargs="+", default=list(defaults.factors), help="k or c (default: 1 2)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the Figure 3 ablation runs")
    parser.add_argument("--timing-rounds", type=int, default=defaults.timing_rounds,
                        help="interleaved steps timed per configuration (default: 10)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--workdir", help="the study's directory (default: studies/<preset>, studies/quick)")
    parser.add_argument("--quick", action="store_true", help="check the pipeline: tiny preset, 2 routers, 1 seed")
    args = parser.parse_args(argv)
    if args.quick:
        spec = dataclasses.replace(quick_spec(), overrides=tuple(args.set))
    else:
        spec = StudySpec(
            preset=args.preset, steps=args.steps, seeds=tuple(args.seeds), routers=tuple(args.routers),
            factors=tuple(args.factors), ablation=not args.no_ablation, overrides=tuple(args.set),
            timing_rounds=args.timing_rounds,
        )  # fmt: skip
    try:
        spec.validate()
        for run in plan_runs(spec):
            run_config(spec, run)
    except ValueError as err:
        parser.error(str(err))
    studydir = Path(args.workdir or ("studies/quick" if args.quick else f"studies/{spec.preset}"))
    runs = plan_runs(spec)
    print(f"study in {studydir}: {len(runs)} runs ({len(spec.routers)} routers x {len(spec.factors)} capacities "
          f"x {len(spec.seeds)} seeds{' + ablation' if spec.ablation else ''})", file=sys.stderr)  # fmt: skip
    try:
        out = run_study(spec, studydir, command=" ".join(["python -m train.study", *(argv or sys.argv[1:])]))
    except (ConfigMismatchError, CorruptCheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"results: {out['csv']}\nreport:  {out['report']}\nplots:   {', '.join(map(str, out['plots']))}")
    diverged = [r["name"] for r in out["rows"] if r["status"] == "diverged"]
    if diverged:
        print(f"error: {len(diverged)} run(s) diverged: {', '.join(diverged)} (see diverged.txt in each)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
