"""``python -m train.study``: the paper's router comparison, rerun as a controlled, powered experiment.

    pilot (--pilot): candidate regimes x {learned router, dense ViT, content-agnostic router} x 2 seeds; the
          first regime where both controls reach 2 points on both seeds is accepted   -> STUDY/pilot.json, pilot.md
          (and the study's minimum detectable difference is declared from its spread, before any study run)
    plan: the accepted regime's routers x seeds + the controls (a dense ViT of one expert's per-token compute,
          a content-agnostic router at the same capacity) [+ the hash arm and the Figure 3 ablation with --full]
    runs: train_and_evaluate(config, STUDY/runs/NAME) in --workers pinned single-threaded processes (resumable;
          a finished run is never repeated)
    statistics: stage 1 the controls (Holm over 2); stage 2, only if both pass, the paper's findings (ii) and
          (iii) (Holm); the rest descriptive                                            -> STUDY/report.md
    STUDY/results.csv   one row per run
    STUDY/plots/        contrasts.png, accuracy_vs_time.png, convergence.png, routing/<configuration>/*.png

A seed fixes a run's initialization, data order, router noise and probe draws, and every arm of the study
runs every seed: differences are taken within seed (a paired design). The contrasts are named in code before
any run (``contrasts``). The report states what the design can resolve (the minimum detectable difference,
declared by the pilot and computed per contrast) before what it found.

Default: ``python -m train.study --pilot`` then ``python -m train.study``, both in ``studies/routing``: the
regime the pilot accepted, Softmax Token Choice, Softmax Expert Choice and Soft MoE with the two controls,
10 seeds: 50 runs. A study refuses to run without a pilot that accepted a regime. ``--full`` runs the six
routers at the accepted capacity and the next one up, with the hash arm and the Figure 3 ablation, 12 seeds, in
``studies/routing-full`` (reading the pilot of ``studies/routing``). ``--preset NAME`` runs a study of that
preset without a pilot (the previous design); ``--quick`` checks the pipeline in about two minutes (the
``tiny`` preset, 5 steps, 2 seeds); its numbers mean nothing. Interrupt at any time; the same command resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from optimized import ROUTERS

from ..checkpoint import CorruptCheckpointError
from ..preemption import EXIT_STATUS, Preempted
from ..workdir import ConfigMismatchError
from .design import StudySpec, configurations, full_spec, quick_spec
from .pilot import PilotError, pilot_study_spec, read_pilot, run_pilot
from .regimes import REGIMES
from .run import plan_study, run_plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    defaults = StudySpec()
    parser.add_argument("--preset", help="a study of this preset, without a pilot (default: the pilot's regime)")
    parser.add_argument("--regime", choices=list(REGIMES),
                        help="default: the regime the pilot accepted; any other is refused")  # fmt: skip
    parser.add_argument("--steps", type=int, help="steps per run (default: the pilot's, else the preset's)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: the pilot's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 ... 9 (--full: 0 ... 11)")
    parser.add_argument("--routers", nargs="+", help="default: " + " ".join(defaults.routers))
    parser.add_argument("--factors", type=float, nargs="+",
                        help="k or c (default: the regime's; below 1: k = 1 at that capacity for Token Choice)")
    parser.add_argument("--full", action="store_true", help="six routers at two capacities, the hash arm, the "
                        "Figure 3 ablation, 12 seeds (studies/routing-full)")  # fmt: skip
    parser.add_argument("--ablation", action="store_true", help="add the Figure 3 ablation (implied by --full)")
    parser.add_argument("--no-controls", action="store_true", help="leave out the dense and content-agnostic "
                        "controls")  # fmt: skip
    parser.add_argument("--no-pictures", action="store_true", help="skip the routing maps and expert-usage plots")
    parser.add_argument("--pilot", action="store_true", help="run the pilot that chooses the regime, then stop")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes, each single-threaded on its own core (default 2; 1: train here)")
    parser.add_argument("--timing-rounds", type=int,
                        help=f"steps timed per configuration (default: {defaults.timing_rounds})")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--workdir", help="the study's directory (default: studies/routing, studies/routing-full, "
                        "studies/<preset>, studies/quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="check the pipeline: tiny preset, 2 routers, 2 seeds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or per-run messages")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    by_pilot = not (args.quick or args.preset)
    pilot_dir = Path(args.workdir or "studies/routing") if by_pilot and not args.full else Path("studies/routing")
    if args.pilot:
        if not by_pilot:
            parser.error("--pilot chooses among the regimes; leave out --preset and --quick")
        try:
            base = StudySpec(overrides=tuple(args.set), steps=args.steps, learning_rate=args.learning_rate)
            result = run_pilot(base, pilot_dir, workers=args.workers, progress=not args.no_progress)
        except (PilotError, ConfigMismatchError, CorruptCheckpointError, RuntimeError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"pilot: regime {result['regime']!r} accepted, {result['steps']} steps at learning rate "
              f"{result['learning_rate']:g}; declared minimum detectable difference "
              f"{result['declared']['mdd_points']:.2f} points ({pilot_dir / 'pilot.md'})")  # fmt: skip
        return 0
    changes = {"overrides": tuple(args.set), "controls": not args.no_controls, "pictures": not args.no_pictures}
    for name, value in (("steps", args.steps), ("learning_rate", args.learning_rate), ("seeds", args.seeds),
                        ("routers", args.routers), ("timing_rounds", args.timing_rounds)):  # fmt: skip
        if value is not None:
            changes[name] = tuple(value) if isinstance(value, list) else value
    if args.factors is not None:
        changes["factors"] = tuple(int(f) if f.is_integer() else f for f in args.factors)
    if args.ablation:
        changes["ablation"] = True
    try:
        if args.quick:
            spec = dataclasses.replace(quick_spec(), **changes)
        elif args.preset:
            spec = dataclasses.replace(full_spec() if args.full else StudySpec(), preset=args.preset, **changes)
        else:
            spec = pilot_study_spec(pilot_dir, **changes)
            if args.regime and args.regime != spec.regime:
                raise ValueError(f"--regime {args.regime}: the pilot in {pilot_dir} accepted {spec.regime!r}, not "
                                 "this one; a regime the pilot did not accept is not run as the study")  # fmt: skip
            if args.full:
                factor = spec.factors[0]
                full = {"routers": ROUTERS, "factors": (factor, 1 if factor < 1 else 2 * factor), "ablation": True,
                        "hash_arm": True, "seeds": tuple(range(12))}  # fmt: skip
                spec = dataclasses.replace(spec, **{k: v for k, v in full.items() if k not in changes})
        default = ("studies/quick" if args.quick else f"studies/{spec.preset}" if args.preset
                   else "studies/routing-full" if args.full else "studies/routing")  # fmt: skip
        studydir = Path(args.workdir or default)
        plan = plan_study(spec, studydir, pilot_dir=pilot_dir if by_pilot else None)
    except ValueError as err:
        parser.error(str(err))
    command = " ".join(["python -m train.study", *(argv if argv is not None else sys.argv[1:])])
    print(f"study in {studydir}: {len(plan.runs)} runs ({len(configurations(spec))} configurations x "
          f"{len(spec.seeds)} seeds), {plan.schedule.steps} steps each", file=sys.stderr)  # fmt: skip
    try:
        out = run_plan(plan, studydir, progress=not args.no_progress, command=command, workers=args.workers,
                       pilot=read_pilot(pilot_dir) if by_pilot else None)  # fmt: skip
    except Preempted as stop:  # the run in progress saved its step; the same command continues the study
        print(f"stopped: {stop}", file=sys.stderr)
        return EXIT_STATUS
    except (ConfigMismatchError, CorruptCheckpointError, FileNotFoundError, RuntimeError, ValueError) as err:
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
