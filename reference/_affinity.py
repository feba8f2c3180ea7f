"""Token-expert affinity matrices: softmax (eq. 6) and entropy-regularized OT by Sinkhorn (eq. 8)."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ._checks import integer, positive_real, real_array


def softmax_affinity(logits) -> np.ndarray:
    """Softmax over experts, eq. (6) of the paper.

    ``Pi_softmax[t, r] = exp(logits[t, r]) / sum_r' exp(logits[t, r'])``.

    Args:
      logits: (T, E) router logits ``X @ W``; noise, if any, is already added (eq. 6 writes ``XW + sigma eps``).

    Returns:
      (T, E) float64 matrix, nonnegative, each row summing to 1.

    Example:
      >>> softmax_affinity([[0.0, np.log(3.0)]]).round(6).tolist()
      [[0.25, 0.75]]
    """
    logits = real_array("logits", logits, "(T, E)")
    # Subtracting the row maximum leaves the softmax unchanged and keeps exp() from overflowing.
    shifted = logits - logits.max(axis=1, keepdims=True)
    unnormalized = np.exp(shifted)
    return unnormalized / unnormalized.sum(axis=1, keepdims=True)


def sinkhorn_affinity(logits, *, num_iters: int = 20, tol: float | None = None) -> np.ndarray:
    """Entropy-regularized transport plan of eq. (8), by Sinkhorn's algorithm in the log domain.

    ``Pi_ent = argmax_Pi <Pi, logits> - <Pi, log Pi>`` subject to ``Pi 1_E = 1_T`` and ``Pi^T 1_T = (T/E) 1_E``.
    The solution has the form ``Pi[t, r] = exp(logits[t, r] + f[t] + g[r])``; Sinkhorn alternates the
    closed-form updates of the column potential ``g`` and the row potential ``f``.

    Choice [sinkhorn-start]: the iterations run in the log domain with entropy weight 1 and start from zero
    potentials ``f = 0, g = 0`` (scalings of 1), as OTT's Sinkhorn, which the authors' router calls.
    Choice [sinkhorn-order]: one iteration normalizes the columns first, then the rows (the paper does not
    fix the order; OTT's Sinkhorn does the same), so the rows of the returned plan sum to 1 up to rounding
    and the columns are what converges.
    Choice [sinkhorn-iterations]: 20 iterations by default, the ``maxiter = 20`` of the authors' released
    code (``vmoe/projects/sparsity_constrained_ot/ot_routing.py``); the paper gives no number.
    Choice [sinkhorn-stopping]: ``tol`` is compared with the largest absolute column error
    ``max_r |sum_t Pi[t, r] - T/E|``, measured after each complete iteration; the default ``tol=None``
    always runs ``num_iters`` iterations, as the authors' code does.

    Args:
      logits: (T, E) router logits ``X @ W`` (plus noise, if any).
      num_iters: maximum number of iterations, >= 1.
      tol: if given, stop after the first iteration whose largest column error is below ``tol``.

    Returns:
      (T, E) float64 plan, positive, rows summing to 1, columns summing approximately to T/E.

    Example:
      >>> sinkhorn_affinity(np.zeros((4, 2))).tolist()  # uniform logits: the plan is uniform
      [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]

    Reference: Sinkhorn (1964); Cuturi (2013); Clark et al. (2022), sec. 2.2 of the paper.
    """
    logits = real_array("logits", logits, "(T, E)")
    num_iters = integer("num_iters", num_iters, minimum=1)  # Choice [sinkhorn-iterations]: 20 by default
    if tol is not None:
        tol = positive_real("tol", tol)
    num_tokens, num_experts = logits.shape
    log_row_marginal = 0.0  # log 1: every token sends mass 1
    log_col_marginal = np.log(num_tokens / num_experts)  # log(T/E): every expert receives mass T/E
    f = np.zeros(num_tokens)  # row potential; Choice [sinkhorn-start]: zero potentials
    g = np.zeros(num_experts)  # column potential
    for _ in range(num_iters):
        # Choice [sinkhorn-order]: columns first, then rows.
        # Columns: choose g so that sum_t exp(logits[t, r] + f[t] + g[r]) = T/E for every r.
        g = log_col_marginal - logsumexp(logits + f[:, None], axis=0)
        # Rows: choose f so that sum_r exp(logits[t, r] + f[t] + g[r]) = 1 for every t.
        f = log_row_marginal - logsumexp(logits + g[None, :], axis=1)
        if tol is not None:  # Choice [sinkhorn-stopping]: the column error, after a full iteration
            plan = np.exp(logits + f[:, None] + g[None, :])
            if np.max(np.abs(plan.sum(axis=0) - num_tokens / num_experts)) < tol:
                break
    return np.exp(logits + f[:, None] + g[None, :])
