"""Mutant: the sparse projection of the sparse-OT solver keeps the higher index among equal entries at the cut.

Choice [tie-sparse-projection] keeps the lower index first. The two differ only where equal entries straddle
the C-th largest, as identical tokens do; a rounding model that perturbs tokens one by one mistakes the
difference for rounding.
"""

import sys

import numpy as np

import reference

from ._base import build


def project_sparse_simplex(v, max_nonzeros):
    v = np.asarray(v, np.float64)
    order = np.argsort(-v[::-1], kind="stable")  # the bug: among equals, the higher index first
    kept = v.size - 1 - order[:max_nonzeros]
    out = np.zeros_like(v)
    out[kept] = reference.project_simplex(v[kept])
    return out


def sparse_ot_affinity(logits, capacity, *, num_iters=20, learning_rate=1e-2):
    reference.sparse_ot_affinity(logits, capacity, num_iters=1, learning_rate=learning_rate)  # validation
    utility = reference.softmax_affinity(logits)
    tokens, experts = utility.shape
    b = tokens / experts

    def plan(alpha):
        return np.stack(
            [b * project_sparse_simplex((alpha + utility[:, r]) / b, capacity) for r in range(experts)], axis=1
        )

    alpha, m, v = np.zeros(tokens), np.zeros(tokens), np.zeros(tokens)
    for step in range(1, num_iters + 1):
        grad = plan(alpha).sum(axis=1) - 1
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        alpha = alpha - learning_rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return plan(alpha)


sys.modules[__name__] = build(
    "sparse_projection_ties_to_higher_index", __doc__, sparse_ot_affinity=sparse_ot_affinity,
    project_sparse_simplex=project_sparse_simplex,
)  # fmt: skip
