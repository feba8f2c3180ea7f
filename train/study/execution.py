"""Running the study's arms: every run is an ordinary training workdir (``STUDY/runs/NAME``), and resumable.

A run with a ``summary.json`` (finished) or a ``diverged.txt`` (its loss turned non-finite: recorded, and the
study goes on) is never trained again; any other is trained, or resumed from its last checkpoint, by
``train_and_evaluate``. The study's dataset is loaded once, when a run first needs it (``StudyData``).

With ``workers`` > 1 (``--workers``), the runs left to train are shared out to that many worker processes
(``python -m train.study.worker``), each pinned to one core and single-threaded, taking the next unclaimed run
as it finishes one; each loads the dataset once. A claim lives in a directory fresh to each invocation, so an
interrupted study resumes with the same command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


# Choice: a worker is single-threaded (XLA's CPU backend without its Eigen thread pool, one intra-op thread) and
# pinned to one core, so that two workers on two cores do not contend; ``python -m train.study --workers 1``
# trains in this process with XLA's default threading instead. Measured 2026-12-04 on the 2 shared cores under a
# load average of 7-9 (not idle): two 200-step runs of the routing-c1 Token Choice config trained at 1410 and
# 2301 images/s one after the other in one process (0.62 cores used), and at 1180 + 1023 = 2203 images/s
# together in two workers (0.75 cores used): about 1.2x the steps per second, but 97 s of wall time against 81 s,
# since each worker imports and generates the dataset itself. Re-measured on idle cores (2026-12-04, two 1500-step
# runs of the routing-both-tc2 Token Choice config, seeds 100 and 101): 52.7 s of wall time in two workers (2.03
# cores busy) against 77.4 s one after the other in one process (1.48 cores): 1.47x.
WORKER_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
              "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip


def finished_or_diverged(workdir: Path) -> bool:
    return summary_path(workdir).exists() or (Path(workdir) / DIVERGED).exists()


def train_in_workers(jobs: list[tuple[Config, Path]], workers: int, *, progress: bool) -> None:
    """Train every (config, workdir) of ``jobs`` not finished yet in ``workers`` pinned single-threaded worker
    processes that claim runs in order; raise RuntimeError naming the runs left unfinished if a worker fails."""
    todo = [(config, Path(workdir)) for config, workdir in jobs if not finished_or_diverged(workdir)]
    if not todo:
        return
    for config, workdir in todo:
        workdir.mkdir(parents=True, exist_ok=True)
        check_or_write_config(config, workdir)  # the worker reads the run's config from here
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(prefix="train-study-claims-") as claims:
        procs = []
        for i in range(min(workers, len(todo))):
            command = [sys.executable, "-m", "train.study.worker", "--claims", claims, "--name", f"worker {i + 1}",
                       *(["--no-progress"] if not progress else []), *(str(w) for _, w in todo)]  # fmt: skip
            pin = {cores[i % len(cores)]} if cores else None
            procs.append(subprocess.Popen(command, env=os.environ | WORKER_ENV,
                                          preexec_fn=(lambda pin=pin: os.sched_setaffinity(0, pin)) if pin
                                          else None))  # fmt: skip
        codes = [p.wait() for p in procs]
    left = [w.name for _, w in todo if not finished_or_diverged(w)]
    if left:
        raise RuntimeError(f"worker exit codes {codes}; runs not finished: {', '.join(left)} (rerun to resume)")


def train_runs(plan: Plan, studydir: Path, *, data: StudyData, progress: bool = True,
               workers: int = 1) -> dict[Run, Path]:  # fmt: skip
    """Train every run of ``plan`` not finished yet in ``studydir``; return every run's workdir."""
    if workers > 1:
        train_in_workers([(config, run.workdir(studydir)) for run, config in plan.configs.items()], workers,
                         progress=progress)  # fmt: skip
    workdirs = {}
    for i, (run, config) in enumerate(plan.configs.items(), 1):
        workdir = run.workdir(studydir)
        head = f"[study {i}/{len(plan.configs)}] {run.describe()}"
        if finished_or_diverged(workdir):
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
