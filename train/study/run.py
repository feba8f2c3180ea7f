"""The study end to end, each step once and in one direction:

    plan (spec + schedule, once)  ->  train_runs  ->  time_steps  ->  rows, results.csv
        ->  analyses (once)  ->  Sinkhorn diagnosis, pictures  ->  plots, report.md

The schedule is read once (``plan_study``), the dataset loaded at most once (``StudyData``, when a step first
needs it) and the statistics computed once (``analyse_all``); every step is handed what it reads.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..workdir import summary_path
from .design import Plan, Run, StudySpec
from .diagnosis import pictures, sinkhorn_diagnosis
from .execution import StudyData, train_runs
from .pilot import schedule
from .plots import plot
from .report import write_report
from .results import result_row, write_csv
from .statistics import analyse_all
from .timing import time_steps


def plan_study(spec: StudySpec, studydir, *, pilot_dir=None) -> Plan:
    """The study's runs and their configs on its schedule (``pilot.schedule``, from the pilot in ``pilot_dir``,
    default ``studydir``); every bad option fails here."""
    spec.validate()
    return Plan.make(spec, schedule(spec, studydir if pilot_dir is None else pilot_dir))


def study_data(plan: Plan) -> StudyData:
    """The study's dataset, loaded when a step first needs it."""
    return StudyData(plan.configs[plan.runs[0]])


def execute(spec: StudySpec, studydir, *, progress: bool = True) -> dict[Run, Path]:
    """Train every run of ``spec`` not finished yet in ``studydir``; return every run's workdir."""
    plan = plan_study(spec, studydir)
    return train_runs(plan, Path(studydir), data=study_data(plan), progress=progress)


def run_study(spec: StudySpec, studydir, *, progress: bool = True, command: str = "") -> dict:
    """Run (or resume) the study and write ``results.csv``, ``report.md`` and the plots; return their paths."""
    return run_plan(plan_study(spec, studydir), studydir, progress=progress, command=command)


def run_plan(plan: Plan, studydir, *, progress: bool = True, command: str = "", workers: int = 1,
             pilot: dict | None = None) -> dict:  # fmt: skip
    """``run_study`` for a plan already made (the CLI makes it first, to refuse bad options before any work)."""
    spec = plan.spec
    studydir = Path(studydir)
    studydir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    before = sum(summary_path(run.workdir(studydir)).exists() for run in plan.runs)
    data = study_data(plan)
    workdirs = train_runs(plan, studydir, data=data, progress=progress, workers=workers)
    step_seconds = time_steps(plan, studydir, data=data, progress=progress)
    rows = [result_row(run, config, workdirs[run], step_seconds[run.configuration])
            for run, config in plan.configs.items()]  # fmt: skip
    trained = sum(r["status"] == "finished" for r in rows) - before
    write_csv(rows, studydir / "results.csv")
    analyses = analyse_all(rows, spec)
    diagnosis = sinkhorn_diagnosis(rows, spec, data=data) if "sinkhorn_token_choice" in spec.routers else None
    pics = pictures(rows, spec, studydir, data=data, progress=progress) if spec.pictures else None
    plots = plot(rows, spec, analyses, studydir)
    wall = time.perf_counter() - start
    report = write_report(rows, plan, analyses, studydir, command=command or "train.study.run_study(...)",
                          wall_seconds=wall, trained=max(trained, 0), diagnosis=diagnosis,
                          pictures=pics, pilot=pilot, workers=workers)  # fmt: skip
    return {"csv": studydir / "results.csv", "report": report, "plots": plots, "rows": rows}
