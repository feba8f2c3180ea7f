"""train.evaluators.ridge_probe: the 10-shot linear probe on features with known answers, its l2 choice, bad input."""

import doctest

import numpy as np
import pytest

from train.evaluators import ridge_probe as F
from train.evaluators.ridge_probe import DEFAULT_L2_GRID, fewshot_accuracy

C, DIM = 10, 16


def clusters(per_class, spread, seed, num_classes=C, dim=DIM):
    """Gaussian clusters around fixed, well-separated class centres (centres from seed 0, points from ``seed``)."""
    centres = 4.0 * np.random.default_rng(0).normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    points = centres[labels] + spread * np.random.default_rng(seed).normal(size=(len(labels), dim))
    return points, labels


def test_docstring_examples():
    result = doctest.testmod(F, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


def test_separated_clusters_are_classified_perfectly():
    x, y = clusters(30, 1.0, seed=1)
    x_test, y_test = clusters(50, 1.0, seed=2)
    result = fewshot_accuracy(x, y, x_test, y_test)
    assert result["accuracy"] >= 0.99, result
    assert result["shots"] == 10 and result["num_classes"] == C
    assert result["num_train"] == 10 * C and result["num_validation"] == 10 * C and result["num_test"] == 50 * C


def test_overlapping_clusters_are_between_chance_and_perfect():
    # The probe is not a constant 100%: with more spread than separation it makes mistakes.
    x, y = clusters(30, 5.0, seed=1)
    x_test, y_test = clusters(100, 5.0, seed=2)
    accuracy = fewshot_accuracy(x, y, x_test, y_test)["accuracy"]
    assert 0.2 < accuracy < 0.9, accuracy


def test_noise_features_give_chance():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(C), 30)
    test_labels = rng.integers(0, C, 3000)
    result = fewshot_accuracy(rng.normal(size=(len(labels), DIM)), labels, rng.normal(size=(3000, DIM)), test_labels)
    assert abs(result["accuracy"] - 1 / C) < 0.035, result["accuracy"]  # 5 binomial standard deviations


def test_collapsed_features_give_chance_without_error():
    # A model whose features collapsed to a constant: every class scores the same; argmax picks class 0.
    labels = np.repeat(np.arange(4), 12)
    result = fewshot_accuracy(np.ones((48, 5)), labels, np.ones((40, 5)), np.repeat(np.arange(4), 10), shots=5)
    assert result["accuracy"] == 0.25


def test_chosen_l2_comes_from_the_grid_by_validation_accuracy():
    x, y = clusters(20, 4.0, seed=4)
    x_test, y_test = clusters(20, 4.0, seed=5)
    result = fewshot_accuracy(x, y, x_test, y_test, shots=5)
    assert list(result["validation_accuracy"]) == list(DEFAULT_L2_GRID)
    assert result["l2"] in DEFAULT_L2_GRID
    best = max(result["validation_accuracy"].values())
    assert result["l2"] == max(l2 for l2, a in result["validation_accuracy"].items() if a == best)  # ties: largest
    grid = (0.5, 8.0, 128.0)
    custom = fewshot_accuracy(x, y, x_test, y_test, shots=5, l2_grid=grid)
    assert custom["l2"] in grid and tuple(custom["validation_accuracy"]) == grid
    single = fewshot_accuracy(x, y, x_test, y_test, shots=5, l2_grid=[3.0])
    assert single["l2"] == 3.0


def test_the_reported_accuracy_is_the_refit_with_the_chosen_l2():
    x, y = clusters(20, 4.0, seed=4)
    x_test, y_test = clusters(20, 4.0, seed=5)
    result = fewshot_accuracy(x, y, x_test, y_test, shots=5)
    only = fewshot_accuracy(x, y, x_test, y_test, shots=5, l2_grid=[result["l2"]])
    assert only["accuracy"] == result["accuracy"]


def test_deterministic_from_seed():
    x, y = clusters(25, 4.0, seed=6)
    x_test, y_test = clusters(20, 4.0, seed=7)
    a = fewshot_accuracy(x, y, x_test, y_test, seed=3)
    assert a == fewshot_accuracy(x, y, x_test, y_test, seed=3)
    fit = F.select_shots(y, 10, 10, C, seed=3)[0]
    assert not np.array_equal(fit, F.select_shots(y, 10, 10, C, seed=4)[0])
    np.testing.assert_array_equal(F.select_shots(y, 10, 10, C, seed=3)[0], fit)


def test_select_shots_is_disjoint_and_per_class():
    labels = np.repeat(np.arange(3), [11, 15, 30])
    fit, val = F.select_shots(labels, 10, 10, 3, seed=0)
    assert len(set(fit) & set(val)) == 0
    np.testing.assert_array_equal(np.bincount(labels[fit]), [10, 10, 10])
    np.testing.assert_array_equal(np.bincount(labels[val]), [1, 5, 10])  # up to 10 more, what the pool has


def test_ridge_regression_primal_and_dual_match_the_definition():
    rng = np.random.default_rng(8)
    for n, d in ((40, 6), (6, 40)):  # n >= d: (d x d) normal equations; n < d: the (n x n) form
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
        l2 = 0.7
        # argmin ||XW - Y||^2 + l2 ||W||^2 is least squares on [X; sqrt(l2) I] against [Y; 0].
        stacked = np.linalg.lstsq(np.vstack([x, np.sqrt(l2) * np.eye(d)]), np.vstack([y, np.zeros((d, 3))]))[0]
        np.testing.assert_allclose(F.ridge_regression(x, y, l2), stacked, rtol=1e-9, atol=1e-12)


def test_wide_features_fewer_examples_than_dimensions():
    # ViT-sized features with 10 shots of 5 classes: the n x n form, still exact on separated clusters.
    x, y = clusters(15, 1.0, seed=9, num_classes=5, dim=200)
    x_test, y_test = clusters(20, 1.0, seed=10, num_classes=5, dim=200)
    assert fewshot_accuracy(x, y, x_test, y_test, l2_grid=(1.0, 1024.0))["accuracy"] == 1.0


# --------------------------------------------------------------------------------------------------- errors

X, Y = clusters(12, 1.0, seed=11, num_classes=3)
XT, YT = clusters(4, 1.0, seed=12, num_classes=3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shots": 12}, r"shots \+ 1 = 13 examples.*class 0 has 12"),
        ({"train_labels": np.where(Y == 2, 1, Y)}, "class 2 has 0"),
        ({"num_classes": 4}, "class 3 has 0"),
        ({"train_labels": Y[:-1]}, "train_labels has 35 entries but its features have 36 rows"),
        ({"test_features": XT[:, :-1]}, "differ in width: 16 vs 15"),
        ({"train_features": X[0]}, "train_features must be a non-empty 2-D array"),
        ({"test_features": np.zeros((0, DIM))}, "test_features must be a non-empty 2-D array"),
        ({"train_labels": Y.astype(float)}, "train_labels must be a 1-D integer array"),
        ({"test_labels": np.where(YT == 0, -1, YT)}, r"test_labels must lie in \[0, 3\)"),
        ({"test_labels": np.where(YT == 0, 3, YT), "num_classes": 3}, r"test_labels must lie in \[0, 3\)"),
        ({"train_features": np.where(np.arange(DIM) == 3, np.nan, X)}, r"must be finite.*first at \[0, 3\]"),
        ({"test_features": np.where(np.arange(DIM) == 0, np.inf, XT)}, "test_features must be finite"),
        ({"train_features": X.astype(complex)}, "must be real numbers"),
        ({"shots": 0}, "shots must be a positive integer"),
        ({"shots": 2.0}, "shots must be a positive integer"),
        ({"shots": True}, "shots must be a positive integer"),
        ({"validation_shots": 0}, "validation_shots must be a positive integer"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"l2_grid": ()}, "l2_grid must be a non-empty"),
        ({"l2_grid": (1.0, -2.0)}, "l2_grid must be a non-empty sequence of positive finite"),
        ({"l2_grid": (1.0, float("nan"))}, "positive finite"),
        ({"l2_grid": (1.0, 1.0)}, "repeated"),
        ({"l2_grid": "abc"}, "l2_grid must be a sequence of positive numbers"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_input(changes, message):
    arguments = {"train_features": X, "train_labels": Y, "test_features": XT, "test_labels": YT, "shots": 5}
    arguments.update(changes)
    with pytest.raises(ValueError, match=message):
        fewshot_accuracy(
            arguments.pop("train_features"), arguments.pop("train_labels"), arguments.pop("test_features"),
            arguments.pop("test_labels"), **arguments,
        )  # fmt: skip
