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
import dataclasses
import sys
from pathlib import Path

from ..checkpoint import CorruptCheckpointError
from ..preemption import EXIT_STATUS, Preempted
from ..workdir import ConfigMismatchError
from .design import StudySpec, configurations, full_spec, quick_spec
from .pilot import PilotError, run_pilot
from .run import plan_study, run_plan


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
        plan = plan_study(spec, studydir)
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
    print(f"study in {studydir}: {len(plan.runs)} runs ({len(configurations(spec))} configurations x "
          f"{len(spec.seeds)} seeds), {plan.schedule.steps} steps each", file=sys.stderr)  # fmt: skip
    try:
        out = run_plan(plan, studydir, progress=not args.no_progress, command=command)
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
