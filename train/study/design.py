"""The study's design, fixed before any run: its arms, its seeds, its schedule, its runs' configs and its contrasts.

    StudySpec       the user's choices (routers x capacities x seeds, controls, ablation, overrides), checked
    Run             one arm at one seed: ``Run.configuration`` names the arm, ``Run.name`` the run
    plan_runs       every run, seeds outermost
    Schedule        steps and learning rate of every run, and where they come from (``pilot.schedule``)
    Plan            the spec, its schedule and every run with its config: what the rest of the study is given
    contrasts       the paired contrasts the statistics test, named here so that no result can choose them

Imports ``optimized`` and ``train.config``; nothing else of ``train.study`` (every other module imports this one).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

from optimized import ROUTERS

from ..config import Config
from ..presets import resolve

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
CONVERGENCE_POINTS = 0.5  # a run has converged when test accuracy gains less than this over its last 20% of steps
EVALUATIONS = 5  # test accuracy at 20, 40, 60, 80 and 100% of the steps


@dataclasses.dataclass(frozen=True)
class StudySpec:
    preset: str = "parts"
    steps: int | None = None  # None: the pilot's choice (STUDY/pilot.json), else the preset's
    learning_rate: float | None = None  # likewise
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    timing_rounds: int = 10  # interleaved training steps timed per configuration (see timing.time_steps)
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

    def workdir(self, studydir) -> Path:
        """The run's workdir in a study's directory: an ordinary training workdir."""
        return Path(studydir) / "runs" / self.name

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


def configurations(spec: StudySpec) -> list[str]:
    """Every configuration of the study, in table order."""
    seen = []
    for run in plan_runs(dataclasses.replace(spec, seeds=spec.seeds[:1])):
        if run.configuration not in seen:
            seen.append(run.configuration)
    return seen


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


class Schedule(NamedTuple):
    """Steps and peak learning rate of every run of a study, and where they come from (``pilot.schedule``)."""

    steps: int
    learning_rate: float
    source: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """A study made concrete: its spec, its schedule, and every run (in ``plan_runs`` order) with its config."""

    spec: StudySpec
    schedule: Schedule
    configs: dict[Run, Config]

    @classmethod
    def make(cls, spec: StudySpec, schedule: Schedule) -> Plan:
        """Every run's config; every bad option fails here, before any training."""
        spec.validate()
        configs = {run: run_config(spec, run, schedule.steps, schedule.learning_rate) for run in plan_runs(spec)}
        for config in configs.values():
            config.validate()
        return cls(spec, schedule, configs)

    @property
    def runs(self) -> list[Run]:
        return list(self.configs)

    def by_configuration(self) -> dict[str, Config]:
        """One config per configuration (its first seed's), in table order."""
        out = {}
        for run, config in self.configs.items():
            out.setdefault(run.configuration, config)
        return out


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
