"""Training, evaluation (accuracy and the paper's 10-shot linear probe) and the router study.

``python -m train`` trains the default preset on data shipped with the installation; see ``train.config``
for the presets and ``train.loop.train_and_evaluate`` for what a run does. ``python -m train.study`` runs
the paper's router comparison as a controlled experiment (``train.study``), beside its published numbers
(``train.paper``); ``python -m train.visualize`` draws what a run's routers do. Imports ``optimized``, never
``reference``.
"""

from .config import PRESETS as PRESETS
from .config import Config as Config
from .config import DataConfig as DataConfig
from .config import resolve as resolve
from .loop import load_model as load_model
from .loop import train_and_evaluate as train_and_evaluate
