"""``python -m train.study``: the paper's router comparison, rerun as a controlled, powered experiment.

    plan: routers x capacities x seeds, + controls (a dense ViT of the same per-token compute, a fixed random
          router at the same capacity) [+ the Figure 3 ablation with --full]
    pilot (--pilot): steps and learning rate chosen so that runs converge        -> STUDY/pilot.json, pilot.md
    runs: train_and_evaluate(config, STUDY/runs/NAME)  (resumable; a finished run is never repeated)
    statistics: pre-declared paired contrasts within seed, paired t tests, Holm  -> STUDY/report.md
    STUDY/results.csv   one row per run
    STUDY/plots/        contrasts.png, accuracy_vs_time.png, convergence.png, routing/<configuration>/*.png

A seed fixes a run's initialization, data order, router noise and probe draws, and every arm of the study
runs every seed: differences are taken within seed (a paired design). The contrasts are named in code before
any run (``contrasts``): the two controls (MoE minus dense, learned minus random routing) and the paper's
findings (i)-(iii) (and (iv) with the ablation). The report states what the design can resolve (the minimum
detectable difference) before what it found.

Default: the ``parts`` preset (classes composed of parts; 100 pre-training classes with 10,000 test images,
the 10-shot probe on 50 held-out classes with 5,000 test images, averaged over 5 shot draws), four routers at
capacity 1 (Softmax and Sinkhorn Token Choice, Softmax Expert Choice, Soft MoE), the two controls, 5 seeds: 30
runs.
``--full`` runs all six routers at both capacities with the Figure 3 ablation. ``--quick`` checks the pipeline
in about two minutes (the ``tiny`` preset, 5 steps, 2 seeds); its numbers mean nothing. Interrupt the study at
any time; the same command resumes it.
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

import equinox as eqx
import numpy as np
from scipy import stats

from optimized import ROUTERS

from . import paper
from .checkpoint import CorruptCheckpointError
from .config import Config, resolve
from .loop import ConfigMismatchError, NonFiniteLossError, _check_or_write_config, load_data, train_and_evaluate
from .preemption import EXIT_STATUS, Preempted

TOKEN_CHOICE = ("softmax_token_choice", "sinkhorn_token_choice")
EXPERT_CHOICE = ("softmax_expert_choice", "sinkhorn_expert_choice", "sparsity_constrained_expert_choice")
SPARSE = TOKEN_CHOICE + EXPERT_CHOICE
# Choice: the default study runs one Expert Choice router (Softmax), so that 6 arms x 5 seeds fit in 60 minutes
# on 2 CPU cores; --full (or --routers) adds Sinkhorn and sparsity-constrained Expert Choice.
DEFAULT_ROUTERS = ("softmax_token_choice", "sinkhorn_token_choice", "softmax_expert_choice", "soft_moe")
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
# Choice: the random-routing control is Softmax Token Choice with its router weights frozen at their random
# initialization, no noise and no auxiliary losses: each token goes to the expert a fixed random linear map of it
# prefers. It is compared with the learned Softmax Token Choice at the same k.
RANDOM_ROUTER = "softmax_token_choice"
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8  # for the minimum detectable difference
CONVERGENCE_POINTS = 0.5  # a run has converged when test accuracy gains less than this over its last 20% of steps
EVALUATIONS = 5  # test accuracy at 20, 40, 60, 80 and 100% of the steps
METRIC_LABELS = {"test_accuracy": "upstream test accuracy", "fewshot_accuracy": "10-shot accuracy"}
PAPER_METRICS = {"test_accuracy": "jft_precision_at_1", "fewshot_accuracy": "imagenet_10shot"}
CSV_FIELDS = (
    "name", "configuration", "control", "router", "factor", "combine_from", "seed", "steps", "learning_rate",
    "status", "test_accuracy", "test_accuracy_at_80", "convergence_gain", "fewshot_accuracy", "fewshot_draws",
    "train_seconds", "step_seconds", "timed_train_seconds", "images_per_second", "dropped_fraction", "load_cv",
    "experts_per_token", "plan_error", "workdir",
)  # fmt: skip


class PilotError(RuntimeError):
    """The pilot found no steps and learning rate within its budget that meet the convergence rule."""


@dataclasses.dataclass(frozen=True)
class StudySpec:
    preset: str = "parts"
    steps: int | None = None  # None: the pilot's choice (STUDY/pilot.json), else the preset's
    learning_rate: float | None = None  # likewise
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    timing_rounds: int = 10  # interleaved training steps timed per configuration (see time_steps)
    routers: tuple[str, ...] = DEFAULT_ROUTERS
    factors: tuple[int, ...] = (1,)
    ablation: bool = False
    controls: bool = True
    overrides: tuple[str, ...] = ()
    pictures: bool = True  # routing maps and per-class expert usage of every router configuration (first seed)

    def validate(self) -> None:
        for router in self.routers:
            if router not in ROUTERS:
                raise ValueError(f"--routers: unknown router {router!r}; valid routers: {', '.join(ROUTERS)}")
        if not self.routers:
            raise ValueError("--routers: at least one router is needed")
        if len(set(self.routers)) != len(self.routers):
            raise ValueError(f"--routers: {self.routers} names a router twice")
        for factor in self.factors:
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise ValueError(f"--factors: {factor!r} is not a positive integer (k or c)")
        if not self.factors or len(set(self.factors)) != len(self.factors):
            raise ValueError(f"--factors: {self.factors} must be one or more distinct positive integers")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds: {self.seeds} must be one or more distinct non-negative integers")
        if self.steps is not None and self.steps < EVALUATIONS:
            raise ValueError(f"--steps must be >= {EVALUATIONS} (test accuracy is taken {EVALUATIONS} times), "
                             f"got {self.steps}")  # fmt: skip
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"--learning-rate must be a positive finite number, got {self.learning_rate}")
        if self.timing_rounds < 1:
            raise ValueError(f"--timing-rounds must be >= 1, got {self.timing_rounds}")
        if self.ablation and "sinkhorn_token_choice" not in self.routers:
            raise ValueError(
                "the Figure 3 ablation compares against Sinkhorn Token Choice: add sinkhorn_token_choice to "
                "--routers, or leave out --ablation"
            )
        if self.controls and RANDOM_ROUTER not in self.routers:
            raise ValueError(
                f"the random-routing control is compared with the learned {RANDOM_ROUTER}: add it to --routers, "
                "or pass --no-controls"
            )


def full_spec(**changes) -> StudySpec:
    """The paper's whole grid: six routers x k, c = 1, 2, the Figure 3 ablation, the controls."""
    return dataclasses.replace(StudySpec(routers=ROUTERS, factors=(1, 2), ablation=True), **changes)


def quick_spec() -> StudySpec:
    """The pipeline check used by the tests: seconds per run, numbers without meaning."""
    return StudySpec(preset="tiny", steps=5, seeds=(0, 1), routers=("softmax_token_choice", "soft_moe"),
                     factors=(1,), timing_rounds=2)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    router: str
    factor: int
    seed: int
    combine_from: str = "softmax"  # "plan": the "without softmax combine" arm of Figure 3
    control: str = ""  # "dense" or "random"; "" for a router of the study

    @property
    def name(self) -> str:
        return f"{self.configuration}-s{self.seed}"

    @property
    def configuration(self) -> str:
        """The run without its seed: what the tables average over."""
        if self.control == "dense":
            return "dense"
        if self.control == "random":
            return f"random-c{self.factor}"
        plan = "-plan" if self.combine_from == "plan" else ""
        return f"{self.router}-c{self.factor}{plan}"

    def describe(self) -> str:
        if self.control == "dense":
            return f"dense ViT (control) seed {self.seed}"
        capacity = "k" if self.router in TOKEN_CHOICE else "c"
        if self.control == "random":
            return f"fixed random router (control) k={self.factor} seed {self.seed}"
        combine = ", combine from the plan (Figure 3 ablation)" if self.combine_from == "plan" else ""
        return f"{LABELS[self.router]} {capacity}={self.factor} seed {self.seed}{combine}"


def configuration_label(configuration: str) -> str:
    """A configuration name as the report shows it."""
    if configuration == "dense":
        return "Dense ViT (control)"
    name, _, rest = configuration.partition("-c")
    factor, _, plan = rest.partition("-")
    if name == "random":
        return f"Fixed random router, k={factor} (control)"
    capacity = "k" if name in TOKEN_CHOICE else "c"
    return f"{LABELS[name]}, {capacity}={factor}" + (", plan combine" if plan else "")


def plan_runs(spec: StudySpec) -> list[Run]:
    """Seeds outermost: an interrupted study already holds whole replicates of the design."""
    runs = []
    for seed in spec.seeds:
        for factor in spec.factors:
            runs += [Run(router, factor, seed) for router in spec.routers]
            if spec.ablation:
                runs.append(Run("sinkhorn_token_choice", factor, seed, combine_from="plan"))
            if spec.controls:
                runs.append(Run(RANDOM_ROUTER, factor, seed, control="random"))
        if spec.controls:
            runs.append(Run(RANDOM_ROUTER, 1, seed, control="dense"))
    return runs


def schedule(spec: StudySpec, studydir: Path | None) -> tuple[int, float, str]:
    """(steps, learning rate, where they come from): the study's options, else a converged pilot, else the preset."""
    path = Path(studydir) / "pilot.json" if studydir is not None else None
    pilot = _read_pilot(studydir) if studydir is not None else None
    preset = resolve(spec.preset)
    steps = spec.steps or (pilot["steps"] if pilot else preset.steps)
    lr = spec.learning_rate or (pilot["learning_rate"] if pilot else preset.learning_rate)
    if spec.steps is not None or spec.learning_rate is not None:
        source = "the study's options" + (" and the pilot" if pilot and (spec.steps is None or spec.learning_rate
                                                                         is None) else "")  # fmt: skip
    elif pilot:
        source = "the pilot (pilot.json)"
    elif path is not None and path.exists():
        source = (f"the {spec.preset} preset: the pilot found no setting within its budget that meets the "
                  "convergence rule (pilot.md)")  # fmt: skip
    else:
        source = f"the {spec.preset} preset (no pilot.json in the study directory)"
    return steps, lr, source


def _read_pilot(studydir: Path) -> dict | None:
    path = Path(studydir) / "pilot.json"
    if not path.exists():
        return None
    pilot = json.loads(path.read_text())
    return pilot if pilot.get("status") == "converged" else None


def run_config(spec: StudySpec, run: Run, steps: int, learning_rate: float) -> Config:
    # Choice: test accuracy is evaluated EVALUATIONS times per run (20%, ..., 100% of the steps): the curves, and
    # the convergence check on the last 20%.
    overrides = (f"eval_every={max(1, steps // EVALUATIONS)}", f"learning_rate={learning_rate!r}", *spec.overrides)
    config = resolve(spec.preset, router=run.router, factor=run.factor, seed=run.seed, steps=steps,
                     overrides=overrides)  # fmt: skip
    model = config.model.replace(combine_from=run.combine_from)
    if run.control == "dense":
        model = model.replace(dense=True)
    elif run.control == "random":
        model = model.replace(freeze_router=True, noise_std=0.0, importance_weight=0.0, load_weight=0.0)
    return config.replace(model=model)


# --------------------------------------------------------------------------------------------------- running


def execute(spec: StudySpec, studydir, *, progress: bool = True) -> list[dict]:
    """Train every run of ``spec`` not finished yet in ``studydir``; return one result row per run."""
    spec.validate()
    studydir = Path(studydir)
    steps, lr, _ = schedule(spec, studydir)
    runs = plan_runs(spec)
    configs = {run: run_config(spec, run, steps, lr) for run in runs}  # every bad option fails here, before training
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


def test_curve(workdir: Path) -> dict[int, float]:
    """Test accuracy by step, from a run's ``metrics.jsonl``."""
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["test_accuracy"] for r in records if "test_accuracy" in r}


def convergence_gain(curve: dict[int, float], steps: int) -> tuple[float, float]:
    """(accuracy at the last evaluation at or before 80% of the steps, final accuracy minus it)."""
    before = [s for s in curve if s <= 0.8 * steps]
    if not before or steps not in curve:
        return math.nan, math.nan
    at_80 = curve[max(before)]
    return at_80, curve[steps] - at_80


def result_row(run: Run, config: Config, workdir: Path) -> dict:
    row = {"name": run.name, "configuration": run.configuration, "control": run.control, "router": run.router,
           "factor": run.factor, "combine_from": run.combine_from, "seed": run.seed, "steps": config.steps,
           "learning_rate": config.learning_rate, "workdir": str(workdir)}  # fmt: skip
    if (workdir / "diverged.txt").exists():
        return row | {"status": "diverged", **{k: math.nan for k in CSV_FIELDS if k not in row and k != "status"}}
    summary = json.loads((workdir / "summary.json").read_text())
    layers = summary["moe_layers"]
    ips = summary["images_per_second"]
    at_80, gain = convergence_gain(test_curve(workdir), config.steps)

    def layer_mean(name):
        return float(np.mean([layer[name] for layer in layers])) if layers else math.nan

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]
    plan_errors = next((r["moe/plan_error"] for r in reversed(records) if r.get("moe/plan_error")), None)
    return row | {
        "status": "finished",
        "test_accuracy": summary["test_accuracy"],
        "test_accuracy_at_80": at_80,
        "convergence_gain": gain,
        "fewshot_accuracy": summary["fewshot_accuracy"],
        "fewshot_draws": ";".join(f"{a:.4f}" for a in summary.get("fewshot_draw_accuracies") or []),
        # The runs' own throughput: steps x batch / steady-state images per second (compilation, evaluation and
        # interruptions excluded). The tables use the interleaved timing pass instead (time_steps).
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


# ----------------------------------------------------------------------------------------------------- pilot

PILOT_ARMS = (Run("softmax_token_choice", 1, 100), Run(RANDOM_ROUTER, 1, 100, control="dense"))
PILOT_LEARNING_RATES = (1e-3, 2e-3, 4e-3)
PILOT_STEPS = (1500, 2000)  # 2000 steps is about the most the default study's 60 minutes allow on 2 CPU cores


def run_pilot(spec: StudySpec, studydir, *, steps_candidates=PILOT_STEPS, learning_rates=PILOT_LEARNING_RATES,
              arms=PILOT_ARMS, rule_points: float = CONVERGENCE_POINTS, progress: bool = True) -> dict:  # fmt: skip
    """Choose the study's steps and learning rate: the fewest candidate steps at which the best learning rate's
    runs all converge (test accuracy gains less than ``rule_points`` over their last 20% of steps).

    For each candidate number of steps (ascending), every learning rate trains every pilot arm (seed 100, a seed
    no study uses by default); the learning rate with the best mean final test accuracy over the arms is taken,
    and if all of its arms converged, the search stops. Writes ``pilot.json`` (read by later studies in the same
    directory) and ``pilot.md``; raises PilotError, naming every run that did not converge, when no candidate
    meets the rule.
    """
    studydir = Path(studydir)
    studydir.mkdir(parents=True, exist_ok=True)
    tried = []
    dataset = None
    chosen = None
    total = len(steps_candidates) * len(learning_rates) * len(arms)
    count = 0
    for steps in steps_candidates:
        by_lr = {}
        for lr in learning_rates:
            for arm in arms:
                count += 1
                config = run_config(spec, arm, steps, lr)
                workdir = studydir / "pilot" / f"steps{steps}-lr{lr:g}-{arm.configuration}"
                if not (workdir / "summary.json").exists():
                    _say(progress, f"[pilot {count}/{total} at most] {arm.describe()}, {steps} steps, lr {lr:g}")
                    dataset = load_data(config) if dataset is None else dataset
                    try:
                        train_and_evaluate(config, workdir, progress=progress, dataset=dataset)
                    except NonFiniteLossError as err:
                        tried.append({"steps": steps, "learning_rate": lr, "arm": arm.configuration,
                                      "test_accuracy": math.nan, "gain": math.nan, "diverged": str(err)})  # fmt: skip
                        by_lr.setdefault(lr, []).append(tried[-1])
                        continue
                final = json.loads((workdir / "summary.json").read_text())["test_accuracy"]
                _, gain = convergence_gain(test_curve(workdir), steps)
                tried.append({"steps": steps, "learning_rate": lr, "arm": arm.configuration,
                              "test_accuracy": final, "gain": gain})  # fmt: skip
                by_lr.setdefault(lr, []).append(tried[-1])
        means = {lr: np.mean([r["test_accuracy"] for r in results]) for lr, results in by_lr.items()}
        means = {lr: m for lr, m in means.items() if not math.isnan(m)}
        if not means:
            continue
        best = max(means, key=means.get)
        if all(r["gain"] < rule_points / 100 for r in by_lr[best]):
            chosen = (steps, best)
            break
    result = {"status": "converged" if chosen else "not converged", "rule": f"test accuracy gains less than "
              f"{rule_points} points over the last 20% of steps", "preset": spec.preset,
              "overrides": list(spec.overrides), "arms": [a.configuration for a in arms],
              "steps": chosen[0] if chosen else None, "learning_rate": chosen[1] if chosen else None,
              "runs": tried}  # fmt: skip
    (studydir / "pilot.json").write_text(json.dumps(result, indent=2))
    _write_pilot_report(result, studydir)
    if not chosen:
        late = [f"{r['arm']} ({r['steps']} steps, lr {r['learning_rate']:g}: "
                + (r["diverged"] if "diverged" in r else f"+{100 * r['gain']:.2f} pts") + ")"
                for r in tried if "diverged" in r or not r["gain"] < rule_points / 100]  # fmt: skip
        raise PilotError(
            f"the pilot found no steps in {list(steps_candidates)} and learning rate in {list(learning_rates)} at "
            f"which every pilot run gains less than {rule_points} points over its last 20% of steps; not "
            f"converged or diverged: {'; '.join(late)}. See {studydir / 'pilot.md'}"
        )
    return result


def _write_pilot_report(result: dict, studydir: Path) -> None:
    lines = [f"# Pilot: `{result['preset']}` preset", "",
             f"Rule: {result['rule']}. Arms: {', '.join(result['arms'])} (seed 100). "
             f"Outcome: **{result['status']}**" + (f", {result['steps']} steps at learning rate "
                                                   f"{result['learning_rate']:g}." if result["steps"] else "."),
             "", "| steps | learning rate | arm | final test accuracy | gain over the last 20% of steps |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in result["runs"]:
        gain = r.get("diverged", "diverged") if math.isnan(r["gain"]) else f"{100 * r['gain']:+.2f} pts"
        lines.append(f"| {r['steps']} | {r['learning_rate']:g} | {r['arm']} | {100 * r['test_accuracy']:.2f} | "
                     f"{gain} |")  # fmt: skip
    (studydir / "pilot.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------- timing


def time_steps(spec: StudySpec, studydir: Path, *, progress: bool = True) -> dict[str, float]:
    """Median seconds per training step of every configuration of the study, timed in one interleaved pass.

    Choice: the tables and plots take training time from this pass (steps x median step time), not from the
    runs' own throughput. Runs happen minutes apart on a machine whose load changes; here every configuration
    is compiled first, then one step of each is timed in turn, ``spec.timing_rounds`` times, so that a change
    of load touches them all alike. The runs' own figure is kept in the CSV (``train_seconds``). Cached in
    ``step_times.json``, keyed by each configuration's full config.
    """
    import jax

    from optimized import ViTMoE

    from .loop import make_optimizer, make_step

    steps, lr, _ = schedule(spec, studydir)
    configs = {}
    for run in plan_runs(spec):
        configs.setdefault(run.configuration, run_config(spec, run, steps, lr))
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
            state[0], state[1], metrics = step_fn((images, labels, jax.random.key(i)), state[0], state[1])
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


def _finished(rows, configuration):
    return [r for r in rows if r["configuration"] == configuration and r["status"] == "finished"]


def paired_difference(rows, side_a, side_b, metric) -> list[float] | None:
    """Per seed: mean of ``metric`` over side A's configurations minus the mean over side B's.

    A side is a list of configuration names (``Run.configuration``). Every configuration runs every seed, so the
    difference is taken within each seed (a paired design); only seeds where every configuration finished count.
    None if a configuration is not part of the study.
    """
    by_config = [{r["seed"]: r[metric] for r in _finished(rows, c)} for c in (*side_a, *side_b)]
    if not side_a or not side_b or any(not values for values in by_config):
        return None
    seeds = sorted(set.intersection(*(set(v) for v in by_config)))
    a, b = by_config[: len(side_a)], by_config[len(side_a) :]
    return [float(np.mean([v[s] for v in a]) - np.mean([v[s] for v in b])) for s in seeds]


def paired_test(diffs: list[float]) -> float:
    """Two-sided p-value of the paired t test (``scipy.stats.ttest_1samp`` of the within-seed differences).

    Choice: the paired t test rather than the exact sign-flip test: with n seeds the sign-flip test cannot give
    a p-value below 2 / 2^n (0.0625 for 5 seeds), so it could never reject at 5%, let alone after Holm.
    Identical differences (zero spread) give p = 0 if they are not 0, else 1.
    """
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.ptp(d) == 0:
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are left out of the family and stay NaN).

    Sorted ascending, the i-th smallest of m (i from 0) is multiplied by m - i, running maxima keep the order,
    capped at 1: reject every hypothesis whose adjusted p-value is below alpha, with the family-wise error at
    most alpha.

    >>> holm([0.01, 0.04, 0.03])  # 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; max(0.04 x 1, 0.06) = 0.06
    [0.03, 0.06, 0.06]
    """
    index = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(index)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(index, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_difference(sd: float, n: int, m: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean paired difference this design detects with probability ``power``.

    ``(t_{1 - alpha / (2 m), n - 1} + t_{power, n - 1}) * sd / sqrt(n)``: a two-sided paired t test over n seeds,
    at the strictest level Holm applies to a family of m contrasts (alpha / m), with ``sd`` the standard
    deviation of the within-seed differences.
    """
    if n < 2 or math.isnan(sd):
        return math.nan
    return float((stats.t.ppf(1 - alpha / (2 * m), n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A pre-declared paired contrast: mean over ``a`` minus mean over ``b`` (configuration names), per seed."""

    key: str  # "moe-dense", "learned-random", "i", "ii", "iii", "iv"
    claim: str
    factor: int
    a: tuple[str, ...]
    b: tuple[str, ...]
    paper_a: tuple[str, ...] = ()  # routers whose paper numbers give the same difference (empty: none)
    paper_b: tuple[str, ...] = ()


def contrasts(spec: StudySpec) -> list[Contrast]:
    """The study's contrasts, fixed by its design before any run: the controls, then the paper's findings."""
    out = []
    for factor in spec.factors:
        routers = [f"{r}-c{factor}" for r in spec.routers]
        if spec.controls:
            out.append(Contrast("moe-dense", "MoE beats a dense ViT of the same per-token compute (mean of the "
                                "study's routers - dense)", factor, tuple(routers), ("dense",)))  # fmt: skip
            out.append(Contrast("learned-random", f"a learned router beats a fixed random one ({LABELS[RANDOM_ROUTER]}"
                                " - the same router frozen at its random initialization)", factor,
                                (f"{RANDOM_ROUTER}-c{factor}",), (f"random-c{factor}",)))  # fmt: skip
        ec = [r for r in spec.routers if r in EXPERT_CHOICE]
        tc = [r for r in spec.routers if r in TOKEN_CHOICE]
        sparse = [r for r in spec.routers if r in SPARSE]
        if ec and tc:
            out.append(Contrast("i", f"(i) Expert Choice beats Token Choice (mean of the {len(ec)} EC routers - "
                                f"mean of the {len(tc)} TC routers)", factor, tuple(f"{r}-c{factor}" for r in ec),
                                tuple(f"{r}-c{factor}" for r in tc), tuple(ec), tuple(tc)))  # fmt: skip
        if "soft_moe" in spec.routers and sparse:
            out.append(Contrast("ii", f"(ii) Soft MoE beats the sparse routers (Soft MoE - mean of the {len(sparse)}"
                                " sparse routers)", factor, (f"soft_moe-c{factor}",),
                                tuple(f"{r}-c{factor}" for r in sparse), ("soft_moe",), tuple(sparse)))  # fmt: skip
        if set(TOKEN_CHOICE) <= set(spec.routers):
            out.append(Contrast("iii", "(iii) Sinkhorn Token Choice beats Softmax Token Choice", factor,
                                (f"sinkhorn_token_choice-c{factor}",), (f"softmax_token_choice-c{factor}",),
                                ("sinkhorn_token_choice",), ("softmax_token_choice",)))  # fmt: skip
        if spec.ablation:
            out.append(Contrast("iv", "(iv) softmax combine weights help Sinkhorn Token Choice (softmax combine - "
                                "plan combine)", factor, (f"sinkhorn_token_choice-c{factor}",),
                                (f"sinkhorn_token_choice-c{factor}-plan",)))  # fmt: skip
    return out


def analyse(rows: list[dict], spec: StudySpec, metric: str) -> dict:
    """Every contrast on ``metric``: differences, interval, p-value, Holm-adjusted p-value (the family is every
    contrast of this metric), verdict; with the family's minimum detectable difference."""
    results = paper.load()
    found = []
    for c in contrasts(spec):
        diffs = paired_difference(rows, c.a, c.b, metric)
        mean, half, n = mean_ci(diffs or [])
        papers = {}
        for arch in paper.ARCHITECTURES:
            d = _paper_difference(results, PAPER_METRICS[metric], arch, c.paper_a, c.paper_b, c.factor)
            papers[arch] = "n/r" if d is None else f"{100 * d:+.2f}"
        found.append({"contrast": c, "diffs": diffs, "mean": mean, "half": half, "n": n,
                      "p": paired_test(diffs) if diffs else math.nan, "paper": papers})  # fmt: skip
    for f, adjusted in zip(found, holm([f["p"] for f in found]), strict=True):
        f["p_holm"] = adjusted
        f["verdict"] = _verdict(f["mean"], adjusted, f["n"])
    m = sum(not math.isnan(f["p"]) for f in found)
    variances = [np.var(f["diffs"], ddof=1) for f in found if f["diffs"] and len(f["diffs"]) > 1]
    sd = math.sqrt(float(np.mean(variances))) if variances else math.nan
    n = min((f["n"] for f in found if f["n"]), default=0)
    return {"metric": metric, "contrasts": found, "m": m, "n": n, "sd": sd,
            "mdd": minimum_detectable_difference(sd, n, max(m, 1)),
            "mdd_single": minimum_detectable_difference(sd, n, 1)}  # fmt: skip


def _verdict(mean: float, p_holm: float, n: int) -> str:
    if n < 2:
        return "no interval: fewer than 2 seeds"
    if p_holm < ALPHA:
        return "**supported**" if mean > 0 else "**contradicted**"
    return "not resolved"


def _paper_difference(results, metric, arch, side_a, side_b, factor) -> float | None:
    if not side_a or not side_b:
        return None

    def mean(side):
        try:
            values = [paper.lookup(results, metric, arch, r, factor).accuracy for r in side]
        except KeyError:
            return math.nan
        return math.nan if any(math.isnan(v) for v in values) else float(np.mean(values))

    diff = mean(side_a) - mean(side_b)
    return None if math.isnan(diff) else diff


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


# ---------------------------------------------------------------------------------------------------- report


def configurations(spec: StudySpec) -> list[str]:
    """Every configuration of the study, in table order."""
    seen = []
    for run in plan_runs(dataclasses.replace(spec, seeds=spec.seeds[:1])):
        if run.configuration not in seen:
            seen.append(run.configuration)
    return seen


def write_report(rows, spec: StudySpec, studydir: Path, *, command: str, wall_seconds: float, trained: int,
                 diagnosis: list[dict] | None = None, pictures: dict | None = None) -> Path:  # fmt: skip
    results = paper.load()
    steps, lr, source = schedule(spec, studydir)
    config = run_config(spec, plan_runs(spec)[0], steps, lr)
    analyses = {metric: analyse(rows, spec, metric) for metric in METRIC_LABELS}
    sizes = _sizes(rows)
    n_seeds = len(spec.seeds)
    lines = [
        f"# Router study: `{spec.preset}` preset, {steps} steps, seeds {', '.join(map(str, spec.seeds))}", "",
        f"Command: `{command}`  ",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node() or 'this machine'} "
        f"({platform.machine()}, {_devices()}). This invocation trained {trained} of {len(rows)} runs in "
        f"{wall_seconds / 60:.1f} min of wall time (the others were finished earlier and reused).  ",
        f"Overrides applied to every run: {', '.join(spec.overrides) or 'none'}. One row per run: "
        "[`results.csv`](results.csv).", "",
        "## Design (fixed before the runs)", "",
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
        "- **Tests**: a two-sided paired t test per contrast (`scipy.stats.ttest_1samp` on the differences), "
        "Holm's correction across the contrasts of each metric (upstream, 10-shot: two families). "
        "**supported** / **contradicted**: Holm-adjusted p < 0.05 with the difference above / below 0; otherwise "
        "**not resolved**. Intervals: 95% Student t over seeds, not adjusted.",
        "", "### What this design can resolve", "",
        "Minimum detectable difference (80% power, two-sided paired t over the seeds, at Holm's strictest level "
        "0.05 / m), from the standard deviation of the within-seed differences observed in this study (pooled over "
        "the contrasts of the metric):", "",
        "| metric | seeds | contrasts m | sd of a within-seed difference | detectable (Holm, strictest) | "
        "detectable (one test at 0.05) |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for metric, a in analyses.items():
        lines.append(f"| {METRIC_LABELS[metric]} | {a['n']} | {a['m']} | {_pts(a['sd'])} | **{_pts(a['mdd'])}** | "
                     f"{_pts(a['mdd_single'])} |")  # fmt: skip
    late = [c for c in configurations(spec) if any(not r["convergence_gain"] < CONVERGENCE_POINTS / 100
                                                   for r in _finished(rows, c))]  # fmt: skip
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
    control_rows = [f for f in analyses["test_accuracy"]["contrasts"] if f["contrast"].key in ("moe-dense",
                                                                                             "learned-random")]
    if not control_rows:
        lines += ["This study ran without controls (`--no-controls`): nothing here shows that routing matters on "
                  "this task, so the findings below cannot be read as a ranking of routers.", ""]  # fmt: skip
    else:
        lines += _contrast_table(control_rows, analyses["fewshot_accuracy"], paper_columns=False)
        failing = [f["contrast"].claim.split(" (")[0] for f in control_rows if "supported" not in f["verdict"]]
        if failing:
            lines += ["", f"**This task cannot rank routers at this design's resolution**: not shown on upstream "
                      f"accuracy: {'; '.join(failing)}. Where MoE does not beat a dense model of the same per-token "
                      "compute, or learned routing does not beat a fixed random one, differences between routers "
                      "measure something other than routing quality; read the findings below as descriptive.", ""]
        else:
            lines += ["", "Both controls are clearly positive on upstream accuracy: on this task, experts and "
                      "learned routing matter, so differences between routers are differences in routing.", ""]

    lines += ["## The paper's findings, as pre-declared contrasts", "",
              "Ours: mean within-seed difference ± 95% interval, in points. The paper's columns: the same "
              "difference computed from its tables (JFT-300M precision@1 upstream, ImageNet 10-shot), single "
              "runs without intervals.", ""]  # fmt: skip
    finding_rows = [f for f in analyses["test_accuracy"]["contrasts"] if f["contrast"].key in ("i", "ii", "iii",
                                                                                               "iv")]
    lines += _contrast_table(finding_rows, analyses["fewshot_accuracy"], paper_columns=True)
    lines += ["", "![contrasts](plots/contrasts.png)", ""]

    lines += ["## Accuracy per configuration (the analogue of Tables 1-8)", "",
              "Mean ± 95% interval over seeds, in %. Training time: steps x the median time of one training step of "
              f"the configuration, timed for every configuration in turn in one pass ({spec.timing_rounds} rounds, "
              "after compiling), so that changes of machine load touch all configurations alike. Paper: Appendix B "
              "(B/32; n/r: not reported).", "",
              "| Configuration | upstream test accuracy | 10-shot accuracy | training time (s) | paper B/32 upstream | "
              "paper B/32 10-shot |", "|---|---|---|---|---|---|"]  # fmt: skip
    for c in configurations(spec):
        got = _finished(rows, c)
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
        gains = [r["convergence_gain"] for r in _finished(rows, c)]
        gains = [g for g in gains if not math.isnan(g)]
        ok = "yes" if gains and max(gains) < CONVERGENCE_POINTS / 100 else ("no" if gains else "-")
        lines.append(f"| {configuration_label(c)} | {_fmt(gains)} | {_pts(max(gains) if gains else math.nan)} | "
                     f"{ok} |")  # fmt: skip
    lines += ["", "![test accuracy during training](plots/convergence.png)", ""]

    lines += ["## Expert usage (last logged training step, mean over MoE layers)", "",
              "| Configuration | tokens dropped (%) | load CV | experts per token | Sinkhorn plan error |",
              "|---|---|---|---|---|"]  # fmt: skip
    for c in configurations(spec):
        got = _finished(rows, c)
        if not got or got[0]["control"] == "dense":
            continue
        lines.append(f"| {configuration_label(c)} | {_fmt([r['dropped_fraction'] for r in got], 100, 1)} | "
                     f"{_fmt([r['load_cv'] for r in got], 1, 3)} | {_fmt([r['experts_per_token'] for r in got], 1, 2)}"
                     f" | {_fmt([r['plan_error'] for r in got], 1, 3)} |")  # fmt: skip
    if diagnosis:
        lines += ["", "### Why Sinkhorn Token Choice drops more tokens", "", *_diagnosis_text(diagnosis)]
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
    head = "| contrast | capacity | metric | ours (pts) | seeds | p | Holm p | verdict |"
    rule = "|---|---|---|---|---|---|---|---|"
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
            line = (f"| {c.claim} | {c.factor} | {METRIC_LABELS[metric]} | {ours} | {g['n']} | {_p(g['p'])} | "
                    f"{_p(g['p_holm'])} | {g['verdict']} |")  # fmt: skip
            if paper_columns:
                line += " " + " | ".join(g["paper"][a] for a in paper.ARCHITECTURES) + " |"
            lines.append(line)
    return lines


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


def _sizes(rows) -> dict:
    for r in rows:
        if r["status"] == "finished":
            summary = json.loads((Path(r["workdir"]) / "summary.json").read_text())
            return {"test": summary.get("num_test", 0), "fewshot": summary.get("fewshot_num_test", 0)}
    return {"test": 0, "fewshot": 0}


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

    # The contrasts with their intervals: what the study found, in one picture.
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.9 + 0.45 * len(contrasts(spec))), sharey=True)
    for ax, metric in zip(axes, METRIC_LABELS, strict=True):
        a = analyse(rows, spec, metric)
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
            got = _finished(rows, c)
            if not got:
                continue
            y, yh, _ = mean_ci([r[metric] for r in got])
            x = got[0]["timed_train_seconds"]
            r0 = got[0]
            if r0["control"]:
                marker, color, label = ("D", "k", "dense (control)") if r0["control"] == "dense" else (
                    "v", "0.5", "fixed random router (control)")  # fmt: skip
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
        curves = [test_curve(Path(r["workdir"])) for r in _finished(rows, c)]
        curves = [cv for cv in curves if cv]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(cv) for cv in curves)))
        values = np.array([[cv[s] for s in steps] for cv in curves]) * 100
        line = ax.plot(steps, values.mean(0), marker="o", markersize=3, label=configuration_label(c),
                       color=f"C{i % 10}", linestyle="--" if "plan" in c or c == "dense" or "random" in c else "-")[0]
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


# ------------------------------------------------------------------------------------------- what routers do


def pictures(rows, spec: StudySpec, studydir: Path, *, progress: bool = True) -> dict[str, list[Path]]:
    """Routing maps and per-class expert usage of every router configuration, from its first seed's run."""
    from .visualize import visualize_run

    out = {}
    dataset = None
    for c in configurations(spec):
        got = [r for r in _finished(rows, c) if r["seed"] == spec.seeds[0]]
        if not got or got[0]["control"] == "dense":
            continue
        if dataset is None:
            dataset = load_data(Config.from_dict(json.loads((Path(got[0]["workdir"]) / "config.json").read_text())))
        target = studydir / "plots" / "routing" / c
        _say(progress, f"[pictures] {configuration_label(c)}")
        out[c] = visualize_run(Path(got[0]["workdir"]), out=target, progress=False, dataset=dataset)
    return out


def sinkhorn_diagnosis(rows, spec: StudySpec, *, iterations=(20, 100, 1000), images: int = 2048) -> list[dict]:
    """Token Choice balance at inference on test images, for the trained Token Choice routers (first seed) with
    the Sinkhorn iterations they trained with and more: dropped tokens, load CV and the plan's marginal error.

    If more iterations remove Sinkhorn Token Choice's extra dropping, its plan had not converged; if they do not,
    a balanced plan still gives unbalanced top-k choices per token (its rows are flat: the router's logits are
    small next to the entropic regularization).
    """
    from .loop import evaluation_order, load_trained

    found = []
    dataset = None
    for factor in spec.factors:
        for router in TOKEN_CHOICE:
            got = [r for r in _finished(rows, f"{router}-c{factor}") if r["seed"] == spec.seeds[0]]
            if not got:
                continue
            workdir = Path(got[0]["workdir"])
            config = Config.from_dict(json.loads((workdir / "config.json").read_text()))
            dataset = load_data(config) if dataset is None else dataset
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


def _diagnosis_text(diagnosis: list[dict]) -> list[str]:
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
    trained = sum(r["status"] == "finished" for r in rows) - before
    write_csv(rows, studydir / "results.csv")
    diagnosis = sinkhorn_diagnosis(rows, spec) if "sinkhorn_token_choice" in spec.routers else None
    pics = pictures(rows, spec, studydir, progress=progress) if spec.pictures else None
    plots = plot(rows, spec, studydir)
    wall = time.perf_counter() - start
    report = write_report(rows, spec, studydir, command=command or "train.study.run_study(...)",
                          wall_seconds=wall, trained=max(trained, 0), diagnosis=diagnosis,
                          pictures=pics)  # fmt: skip
    return {"csv": studydir / "results.csv", "report": report, "plots": plots, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = StudySpec()
    parser.add_argument("--preset", default=defaults.preset, help="default: parts")
    parser.add_argument("--steps", type=int, help="steps per run (default: the pilot's choice, else the preset's)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: the pilot's choice)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 3 4")
    parser.add_argument("--routers", nargs="+", help="default: softmax_token_choice sinkhorn_token_choice "
                        "softmax_expert_choice soft_moe")  # fmt: skip
    parser.add_argument("--factors", type=int, nargs="+", help="k or c (default: 1; --full: 1 2)")
    parser.add_argument("--full", action="store_true",
                        help="the paper's whole grid: six routers, k/c = 1 and 2, the Figure 3 ablation")
    parser.add_argument("--ablation", action="store_true", help="add the Figure 3 ablation (implied by --full)")
    parser.add_argument("--no-controls", action="store_true", help="leave out the dense and random-routing controls")
    parser.add_argument("--no-pictures", action="store_true", help="skip the routing maps and expert-usage plots")
    parser.add_argument("--pilot", action="store_true",
                        help="run the pilot that chooses steps and learning rate (writes pilot.json), then stop")
    parser.add_argument("--timing-rounds", type=int,
                        help=f"steps timed per configuration (default: {defaults.timing_rounds})")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--workdir", help="the study's directory (default: studies/<preset>, studies/quick)")
    parser.add_argument("--quick", action="store_true", help="check the pipeline: tiny preset, 2 routers, 2 seeds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-run messages")
    args = parser.parse_args(argv)
    base = quick_spec() if args.quick else full_spec() if args.full else StudySpec()
    changes = {"overrides": tuple(args.set), "controls": not args.no_controls, "pictures": not args.no_pictures}
    for name, value in (("preset", None if args.quick else args.preset), ("steps", args.steps),
                        ("learning_rate", args.learning_rate), ("seeds", args.seeds), ("routers", args.routers),
                        ("factors", args.factors), ("timing_rounds", args.timing_rounds)):  # fmt: skip
        if value is not None:
            changes[name] = tuple(value) if isinstance(value, list) else value
    if args.ablation:
        changes["ablation"] = True
    spec = dataclasses.replace(base, **changes)
    studydir = Path(args.workdir or ("studies/quick" if args.quick else f"studies/{spec.preset}"))
    try:
        spec.validate()
        steps, lr, _ = schedule(spec, studydir)
        for run in plan_runs(spec):
            run_config(spec, run, steps, lr).validate()
    except ValueError as err:
        parser.error(str(err))
    command = " ".join(["python -m train.study", *(argv if argv is not None else sys.argv[1:])])
    if args.pilot:
        try:
            result = run_pilot(spec, studydir, progress=not args.no_progress)
        except (PilotError, ConfigMismatchError, CorruptCheckpointError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"pilot: {result['steps']} steps at learning rate {result['learning_rate']:g} "
              f"({studydir / 'pilot.json'}; report {studydir / 'pilot.md'})")  # fmt: skip
        return 0
    runs = plan_runs(spec)
    print(f"study in {studydir}: {len(runs)} runs ({len(configurations(spec))} configurations x {len(spec.seeds)} "
          f"seeds), {steps} steps each", file=sys.stderr)  # fmt: skip
    try:
        out = run_study(spec, studydir, progress=not args.no_progress, command=command)
    except Preempted as stop:  # the run in progress saved its step; the same command continues the study
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_STATUS
    except (ConfigMismatchError, CorruptCheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"results: {out['csv']}\nreport:  {out['report']}\nplots:   {', '.join(map(str, out['plots']))}")
    failed = [r["name"] for r in out["rows"] if r["status"] == "diverged"]
    controls = [r["name"] for r in out["rows"] if r["status"] == "diverged" and r["control"]]
    if failed:
        print(f"error: {len(failed)} run(s) diverged: {', '.join(failed)} (see diverged.txt in each)"
              + (f"; among them the control(s) {', '.join(controls)}: the report cannot say whether routing "
                 "matters" if controls else ""), file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
