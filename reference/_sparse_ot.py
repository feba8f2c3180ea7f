"""Sparsity-constrained optimal transport (eq. 9), through the semi-dual of Liu, Puigcerver & Blondel (2023)."""

from __future__ import annotations

import numpy as np

from ._affinity import softmax_affinity
from ._checks import integer, positive_real, real_array

# Adam's constants, as in optax.adam's defaults.
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8


def project_simplex(v) -> np.ndarray:
    """Euclidean projection of a vector onto the probability simplex ``{p >= 0, sum(p) = 1}``.

    ``P(v) = max(v - theta, 0)`` where ``theta`` is the unique threshold making the result sum to 1
    (Held et al., 1974; Duchi et al., 2008, Algorithm 1).

    Example:
      >>> project_simplex([0.5, 0.3, -1.0]).round(6).tolist()  # theta = (0.5 + 0.3 - 1) / 2 = -0.1
      [0.6, 0.4, 0.0]
    """
    v = real_array("v", v, "(n,)")
    u = np.sort(v)[::-1]  # entries in decreasing order
    cumulative = np.cumsum(u)
    ranks = np.arange(1, v.size + 1)
    # rho = the largest j with u[j] - (sum_{i<=j} u[i] - 1) / j > 0; the first entry always qualifies.
    rho = ranks[u - (cumulative - 1.0) / ranks > 0][-1]
    theta = (cumulative[rho - 1] - 1.0) / rho
    return np.maximum(v - theta, 0.0)


def project_sparse_simplex(v, max_nonzeros: int) -> np.ndarray:
    """Euclidean projection onto the simplex restricted to at most ``max_nonzeros`` nonzero entries.

    Keep the ``max_nonzeros`` largest entries of ``v``, project them onto the simplex, zero the rest
    (Liu, Puigcerver & Blondel, 2023, Proposition 4; Kyrillidis et al., 2013).

    Choice [tie-sparse-projection]: among equal entries the lower index is kept first, so the result is
    deterministic.

    Example:
      >>> project_sparse_simplex([0.2, 0.9, 0.2, 0.5], 2).round(6).tolist()  # keep 0.9, 0.5: theta = 0.2
      [0.0, 0.7, 0.0, 0.3]
    """
    v = real_array("v", v, "(n,)")
    max_nonzeros = integer("max_nonzeros", max_nonzeros, minimum=1)
    order = np.argsort(-v, kind="stable")  # Choice [tie-sparse-projection]: stable, lower index first on ties
    kept = order[:max_nonzeros]
    out = np.zeros_like(v)
    out[kept] = project_simplex(v[kept])
    return out


def _plan_from_dual(alpha: np.ndarray, utility: np.ndarray, capacity: int) -> np.ndarray:
    """Column r of the plan is ``b * P_C((alpha + utility[:, r]) / b)`` with ``b = T / E``."""
    num_tokens, num_experts = utility.shape
    b = num_tokens / num_experts
    plan = np.zeros_like(utility)
    for r in range(num_experts):
        plan[:, r] = b * project_sparse_simplex((alpha + utility[:, r]) / b, capacity)
    return plan


def sparse_ot_affinity(logits, capacity: int, *, num_iters: int = 20, learning_rate: float = 1e-2) -> np.ndarray:
    """Approximate sparsity-constrained transport plan of eq. (9), by Adam on the semi-dual.

    Eq. (9): ``Pi_sparse = argmax_Pi <Pi, S> - 1/2 ||Pi||_F^2`` with ``S = softmax(logits)``, subject to
    ``Pi >= 0``, ``Pi 1_E = 1_T``, ``Pi^T 1_T = (T/E) 1_E`` and at most C nonzeros per column.

    Relaxing the row constraint with multipliers ``alpha`` (T,) and solving each column exactly gives the
    semi-dual (Liu, Puigcerver & Blondel, 2023, sec. 4). With ``b = T/E`` and weight 1 on the regularizer:

        column r of the plan:   Pi(alpha)[:, r] = b * P_C((alpha + S[:, r]) / b)
        negative semi-dual:     F(alpha) = sum_r max_{p in b*Simplex_C} [<p, alpha + S[:, r]> - 1/2 ||p||^2]
                                           - <alpha, 1_T>
        its gradient:           grad F(alpha) = Pi(alpha) 1_E - 1_T     (Danskin's theorem)

    where ``P_C`` is the projection onto the simplex restricted to C nonzeros (``project_sparse_simplex``).
    By construction every column is nonnegative, sums to T/E and has at most C nonzeros; only the rows are
    approximate.

    Choice [sparse-ot-solver]: eq. (9) is solved through this semi-dual, with utility ``S = softmax(logits)``,
    regularization weight 1 and ``b = T/E``, as the authors' router does (``ksparse_projection_routing.py`` in
    ``vmoe/projects/sparsity_constrained_ot``, through ``jaxopt``'s semi-dual transport).
    Choice [sparse-ot-adam]: ``alpha`` starts at 0 (as ``jaxopt``'s solver) and takes ``num_iters``
    bias-corrected Adam steps on F (b1 0.9, b2 0.999, eps 1e-8, the defaults of ``optax.adam``); the plan at
    the final ``alpha`` is returned.
    Choice [sparse-ot-defaults]: 20 steps with learning rate 1e-2, the ``maxiter`` and ``adam_lr`` of the
    authors' router; ``reference/README.md`` records how far the rows are from 1 with them.

    Args:
      logits: (T, E) router logits ``X @ W`` (plus noise, if any).
      capacity: C, the maximum number of nonzeros per column, >= 1 (C >= T removes the sparsity constraint).
      num_iters: number of Adam steps, >= 1.
      learning_rate: Adam's step size, > 0.

    Returns:
      (T, E) float64 plan.

    Example:
      >>> plan = sparse_ot_affinity(np.log([[4.0, 1.0], [1.0, 4.0], [2.0, 2.0]]), 1, num_iters=5)
      >>> plan.round(3).tolist()  # b = 3/2 on one token per column: token 2, wanted by neither, gets nothing
      [[1.5, 0.0], [0.0, 1.5], [0.0, 0.0]]
    """
    logits = real_array("logits", logits, "(T, E)")
    capacity = integer("capacity", capacity, minimum=1)
    num_iters = integer("num_iters", num_iters, minimum=1)  # Choice [sparse-ot-defaults]: 20 steps of 1e-2
    learning_rate = positive_real("learning_rate", learning_rate)
    utility = softmax_affinity(logits)  # S = softmax(XW), eq. (9); Choice [sparse-ot-solver]: the semi-dual below
    num_tokens = logits.shape[0]
    alpha = np.zeros(num_tokens)  # Choice [sparse-ot-adam]: from 0, bias-corrected Adam
    first_moment = np.zeros(num_tokens)
    second_moment = np.zeros(num_tokens)
    for step in range(1, num_iters + 1):
        grad = _plan_from_dual(alpha, utility, capacity).sum(axis=1) - 1.0  # row sums minus the marginal 1
        first_moment = ADAM_B1 * first_moment + (1 - ADAM_B1) * grad
        second_moment = ADAM_B2 * second_moment + (1 - ADAM_B2) * grad**2
        first_unbiased = first_moment / (1 - ADAM_B1**step)
        second_unbiased = second_moment / (1 - ADAM_B2**step)
        alpha = alpha - learning_rate * first_unbiased / (np.sqrt(second_unbiased) + ADAM_EPS)
    return _plan_from_dual(alpha, utility, capacity)
