"""The study's design, fixed before any run: its arms, its seeds, its schedule, its runs' configs and its contrasts.

    StudySpec       the user's choices (routers x capacities x seeds, controls, ablation, overrides), checked
    Run             one arm at one seed: ``Run.configuration`` names the arm, ``Run.name`` the run
    plan_runs       every run, seeds outermost
    Schedule        steps and learning rate of every run, and where they come from (``pilot.schedule``)
    Plan            the spec, its schedule and every run with its config: what the rest of the study is given
    contrasts       the paired contrasts the statistics test, named here so that no result can choose them

Imports ``optimized``, ``train.config`` and the candidate regimes (``regimes``); nothing else of
``train.study`` (every other module imports this one).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

from optimized import ROUTERS

from ..config import Config
from ..presets import resolve
from .regimes import REGIMES

TOKEN_CHOICE = ("softmax_token_choice", "sinkhorn_token_choice")
EXPERT_CHOICE = ("softmax_expert_choice", "sinkhorn_expert_choice", "sparsity_constrained_expert_choice")
SPARSE = TOKEN_CHOICE + EXPERT_CHOICE
# Choice: the default study runs one router of each kind the paper's findings (ii) and (iii) compare (Softmax
# Token Choice, Softmax Expert Choice, Soft MoE), so that 5 arms (with the two controls) x 10 seeds fit in 60
# minutes on 2 CPU cores; --full (or --routers) adds Sinkhorn Token Choice and the other Expert Choice routers.
DEFAULT_ROUTERS = ("softmax_token_choice", "softmax_expert_choice", "soft_moe")
DEFAULT_SEEDS = tuple(range(10))
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
# Choice: the routing controls are Softmax Token Choice without noise or auxiliary losses, compared with the
# learned Softmax Token Choice at the same k and capacity. The content-agnostic control ("agnostic") routes by
# random logits drawn afresh every step (``model.random_routing``): which expert a token meets, and whether it is
# dropped, is independent of what the token shows. The "hash" arm keeps the router weights frozen at their random
# initialization: a fixed random linear map of the token picks its expert, so experts can still specialize by
# content (the previous study found it sends 81% of one part template to one expert); it is reported, not tested.
RANDOM_ROUTER = "softmax_token_choice"


CONVERGENCE_POINTS = 0.5  # a run has converged when test accuracy gains less than this over its last 20% of steps
EVALUATIONS = 5  # test accuracy at 20, 40, 60, 80 and 100% of the steps

@dataclasses.dataclass(frozen=True)
class StudySpec:
    preset: str = "parts"
    steps: int | None = None  # None: the pilot's choice (STUDY/pilot.json), else the preset's
    learning_rate: float | None = None  # likewise
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    timing_rounds: int = 10  # interleaved training steps timed per configuration (see timing.time_steps)
    routers: tuple[str, ...] = DEFAULT_ROUTERS
    factors: tuple[float, ...] = (1,)
    ablation: bool = False
    controls: bool = True
    hash_arm: bool = False  # the frozen random linear router (see RANDOM_ROUTER), reported beside the controls
    regime: str = ""  # the REGIMES entry its preset, overrides and factors come from ("": none, the options')
    # Token Choice at k = 1 (the learned routers and the controls alike) runs with C = round(this * T / E) slots
    # per expert; None: C from the factor, as every other router
    token_choice_capacity: float | None = None
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
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
                raise ValueError(f"--factors: {factor!r} is not a positive number (k or c)")
            if factor > 1 and not float(factor).is_integer():
                raise ValueError(f"--factors: {factor!r}: above 1 a factor is k for Token Choice, an integer")
        capacity = self.token_choice_capacity
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, float))
                                     or not 0 < capacity < math.inf):  # fmt: skip
            raise ValueError(f"token_choice_capacity: {capacity!r} is not a positive number (C = round(it T / E))")
        if not self.factors or len(set(self.factors)) != len(self.factors):
            raise ValueError(f"--factors: {self.factors} must be one or more distinct positive numbers")
        if self.regime and self.regime not in REGIMES:
            raise ValueError(f"--regime: unknown regime {self.regime!r}; valid regimes: {', '.join(REGIMES)}")
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
                f"the routing controls are compared with the learned {RANDOM_ROUTER}: add it to --routers, "
                "or pass --no-controls"
            )
        if self.hash_arm and RANDOM_ROUTER not in self.routers:
            raise ValueError(f"the hash arm is compared with the learned {RANDOM_ROUTER}: add it to --routers")


def regime_spec(name: str, **changes) -> StudySpec:
    """The study in regime ``name`` (``REGIMES``): its preset, overrides (before ``changes``' own) and capacity."""
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; valid regimes: {', '.join(REGIMES)}")
    regime = REGIMES[name]
    overrides = regime.overrides + tuple(changes.pop("overrides", ()))
    return dataclasses.replace(StudySpec(preset=regime.preset, overrides=overrides, factors=(regime.factor,),
                                         regime=name, token_choice_capacity=regime.token_choice_capacity),
                               **changes)  # fmt: skip


def full_spec(**changes) -> StudySpec:
    """The paper's whole grid: six routers x k, c = 1, 2, the Figure 3 ablation, the controls and the hash arm."""
    return dataclasses.replace(StudySpec(routers=ROUTERS, factors=(1, 2), ablation=True, hash_arm=True),
                               **changes)  # fmt: skip


def quick_spec() -> StudySpec:
    """The pipeline check used by the tests: seconds per run, numbers without meaning."""
    return StudySpec(preset="tiny", steps=5, seeds=(0, 1), routers=("softmax_token_choice", "soft_moe"),
                     factors=(1,), timing_rounds=2)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    router: str
    factor: float
    seed: int
    combine_from: str = "softmax"  # "plan": the "without softmax combine" arm of Figure 3
    control: str = ""  # "dense", "agnostic" or "hash" (see RANDOM_ROUTER); "" for a router of the study

    @property
    def name(self) -> str:
        return f"{self.configuration}-s{self.seed}"

    @property
    def configuration(self) -> str:
        """The run without its seed: what the tables average over."""
        if self.control == "dense":
            return "dense"
        if self.control in ("agnostic", "hash"):
            return f"{self.control}-c{self.factor:g}"
        plan = "-plan" if self.combine_from == "plan" else ""
        return f"{self.router}-c{self.factor:g}{plan}"

    def workdir(self, studydir) -> Path:
        """The run's workdir in a study's directory: an ordinary training workdir."""
        return Path(studydir) / "runs" / self.name

    def describe(self) -> str:
        if self.control == "dense":
            return f"dense ViT (control) seed {self.seed}"
        if self.control == "agnostic":
            return f"content-agnostic router (control) {_capacity(self.router, self.factor)} seed {self.seed}"
        if self.control == "hash":
            return f"frozen random linear router (hash) {_capacity(self.router, self.factor)} seed {self.seed}"
        combine = ", combine from the plan (Figure 3 ablation)" if self.combine_from == "plan" else ""
        return f"{LABELS[self.router]} {_capacity(self.router, self.factor)} seed {self.seed}{combine}"


def _capacity(router: str, factor: float) -> str:
    """How a router's factor reads: k for Token Choice (k = 1 at a capacity factor below 1), c for the others."""
    if router in TOKEN_CHOICE:
        return f"k=1, c={factor:g}" if factor < 1 else f"k={factor:g}"
    return f"c={factor:g}"


def configuration_label(configuration: str) -> str:
    """A configuration name as the report shows it."""
    if configuration == "dense":
        return "Dense ViT (control)"
    name, _, rest = configuration.partition("-c")
    factor, _, plan = rest.partition("-")
    if name == "agnostic":
        return f"Content-agnostic router, {_capacity(RANDOM_ROUTER, float(factor))} (control)"
    if name == "hash":
        return f"Frozen random linear router (hash), {_capacity(RANDOM_ROUTER, float(factor))}"
    return f"{LABELS[name]}, {_capacity(name, float(factor))}" + (", plan combine" if plan else "")


def plan_runs(spec: StudySpec) -> list[Run]:
    """Seeds outermost: an interrupted study already holds whole replicates of the design."""
    runs = []
    for seed in spec.seeds:
        for factor in spec.factors:
            runs += [Run(router, factor, seed) for router in spec.routers]
            if spec.ablation:
                runs.append(Run("sinkhorn_token_choice", factor, seed, combine_from="plan"))
            if spec.controls:
                runs.append(Run(RANDOM_ROUTER, factor, seed, control="agnostic"))
            if spec.hash_arm:
                runs.append(Run(RANDOM_ROUTER, factor, seed, control="hash"))
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
    # Choice: a factor below 1 is a capacity below 1 for every router: Token Choice keeps k = 1 and runs at
    # C = round(factor * T / E) (``model.capacity_factor``); Expert Choice and Soft MoE take it as their c.
    below = run.factor < 1 and run.router in TOKEN_CHOICE
    config = resolve(spec.preset, router=run.router, factor=1 if below else run.factor, seed=run.seed,
                     steps=steps, overrides=overrides)  # fmt: skip
    # Choice (2026-12-05): the batch in one piece (``batch_chunks=1``). The study's workers run single-threaded
    # (``execution.py``), where slices of the batch gain nothing, and in one piece every run computes the numbers
    # of the committed results (studies/routing/results.csv) to the last digit.
    model = config.model.replace(combine_from=run.combine_from, batch_chunks=1)
    if below:
        model = model.replace(capacity_factor=run.factor)
    elif spec.token_choice_capacity is not None and run.router in TOKEN_CHOICE and run.factor == 1:
        # Choice: slots beyond one per routed token (a buffer) change no token's compute: each still meets at
        # most one expert (k = 1), the dense control's per-token compute; they only spare tokens from being
        # dropped when their expert is popular. Expert Choice and Soft MoE keep c = factor.
        model = model.replace(capacity_factor=spec.token_choice_capacity)
    if run.control == "dense":
        # Choice: the dense control is the same ViT with every MoE block an MLP of the experts' width: the
        # per-token compute of one expert (k = 1, c = 1). Below c = 1 the MoE spends less than that per token
        # (it leaves tokens out), so MoE beating dense there is the harder test. Choice (2026-12-05, before pilot
        # round 4): it keeps the MoE model's ``moe_layers``, so a seed gives it the MoE arms' initialization of
        # everything but the MLPs (``ViTMoEConfig.moe_layers``); before, with MoE on blocks 0 and 1, the dense
        # control was keyed as Every-2 and started from other attention weights than every MoE arm of its seed.
        model = model.replace(dense=True, capacity_factor=None)
    elif run.control == "agnostic":
        model = model.replace(random_routing=True, noise_std=0.0, importance_weight=0.0, load_weight=0.0)
    elif run.control == "hash":
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
    """A pre-declared paired contrast: mean over ``a`` minus mean over ``b`` (configuration names), per seed.

    ``stage`` 1: a control (tested first, Holm over the controls); 2: a finding of the paper (tested only when
    every control of stage 1 is supported, Holm over the findings); 0: descriptive (an interval, no test).
    """

    key: str  # "moe-dense", "learned-agnostic"; "ii", "iii" (the paper's numbering); "sinkhorn-softmax", ...
    claim: str
    factor: float
    a: tuple[str, ...]
    b: tuple[str, ...]
    paper_a: tuple[str, ...] = ()  # routers whose paper numbers give the same difference (empty: none)
    paper_b: tuple[str, ...] = ()
    stage: int = 2


def contrasts(spec: StudySpec) -> list[Contrast]:
    """The study's contrasts, fixed by its design before any run: the controls (stage 1), the paper's findings in
    the paper's numbering (stage 2: (ii) Expert Choice beats Token Choice, (iii) Soft MoE beats the sparse
    routers), then the descriptive ones (Sinkhorn vs Softmax Token Choice, the Figure 3 ablation, the hash arm)."""
    out = []
    for factor in spec.factors:
        f = f"{factor:g}"
        if spec.controls:
            # Choice: the MoE side of this control is the learned Softmax Token Choice alone (RANDOM_ROUTER), not
            # the mean of the study's routers: it is then exactly the contrast the pilot gates on
            # (``pilot.control_differences``), the same learned arm as the other control, and independent of the
            # routers that stage 2 compares (a mean over them would let Soft MoE's margin carry a weak task).
            out.append(Contrast("moe-dense", f"MoE beats a dense ViT of one expert's per-token compute "
                                f"({LABELS[RANDOM_ROUTER]} - dense)", factor, (f"{RANDOM_ROUTER}-c{f}",),
                                ("dense",), stage=1))  # fmt: skip
            out.append(Contrast("learned-agnostic", f"learned routing beats content-agnostic routing "
                                f"({LABELS[RANDOM_ROUTER]} - the same router with random logits drawn afresh every "
                                "step)", factor, (f"{RANDOM_ROUTER}-c{f}",), (f"agnostic-c{f}",),
                                stage=1))  # fmt: skip
        ec = [r for r in spec.routers if r in EXPERT_CHOICE]
        tc = [r for r in spec.routers if r in TOKEN_CHOICE]
        sparse = [r for r in spec.routers if r in SPARSE]
        if ec and tc:
            out.append(Contrast("ii", f"(ii) Expert Choice beats Token Choice (mean of the {len(ec)} EC routers - "
                                f"mean of the {len(tc)} TC routers)", factor, tuple(f"{r}-c{f}" for r in ec),
                                tuple(f"{r}-c{f}" for r in tc), tuple(ec), tuple(tc)))  # fmt: skip
        if "soft_moe" in spec.routers and sparse:
            out.append(Contrast("iii", f"(iii) Soft MoE beats the sparse routers (Soft MoE - mean of the "
                                f"{len(sparse)} sparse routers)", factor, (f"soft_moe-c{f}",),
                                tuple(f"{r}-c{f}" for r in sparse), ("soft_moe",), tuple(sparse)))  # fmt: skip
        if set(TOKEN_CHOICE) <= set(spec.routers):
            out.append(Contrast("sinkhorn-softmax", "Sinkhorn Token Choice - Softmax Token Choice (descriptive)",
                                factor, (f"sinkhorn_token_choice-c{f}",), (f"softmax_token_choice-c{f}",),
                                ("sinkhorn_token_choice",), ("softmax_token_choice",), stage=0))  # fmt: skip
        if spec.ablation:
            out.append(Contrast("figure3", "Figure 3: softmax combine - plan combine, Sinkhorn Token Choice "
                                "(descriptive)", factor, (f"sinkhorn_token_choice-c{f}",),
                                (f"sinkhorn_token_choice-c{f}-plan",), stage=0))  # fmt: skip
        if spec.hash_arm:
            out.append(Contrast("learned-hash", f"{LABELS[RANDOM_ROUTER]} - the same router frozen at its random "
                                "initialization (hash; descriptive)", factor, (f"{RANDOM_ROUTER}-c{f}",),
                                (f"hash-c{f}",), stage=0))  # fmt: skip
    return out
