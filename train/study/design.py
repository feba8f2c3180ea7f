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


class Regime(NamedTuple):
    """A candidate regime of the study: a preset, its overrides and the capacity every arm runs at; optionally the
    slots of Token Choice at k = 1 (``token_choice_capacity``, ``StudySpec``)."""

    preset: str
    overrides: tuple[str, ...]
    factor: float
    description: str
    token_choice_capacity: float | None = None


# Choice: the regimes the pilot weighs (hypotheses; the pilot decides, ``pilot.run_pilot``). All have one MoE
# layer early (depth 2: an MLP block, then the MoE block 1), small experts, 8 part families x 32 variants and 4
# distractors per image (about 35% of the cells background, against 67.5% in the previous study's task).
# "routing-c1": experts of hidden width 32 (a dense MLP of one expert's per-token compute holds fewer detectors
# than there are templates), capacity 1. "routing-small", "routing-tiny": experts of width 16, 8. "routing": 32 at
# capacity c = 0.5 (C = T / 2E: every sparse router must leave half the tokens out). "parts": the previous study's
# regime (4 blocks, MoE on 1 and 3, width 64, 4 families x 16 variants, 2 distractors, capacity 1).
_ROUTING = ("model.depth=2", "data.families=8", "data.variants=32", "data.distractors=4")
REGIMES = {
    "routing-c1": Regime("parts", (*_ROUTING, "model.mlp_dim=32"), 1, "depth 2 (MoE at block 1), experts of "
                         "hidden width 32, 8 part families x 32 variants, 4 distractors per image (about 35% "
                         "background), capacity 1"),
    "routing-small": Regime("parts", (*_ROUTING, "model.mlp_dim=16"), 1, "as `routing-c1` with experts (and the "
                            "dense MLP) of hidden width 16"),
    "routing-tiny": Regime("parts", (*_ROUTING, "model.mlp_dim=8"), 1, "as `routing-c1` with experts (and the "
                           "dense MLP) of hidden width 8"),
    "routing": Regime("parts", (*_ROUTING, "model.mlp_dim=32"), 0.5, "as `routing-c1` at capacity 0.5"),
    # Choice (added after the pilot rejected the four above, issue 26): more, narrower experts, so that the MoE
    # holds many more hidden units than a dense MLP of one expert's width (E = 16 x 8 = 128 against 8; with E = 8
    # of width 8 the MoE tracked the dense ViT, +0.36 points). E = 16, not 32: Soft MoE routes one image's 16
    # tokens, and at c = 1 it has one slot per expert only up to E = 16. Groups of 16 images (T = 256 tokens)
    # keep C = 16 slots per expert at c = 1, as E = 8 with 8-image groups had, so the sparse routers drop no more
    # for lack of slots than before.
    "routing-e16": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.num_experts=16", "model.group_images=16"),
                          1, "as `routing-tiny` (experts and dense MLP of hidden width 8) with E = 16 experts "
                          "and routing groups of 16 images (C = 16 slots per expert at capacity 1)"),
    # Choice: the same with experts of width 16 (E x H = 256 hidden units against the dense ViT's 16): at E = 8
    # this width came closest to the margin (+1.91 points).
    "routing-e16-w16": Regime("parts", (*_ROUTING, "model.mlp_dim=16", "model.num_experts=16",
                                        "model.group_images=16"), 1, "as `routing-e16` with experts (and the "
                              "dense MLP) of hidden width 16"),
    # Choice: a task where more of each image carries the label: 16 part families x 16 variants (256 templates,
    # as 8 x 32) and no distractors, so a class's 16 parts fill an image's 16 cells but for the ones missing
    # (each with chance 0.2: about 20% background), against `routing-e16`'s 8 parts and 4 distractors.
    "routing-e16-f16": Regime("parts", ("model.depth=2", "data.families=16", "data.variants=16",
                                        "data.distractors=0", "model.mlp_dim=8", "model.num_experts=16",
                                        "model.group_images=16"), 1, "as `routing-e16` on a task of 16 part "
                              "families x 16 variants and no distractors (about 20% background)"),
    # Choice (added after the E = 16 regimes failed): every Token Choice router the pilot trained dropped 19-28% of
    # its tokens at c = 1 (load CV about 0.45: the learned router favours some experts), and a dropped token skips
    # the MoE block's MLP, which the dense ViT gives every token. Here Token Choice at k = 1 has C = 2T / E slots
    # per expert (``StudySpec.token_choice_capacity``): each token still meets at most one expert of the dense
    # MLP's width, few are dropped. Experts of width 16, E = 8: the regime closest to the margin (+1.91 points).
    "routing-small-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=16"), 1, "as `routing-small` (E = 8 experts "
                                "of width 16) with Token Choice at k = 1 given C = 2T/E slots per expert (a "
                                "buffer: it drops few tokens; per-token compute still one expert)", 2),
    # Choice: as `routing-small-tc2` with both blocks MoE (``model.moe_layers=0,1``), against a dense ViT whose two
    # MLPs both have the experts' width: every MLP of the dense ViT (where width 8 -> 32 gains 9.7 points) has its
    # MoE counterpart, in case the first block's MLP is what limits the depth-2 model.
    "routing-both-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=16", "model.moe_layers=0,1"), 1, "as "
                               "`routing-small-tc2` with both blocks MoE (blocks 0 and 1)", 2),
    # Choice (added after `routing-small-tc2` passed MoE - dense, +2.79, but not learned - content-agnostic, +1.03,
    # at seed 100): with the buffer, random routing among 8 experts of width 16 came within 1 point of learned
    # routing. Among 16 experts of width 8 a random assignment gives each token a narrower, less specialized
    # expert, so learned routing should matter more there.
    "routing-e16-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.num_experts=16",
                                        "model.group_images=16"), 1, "as `routing-e16` (E = 16 experts of width "
                              "8) with Token Choice at k = 1 given C = 2T/E slots per expert", 2),
    # Choice (added after `routing-e16-tc2` was rejected, +1.10 at seed 100): `routing-both-tc2` came closest
    # (seed 100: +4.52 and +12.63; seed 101: -1.34 and +5.93); at width 8 the dense ViT has the least capacity
    # (72.05% at seed 100, against 74.97% at 16 and 81.70% at 32), so an MoE in both blocks has the most to add.
    "routing-both-tiny-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.moe_layers=0,1"), 1, "as "
                                    "`routing-both-tc2` with experts (and the dense MLPs) of width 8", 2),
    # Choice (added after `routing-both-tiny-tc2` failed MoE - dense at seed 101, -4.25, where the dense ViT of
    # width 8 reached 80.90% against 72.05% at seed 100): at width 32 the dense ViT is nearer its ceiling (81.70%
    # at seed 100), so its between-seed swing may be smaller than at widths 8 and 16 (6.6-8.9 points).
    "routing-both-c1-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=32", "model.moe_layers=0,1"), 1, "as "
                                  "`routing-both-tc2` with experts (and the dense MLPs) of width 32", 2),
    # Choice (pilot round 3, added after round 2 at 3000 steps rejected `routing-both-tc2` and
    # `routing-both-tiny-tc2`: learned - content-agnostic +4.0 to +6.7 on every seed, MoE - dense +2.62/+0.35 and
    # +3.91/-1.30, the dense ViT of width 8 moving 85.61 -> 91.18 between seeds while Token Choice stayed at
    # 89.5-89.9): the MoE must hold clearly more than the dense ViT for MoE - dense to clear the dense ViT's
    # between-seed swing. With E = 16 experts of width 8 in both blocks each MoE layer has 128 hidden units
    # against the dense MLP's 8 (64 with E = 8); groups of 16 images keep C = 2T/E = 32 slots per expert.
    "routing-both-e16-tc2": Regime("parts", (*_ROUTING, "model.mlp_dim=8", "model.moe_layers=0,1",
                                             "model.num_experts=16", "model.group_images=16"), 1,
                                   "as `routing-both-tiny-tc2` with E = 16 experts (of width 8) in both blocks "
                                   "and routing groups of 16 images", 2),
    # Choice (round 3, after `routing-both-e16-tc2`): a task with 4x the part templates (8 families x 128
    # variants, 1024 templates against 256), so that a class's parts are nearly its own and recognizing them takes
    # more detectors than the dense ViT's MLPs of width 8 hold; the MoE as in `routing-both-tiny-tc2`.
    "routing-both-tiny-v128-tc2": Regime("parts", ("model.depth=2", "data.families=8", "data.variants=128",
                                                   "data.distractors=4", "model.mlp_dim=8", "model.moe_layers=0,1"),
                                         1, "as `routing-both-tiny-tc2` on a task of 8 part families x 128 "
                                         "variants (1024 templates)", 2),
    "parts": Regime("parts", (), 1, "the previous study's regime: depth 4 (MoE at blocks 1 and 3), hidden width "
                    "64, 4 families x 16 variants, 2 distractors (67.5% background), capacity 1"),
}
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
    model = config.model.replace(combine_from=run.combine_from)
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
        # (it leaves tokens out), so MoE beating dense there is the harder test.
        model = model.replace(dense=True, capacity_factor=None, moe_layers=None)
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
