"""Hand-worked and invariant checks for softmax, Sinkhorn and sparsity-constrained OT affinities."""

import warnings

import numpy as np
import ot
import pytest

import reference as R


def random_logits(seed, tokens, experts, scale=2.0):
    return scale * np.random.default_rng(seed).normal(size=(tokens, experts))


def test_softmax_hand_case_and_large_logits():
    # exp(0) : exp(log 3) = 1 : 3
    np.testing.assert_allclose(R.softmax_affinity([[0.0, np.log(3.0)]]), [[0.25, 0.75]], rtol=1e-15)
    # exp(1000) overflows float64; the max-shifted softmax gives [1, exp(-1000)] = [1, 0].
    np.testing.assert_array_equal(R.softmax_affinity([[1000.0, 0.0]]), [[1.0, 0.0]])


def test_sinkhorn_one_iteration_by_hand():
    # logits = log [[3, 1], [1, 1]], T/E = 1.
    # Columns: column sums of exp(logits) are 4 and 2 -> K = [[3/4, 1/2], [1/4, 1/2]].
    # Rows: row sums 5/4 and 3/4 -> [[3/5, 2/5], [1/3, 2/3]].
    plan = R.sinkhorn_affinity(np.log([[3.0, 1.0], [1.0, 1.0]]), num_iters=1)
    np.testing.assert_allclose(plan, [[0.6, 0.4], [1 / 3, 2 / 3]], rtol=1e-14)


def test_sinkhorn_converges_to_the_closed_form_2x2():
    # With T = E = 2 the plan is doubly stochastic [[p, 1-p], [1-p, p]]. For logits [[a, 0], [0, 0]],
    # optimality (log plan - logits = row term + column term) gives 2 log(p / (1-p)) = a, so with
    # a = 2 log 3: p / (1 - p) = 3, p = 3/4.
    plan = R.sinkhorn_affinity([[2 * np.log(3.0), 0.0], [0.0, 0.0]], num_iters=200)
    np.testing.assert_allclose(plan, [[0.75, 0.25], [0.25, 0.75]], atol=1e-12)


@pytest.mark.parametrize(("tokens", "experts"), [(8, 2), (16, 4), (30, 5)])
def test_sinkhorn_marginals_and_solver_free_optimality(tokens, experts):
    logits = random_logits(tokens, tokens, experts)
    plan = R.sinkhorn_affinity(logits, num_iters=2000, tol=1e-13)
    np.testing.assert_allclose(plan.sum(axis=1), 1.0, atol=1e-12)  # rows: exactly normalized last
    np.testing.assert_allclose(plan.sum(axis=0), tokens / experts, atol=1e-12)  # columns: converged
    # KKT of eq. (8): log plan - logits = f[t] + g[r], i.e. every 2x2 "interaction" of it vanishes.
    m = np.log(plan) - logits
    interaction = m - m[:, :1] - m[:1, :] + m[0, 0]
    np.testing.assert_allclose(interaction, 0.0, atol=1e-10)


def test_sinkhorn_against_pot():
    # POT's sinkhorn solves min <P, M> - reg H(P): with M = -logits and reg = 1 it is eq. (8).
    logits = random_logits(1, 12, 3)
    expected = ot.sinkhorn(np.ones(12), np.full(3, 4.0), -logits, 1.0, stopThr=1e-14, numItermax=100000)
    np.testing.assert_allclose(R.sinkhorn_affinity(logits, num_iters=5000, tol=1e-13), expected, atol=1e-10)


def test_sinkhorn_tol_stops_at_the_first_iteration_below_it():
    logits = random_logits(2, 16, 4)
    tol = 1e-3
    errors = [np.abs(R.sinkhorn_affinity(logits, num_iters=n).sum(axis=0) - 4.0).max() for n in range(1, 50)]
    first = 1 + next(i for i, e in enumerate(errors) if e < tol)
    assert first > 1  # the case is not trivial
    np.testing.assert_array_equal(
        R.sinkhorn_affinity(logits, num_iters=100, tol=tol), R.sinkhorn_affinity(logits, num_iters=first)
    )


def test_sinkhorn_is_invariant_to_row_and_column_shifts():
    logits = random_logits(3, 10, 5)
    column_shift = np.array([0.0, -2.0, 0.0, 0.0, 7.0])
    # A column constant is absorbed by the first column update, so even 20 iterations are unchanged.
    np.testing.assert_allclose(R.sinkhorn_affinity(logits + column_shift), R.sinkhorn_affinity(logits), atol=1e-12)
    # A row constant changes the iterates (columns are normalized first) but not the solution of eq. (8).
    row_shift = 3.0 * np.eye(10, 1)
    converged = R.sinkhorn_affinity(logits, num_iters=5000, tol=1e-14)
    np.testing.assert_allclose(
        R.sinkhorn_affinity(logits + row_shift, num_iters=5000, tol=1e-14), converged, atol=1e-12
    )


def test_simplex_projections_by_hand():
    # theta = (0.5 + 0.3 - 1) / 2 = -0.1 and -1 - theta < 0: [0.6, 0.4, 0].
    np.testing.assert_allclose(R.project_simplex([0.5, 0.3, -1.0]), [0.6, 0.4, 0.0], atol=1e-15)
    # A point of the simplex is its own projection.
    np.testing.assert_allclose(R.project_simplex([0.2, 0.3, 0.5]), [0.2, 0.3, 0.5], atol=1e-15)
    # Keep the two largest (0.9, 0.5), theta = (1.4 - 1) / 2 = 0.2: [0, 0.7, 0, 0.3].
    np.testing.assert_allclose(R.project_sparse_simplex([0.2, 0.9, 0.2, 0.5], 2), [0, 0.7, 0, 0.3], atol=1e-15)
    # Three-way tie, keep two: the lower indices 0 and 1 win.
    np.testing.assert_allclose(R.project_sparse_simplex([0.5, 0.5, 0.5], 2), [0.5, 0.5, 0.0], atol=1e-15)


def test_sparse_ot_one_adam_step_by_hand():
    # T = 3, E = 1: S = softmax = 1 everywhere, b = T/E = 3, C = 2.
    # alpha = 0: values (0 + 1)/3 all tie; keep tokens 0, 1; project [1/3, 1/3] -> [1/2, 1/2]; plan [1.5, 1.5, 0].
    # Gradient = row sums - 1 = [0.5, 0.5, -1]. Adam's first step is -lr * g / (|g| + eps) ~ -0.01 sign(g):
    # alpha = [-0.01, -0.01, 0.01]. Values (alpha + 1)/3 = [0.99, 0.99, 1.01]/3: keep token 2, then token 0
    # (tie with 1, lower index). Project [1.01, 0.99]/3: theta = (2/3 - 1)/2 = -1/6 -> [0.50333, 0.49667];
    # times b = 3: token 2 gets 1.51, token 0 gets 1.49.
    plan = R.sparse_ot_affinity(np.zeros((3, 1)), 2, num_iters=1)
    np.testing.assert_allclose(plan, [[1.49], [0.0], [1.51]], atol=1e-9)


@pytest.mark.parametrize(("tokens", "experts", "slots"), [(16, 4, 4), (16, 4, 8), (30, 6, 3), (64, 8, 16)])
def test_sparse_ot_invariants(tokens, experts, slots):
    plan = R.sparse_ot_affinity(random_logits(slots, tokens, experts), slots)
    assert (plan >= 0).all()
    np.testing.assert_allclose(plan.sum(axis=0), tokens / experts, rtol=1e-12)
    assert (np.count_nonzero(plan, axis=0) <= slots).all()


@pytest.mark.parametrize(("tokens", "experts"), [(12, 3), (8, 4)])
def test_sparse_ot_without_sparsity_is_quadratic_ot(tokens, experts):
    # C >= T removes the sparsity constraint: eq. (9) becomes quadratically regularized OT,
    # min <P, -S> + 1/2 ||P||^2, which POT's smooth-OT dual solver computes independently (Blondel et al. 2018).
    # Adam with a constant step only settles in a neighbourhood of the optimum whose size scales with the
    # step, so a small step and many iterations; 5e-5 is far below the O(0.1) errors of a wrong formula.
    logits = random_logits(tokens, tokens, experts)
    utility = R.softmax_affinity(logits)
    with warnings.catch_warnings():  # POT passes an option SciPy deprecates; not our code, not our concern
        warnings.filterwarnings("ignore", message=".*L-BFGS-B solver are deprecated", category=DeprecationWarning)
        expected = ot.smooth.smooth_ot_dual(
            np.ones(tokens),
            np.full(experts, tokens / experts),
            -utility,
            1.0,
            reg_type="l2",
            stopThr=1e-15,
            numItermax=100000,
        )
    assert (expected == 0).any()  # the quadratically regularized plan is itself sparse here
    plan = R.sparse_ot_affinity(logits, tokens, num_iters=20000, learning_rate=1e-4)
    np.testing.assert_allclose(plan, expected, atol=5e-5)
