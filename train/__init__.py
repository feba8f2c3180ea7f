"""Training, evaluation (accuracy and the paper's 10-shot linear probe) and the router study.

``python -m train`` trains the default preset on data shipped with the installation; ``train.presets`` holds the
presets and ``train.trainer.train_and_evaluate`` is what a run does. ``python -m train.study`` runs the paper's
router comparison as a controlled experiment, beside its published numbers (``train.paper``); ``python -m
train.visualize`` draws what a run's routers do. Imports ``optimized``, never ``reference``.

The house, top to bottom; a module imports only modules below it, never one above:

    study/            the router study: many runs, each an ordinary workdir; nothing imports it
    __main__, evaluate, predict, visualize, prepare, convert_checkpoints, import_vmoe
                      the command lines; they use what is below, and only ``__main__`` (and the study) the trainer
    trainer           train_and_evaluate and its step: the one place the pieces below meet
    finetune          --init-from: a new run's model from a trained workdir's weights (new head, resized posemb)
    trained           load_model / load_trained: a trained model from its workdir
    vmoe_model        a vmoe checkpoint's params as our model (architecture from the arrays): import_vmoe, finetune
    summary, plots, routing_plots
                      a run's summary, its curves, what its routers do
    evaluators/       evaluation order and batching, accuracy, the few-shot probe (ridge_probe: its math)
    state             the model, the optimizer and its state: the one place they are built
    input_pipeline    config -> the run's splits
    sharding          the device mesh and global batches
    presets           configs as code; resolve
    workdir           config.json, metrics.jsonl, summary.json, plots/, lock: the one place their names live
    checkpoint, preemption, progress, config, paper, vmoe_checkpoint, data/
                      the ground floor: import nothing of ``train`` (workdir, presets and the floors above import
                      ``config``; ``data/`` imports only itself)

No private name crosses a module; no import circle.
"""

from .config import Config as Config
from .config import DataConfig as DataConfig
from .presets import PRESETS as PRESETS
from .presets import resolve as resolve
from .trained import load_model as load_model
from .trainer import train_and_evaluate as train_and_evaluate
