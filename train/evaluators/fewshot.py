"""The paper's 10-shot linear probe of a model (sec. 3.3): frozen pre-head features, then the ridge probe
(``train.evaluators.ridge_probe``), averaged over shot draws."""

from __future__ import annotations

import equinox as eqx
import numpy as np

from ..config import Config
from ..input_pipeline import as_splits
from .batching import in_batches
from .ridge_probe import fewshot_accuracy


@eqx.filter_jit
def features(model, images):
    """The pre-head features the probe reads, (B, D), at inference."""
    return model.features(images, inference=True)[0]


def fewshot(model, dataset, config: Config, sharding) -> dict:
    """The paper's 10-shot linear probe on frozen pre-head features (sec. 3.3), averaged over shot draws.

    Draw ``d`` of ``config.fewshot_draws`` uses probe seed ``config.seed * 1000 + d``, so a run's seed fixes
    its draws and different seeds draw differently. The features of the probe's pool and test split are held in
    memory (for streaming data the pool is a small per-class subset, ``train.data.splits.fewshot_pool``).
    Returns the mean accuracy, each draw's accuracy and l2.
    """
    splits = as_splits(dataset)
    workers = config.data.workers
    train = in_batches(features, model, splits.fewshot_train, config.batch_size, sharding, splits.eval_ops, workers)
    test = in_batches(features, model, splits.fewshot_test, config.batch_size, sharding, splits.eval_ops, workers)
    draws = [
        fewshot_accuracy(train, splits.fewshot_train.labels, test, splits.fewshot_test.labels,
                         shots=config.fewshot_shots, seed=config.seed * 1000 + d)
        for d in range(config.fewshot_draws)
    ]  # fmt: skip
    return {
        "accuracy": float(np.mean([d["accuracy"] for d in draws])),
        "draw_accuracies": [d["accuracy"] for d in draws],
        "l2": [d["l2"] for d in draws],
        "shots": config.fewshot_shots,
        "num_classes": draws[0]["num_classes"],
        "num_test": draws[0]["num_test"],
    }
