"""The paper's 10-shot linear probe (sec. 3.3), its math: closed-form ridge regression from frozen features to
one-hot targets (``train.evaluators.fewshot`` runs it on a model).

What it is for: ``fewshot_accuracy(train_features, train_labels, test_features, test_labels)`` measures how well
a pre-trained model's fixed image embeddings transfer, as the paper does on ImageNet-1k with 10 images per class,
"in line with the 10-shot evaluation procedure described by Dosovitskiy et al. (2021); Riquelme et al. (2021)".

What it may import: numpy and scipy only (no JAX: the features arrive as NumPy arrays).

The procedure, following the ViT / V-MoE evaluators (big_vision ``evaluators/fewshot_lsr.py``, vmoe
``evaluate/fewshot.py``):

1. Draw ``shots`` training examples per class from the pool, and a disjoint validation set of up to
   ``validation_shots`` (default: ``shots``) further examples per class, from ``np.random.default_rng(seed)``.
2. Standardize each feature with the mean and standard deviation of the ``shots`` training examples
   (``(x - mean) / (std + 1e-5)``) and append a constant feature ``BIAS_CONSTANT = 100`` for the bias: its weight
   is penalized like the others but, being 100 times larger, is almost unregularized.
3. Targets are ``2 * onehot - 1`` (entries in {-1, +1}), as in ViT / V-MoE.
4. For each ``l2`` in ``l2_grid`` solve ``(X^T X + l2 I) W = X^T Y`` (the (d+1) x (d+1) normal equations, or the
   equivalent n x n system ``W = X^T (X X^T + l2 I)^{-1} Y`` when there are fewer examples than columns) with
   ``scipy.linalg.solve(..., assume_a="pos")``, and score the validation set by ``argmax(X W)``.
5. Refit with the chosen ``l2`` on the same ``shots`` examples per class and report the test accuracy.

Choice: the regularization is chosen on a held-out split of the pool, never on the test set. (V-MoE instead picks
the ``l2`` whose test accuracy ranks best across its few-shot datasets; big_vision uses one fixed ``l2``.) The
probe therefore sees ``shots`` examples per class for fitting and up to ``validation_shots`` more for choosing
``l2``. Ties in validation accuracy go to the largest ``l2`` (the most regularized of the best).

Dimensions: n examples, d feature width, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.linalg

__all__ = ["BIAS_CONSTANT", "DEFAULT_L2_GRID", "fewshot_accuracy", "ridge_regression", "select_shots"]

BIAS_CONSTANT = 100.0
# The V-MoE / big_vision sweep: 2^-10 ... 2^19.
DEFAULT_L2_GRID: tuple[float, ...] = tuple(2.0**k for k in range(-10, 20))


def ridge_regression(features: np.ndarray, targets: np.ndarray, l2: float) -> np.ndarray:
    """The ridge solution ``W = argmin ||X W - Y||^2 + l2 ||W||^2``, (d, C), in closed form.

    ``W = (X^T X + l2 I)^{-1} X^T Y`` when n >= d, else the identical ``X^T (X X^T + l2 I)^{-1} Y`` (a smaller
    positive definite system); both solved with ``scipy.linalg.solve(assume_a="pos")`` in float64.

    Args:
      features: X, (n, d).
      targets: Y, (n, C).
      l2: the regularization strength, > 0.

    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> ridge_regression(x, np.eye(2), 1.0).round(3).tolist()  # diag(1 / (1 + 1), 2 / (4 + 1))
    [[0.5, 0.0], [0.0, 0.4]]
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    n, d = x.shape
    if n >= d:
        gram = x.T @ x
        gram[np.diag_indices(d)] += l2
        return scipy.linalg.solve(gram, x.T @ y, assume_a="pos")
    gram = x @ x.T
    gram[np.diag_indices(n)] += l2
    return x.T @ scipy.linalg.solve(gram, y, assume_a="pos")


def select_shots(
    labels: np.ndarray, shots: int, validation_shots: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``labels``: ``shots`` per class for fitting, up to ``validation_shots`` more for validation.

    Each class's examples are permuted by ``np.random.default_rng(seed)`` (classes in order); the first ``shots``
    fit, the next ``min(validation_shots, count - shots)`` validate. Every class needs at least ``shots + 1``
    examples (checked by ``fewshot_accuracy``), so every class has at least one validation example.

    >>> fit, val = select_shots(np.array([0, 0, 0, 1, 1, 1]), 2, 2, 2, seed=0)
    >>> len(fit), len(val), sorted(set(fit) | set(val)) == list(range(6))
    (4, 2, True)
    """
    rng = np.random.default_rng(seed)
    fit, validate = [], []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        fit.append(members[:shots])
        validate.append(members[shots : shots + validation_shots])
    return np.concatenate(fit), np.concatenate(validate)


def fewshot_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    shots: int = 10,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    seed: int = 0,
    validation_shots: int | None = None,
) -> dict:
    """The ``shots``-shot linear-probe accuracy on the test set (paper sec. 3.3; the procedure in the module doc).

    Args:
      train_features: the pool to draw the shots from, (n, d), finite.
      train_labels: (n,) integers in [0, C).
      test_features: (n_test, d), finite.
      test_labels: (n_test,) integers in [0, C).
      shots: examples per class used to fit (10 in the paper).
      num_classes: C; by default ``1 + max label`` over train and test. Every class needs ``shots + 1`` examples
        in the pool.
      l2_grid: the ridge strengths to choose from, positive and finite.
      seed: which examples are drawn (``select_shots``).
      validation_shots: at most this many further examples per class choose ``l2`` (default: ``shots``).

    Returns:
      ``{"accuracy", "l2", "validation_accuracy": {l2: accuracy}, "shots", "num_classes", "num_train",
      "num_validation", "num_test", "seed"}``; accuracies are fractions in [0, 1].

    Raises:
      ValueError: mismatched shapes, non-finite features, labels out of range, a class with fewer than
      ``shots + 1`` pool examples, a bad ``shots`` / ``l2_grid`` / ``seed``, all before any fitting.

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(3), 20)
    >>> features = 5 * np.eye(3)[labels] + rng.normal(size=(60, 3))
    >>> result = fewshot_accuracy(features[::2], labels[::2], features[1::2], labels[1::2], shots=4)
    >>> result["accuracy"], result["num_classes"], result["l2"] in DEFAULT_L2_GRID
    (1.0, 3, True)
    """
    x_pool = _features("train_features", train_features)
    x_test = _features("test_features", test_features)
    if x_pool.shape[1] != x_test.shape[1]:
        raise ValueError(f"train_features and test_features differ in width: {x_pool.shape[1]} vs {x_test.shape[1]}")
    y_pool = _labels("train_labels", train_labels, len(x_pool))
    y_test = _labels("test_labels", test_labels, len(x_test))
    shots = _positive_int("shots", shots)
    validation_shots = shots if validation_shots is None else _positive_int("validation_shots", validation_shots)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if num_classes is None:
        num_classes = int(max(y_pool.max(), y_test.max())) + 1
    else:
        num_classes = _positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for a classification probe, got {num_classes}")
    for name, y in (("train_labels", y_pool), ("test_labels", y_test)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}]")
    counts = np.bincount(y_pool, minlength=num_classes)
    short = np.flatnonzero(counts < shots + 1)
    if short.size:
        listed = ", ".join(f"class {c} has {counts[c]}" for c in short[:5]) + (", ..." if short.size > 5 else "")
        raise ValueError(
            f"every class needs at least shots + 1 = {shots + 1} examples in train_labels (shots to fit, at least "
            f"one to choose l2), but {listed}"
        )
    grid = _l2_grid(l2_grid)

    fit, val = select_shots(y_pool, shots, validation_shots, num_classes, int(seed))
    mean = x_pool[fit].mean(axis=0)
    std = x_pool[fit].std(axis=0) + 1e-5

    def design(x):  # standardized features and the constant bias column, (n, d + 1)
        return np.concatenate([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)

    x_fit, x_val = design(x_pool[fit]), design(x_pool[val])
    targets = 2.0 * np.eye(num_classes)[y_pool[fit]] - 1.0
    validation = {}
    for l2 in grid:
        weights = ridge_regression(x_fit, targets, l2)
        validation[l2] = float(np.mean(np.argmax(x_val @ weights, axis=1) == y_pool[val]))
    best = max(validation.values())
    chosen = max(l2 for l2, accuracy in validation.items() if accuracy == best)
    weights = ridge_regression(x_fit, targets, chosen)  # refit with the chosen l2
    accuracy = float(np.mean(np.argmax(design(x_test) @ weights, axis=1) == y_test))
    return {
        "accuracy": accuracy,
        "l2": chosen,
        "validation_accuracy": validation,
        "shots": shots,
        "num_classes": num_classes,
        "num_train": len(fit),
        "num_validation": len(val),
        "num_test": len(y_test),
        "seed": int(seed),
    }


def _features(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n, d), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} must be finite: {int(bad.sum())} non-finite value(s), the first at [{row}, {column}] "
            f"= {array[row, column]}"
        )
    return array


def _labels(name: str, value, length: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array, got {array.dtype} with shape {array.shape}")
    if len(array) != length:
        raise ValueError(f"{name} has {len(array)} entries but its features have {length} rows")
    return array.astype(np.int64)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _l2_grid(value) -> tuple[float, ...]:
    try:
        grid = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"l2_grid must be a sequence of positive numbers, got {value!r}") from None
    if not grid or not all(math.isfinite(v) and v > 0 for v in grid):
        raise ValueError(f"l2_grid must be a non-empty sequence of positive finite numbers, got {grid}")
    if len(set(grid)) != len(grid):
        raise ValueError(f"l2_grid has repeated values: {grid}")
    return grid
