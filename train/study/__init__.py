"""``train.study``: the paper's router comparison, rerun as a controlled, powered experiment (``python -m
train.study``; its options and what it writes: ``train.study.cli``).

The modules, in the order data flows through them (each imports only modules above it):

    regimes      the candidate regimes the pilot weighs (``REGIMES``): a preset, its overrides, a capacity
    design       arms, seeds, runs and their configs (``StudySpec``, ``Run``, ``Plan``), the contrasts
    execution    running the arms: ordinary, resumable workdirs (``train_runs``), in worker processes or here
    worker       ``python -m train.study.worker``: one worker process of ``execution.train_in_workers``
    results      one row per run from its workdir, ``results.csv``
    statistics   paired contrasts within seed, two-stage paired t tests, Holm, the exact detectable difference
    pilot        ``--pilot``: the regime whose controls pass, the declared detectable difference; ``schedule``
    timing       the median step time of every configuration, timed in one interleaved pass
    diagnosis    what the routers do: routing maps, expert usage per class, Sinkhorn Token Choice's balance
    plots        contrasts.png, accuracy_vs_time.png, convergence.png
    report       report.md
    run          the study end to end: the schedule, the dataset and the analyses computed once, handed down
    cli          ``python -m train.study`` (``__main__``)

The package sits on top of ``train``: it imports the trainer and the modules below it (``train.config``,
``train.presets``, ``train.state``, ``train.workdir``, ``train.evaluators``, ``train.trained``, ``train.paper``,
``train.visualize``) and ``optimized``; nothing in ``train`` imports it.
"""

from .cli import main as main
from .design import EXPERT_CHOICE as EXPERT_CHOICE
from .design import LABELS as LABELS
from .design import SPARSE as SPARSE
from .design import TOKEN_CHOICE as TOKEN_CHOICE
from .design import Contrast as Contrast
from .design import Plan as Plan
from .design import Run as Run
from .design import Schedule as Schedule
from .design import StudySpec as StudySpec
from .design import configuration_label as configuration_label
from .design import configurations as configurations
from .design import contrasts as contrasts
from .design import full_spec as full_spec
from .design import plan_runs as plan_runs
from .design import quick_spec as quick_spec
from .design import regime_spec as regime_spec
from .design import run_config as run_config
from .diagnosis import diagnosis_text as diagnosis_text
from .diagnosis import pictures as pictures
from .diagnosis import sinkhorn_diagnosis as sinkhorn_diagnosis
from .pilot import PilotError as PilotError
from .pilot import pilot_study_spec as pilot_study_spec
from .pilot import run_pilot as run_pilot
from .pilot import schedule as schedule
from .regimes import REGIMES as REGIMES
from .regimes import Regime as Regime
from .results import convergence_gain as convergence_gain
from .results import test_curve as test_curve
from .results import write_csv as write_csv
from .run import execute as execute
from .run import plan_study as plan_study
from .run import run_plan as run_plan
from .run import run_study as run_study
from .statistics import analyse as analyse
from .statistics import analyse_all as analyse_all
from .statistics import holm as holm
from .statistics import mean_ci as mean_ci
from .statistics import minimum_detectable_difference as minimum_detectable_difference
from .statistics import paired_difference as paired_difference
from .statistics import paired_test as paired_test
from .timing import time_steps as time_steps

# doctest.testmod(train.study) runs the examples in the docstrings of the functions and classes exported above.
__test__ = {
    name: value
    for name, value in dict(globals()).items()
    if callable(value) and getattr(value, "__module__", "").startswith(f"{__name__}.")
}
