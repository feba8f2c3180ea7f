"""Mutant: Sinkhorn normalizes the columns in the first iteration only, then the rows alone: rows sum to 1 and
the column error never grows, but it never becomes small either."""

import sys

import numpy as np
from scipy.special import logsumexp

import reference

from ._base import build


def sinkhorn_affinity(logits, *, num_iters=20, tol=None):
    reference.sinkhorn_affinity(logits, num_iters=num_iters, tol=tol)  # the spec's validation
    logits = np.asarray(logits, np.float64)
    tokens, experts = logits.shape
    f, g = np.zeros(tokens), np.zeros(experts)
    for i in range(num_iters):
        if i == 0:  # the bug: the column update belongs in every iteration
            g = np.log(tokens / experts) - logsumexp(logits + f[:, None], axis=0)
        f = -logsumexp(logits + g[None, :], axis=1)
        if tol is not None and np.abs(np.exp(logits + f[:, None] + g).sum(0) - tokens / experts).max() < tol:
            break
    return np.exp(logits + f[:, None] + g[None, :])


sys.modules[__name__] = build("sinkhorn_columns_once", __doc__, sinkhorn_affinity=sinkhorn_affinity)
