"""Running the study's arms: every run is an ordinary training workdir (``STUDY/runs/NAME``), and resumable.

A run with a ``summary.json`` (finished) or a ``diverged.txt`` (its loss turned non-finite: recorded, and the
study goes on) is never trained again; any other is trained, or resumed from its last checkpoint, by
``train_and_evaluate``. The study's dataset is loaded once, when a run first needs it (``StudyData``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import Config
from ..input_pipeline import load_data
from ..trainer import NonFiniteLossError, train_and_evaluate
from ..workdir import check_or_write_config, summary_path
from .design import Plan, Run

DIVERGED = "diverged.txt"  # in a run's workdir: why its loss turned non-finite


class StudyData:
    """The dataset of a study's runs, loaded on the first call and then shared.

    Runs of one study differ in router, capacity, seed, steps and learning rate, never in their data
    (``load_data`` reads ``config.data``, the probe's shots and the class count), so one load serves them all,
    the timing pass and the pictures.
    """

    def __init__(self, config: Config):
        self.config = config
        self._dataset = None

    def __call__(self):
        if self._dataset is None:
            self._dataset = load_data(self.config)
        return self._dataset


def say(enabled: bool, text: str) -> None:
    """A progress message of the study, on stderr."""
    if enabled:
        print(text, file=sys.stderr, flush=True)


def train_run(config: Config, workdir: Path, *, data: StudyData, progress: bool) -> str | None:
    """Train (or resume) one run in ``workdir``; None when it finished, else why its loss turned non-finite."""
    dataset = data()
    try:
        train_and_evaluate(config, workdir, progress=progress, dataset=dataset)
    except NonFiniteLossError as err:
        return str(err)
    return None


def train_runs(plan: Plan, studydir: Path, *, data: StudyData, progress: bool = True) -> dict[Run, Path]:
    """Train every run of ``plan`` not finished yet in ``studydir``; return every run's workdir."""
    workdirs = {}
    for i, (run, config) in enumerate(plan.configs.items(), 1):
        workdir = run.workdir(studydir)
        head = f"[study {i}/{len(plan.configs)}] {run.describe()}"
        if summary_path(workdir).exists() or (workdir / DIVERGED).exists():
            check_or_write_config(config, workdir)  # a different study in the same directory is refused
            say(progress, f"{head}: finished earlier, reused")
        else:
            say(progress, f"{head}: training in {workdir}")
            diverged = train_run(config, workdir, data=data, progress=progress)
            if diverged is not None:
                (workdir / DIVERGED).write_text(diverged + "\n")
                say(progress, f"{head}: diverged ({diverged}); recorded, the study goes on")
        workdirs[run] = workdir
    return workdirs
