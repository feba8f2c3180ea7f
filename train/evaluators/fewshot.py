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
    """The pre-head features the probe reads at inference, (B, F): ``model.features``, the pre-logits (F =
    ``representation_size``) when the model has a pre-logits layer, as vmoe's few-shot probe, else (B, D)."""
    return model.features(images, inference=True)[0]


def check_probe_pool(dataset, config: Config) -> None:
    """Refuse a ``fewshot_shots`` the probe's pool cannot serve (every class needs ``shots + 1`` examples: shots to
    fit, at least one to choose l2), from the labels alone: before training, not after it."""
    splits = as_splits(dataset)
    pool, test = np.asarray(splits.fewshot_train.labels), np.asarray(splits.fewshot_test.labels)
    counts = np.bincount(pool, minlength=1 + int(max(pool.max(initial=0), test.max(initial=0))))
    short = np.flatnonzero(counts < config.fewshot_shots + 1)
    if short.size:
        raise ValueError(f"fewshot_shots {config.fewshot_shots} needs {config.fewshot_shots + 1} examples of every "
                         f"class in the probe's pool, but class {short[0]} has {counts[short[0]]}: set --set "
                         f"fewshot_shots=N with N <= {counts.min() - 1}")  # fmt: skip


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
