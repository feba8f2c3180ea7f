"""Mutant: the sparse-OT solver's Adam steps skip the bias correction of the moment estimates."""

import sys

import numpy as np

import reference

from ._base import build


def sparse_ot_affinity(logits, capacity, *, num_iters=20, learning_rate=1e-2):
    reference.sparse_ot_affinity(logits, capacity, num_iters=1, learning_rate=learning_rate)  # validation
    utility = reference.softmax_affinity(logits)
    tokens, experts = utility.shape
    b = tokens / experts

    def plan(alpha):
        return np.stack(
            [b * reference.project_sparse_simplex((alpha + utility[:, r]) / b, capacity) for r in range(experts)],
            axis=1,
        )

    alpha, m, v = np.zeros(tokens), np.zeros(tokens), np.zeros(tokens)
    for _ in range(num_iters):
        grad = plan(alpha).sum(axis=1) - 1
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        alpha = alpha - learning_rate * m / (np.sqrt(v) + 1e-8)  # the bug: no division by 1 - beta^t
    return plan(alpha)


sys.modules[__name__] = build("sparse_ot_without_bias_correction", __doc__, sparse_ot_affinity=sparse_ot_affinity)
