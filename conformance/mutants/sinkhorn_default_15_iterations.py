"""Mutant: ``sinkhorn_affinity``'s default ``num_iters`` is 15 (the spec's is 20); ``route`` passes its own 20,
so only a caller relying on the default sees the difference."""

import sys

import reference

from ._base import build


def sinkhorn_affinity(logits, *, num_iters=15, tol=None):  # the bug: the default
    return reference.sinkhorn_affinity(logits, num_iters=num_iters, tol=tol)


sys.modules[__name__] = build(
    "sinkhorn_default_15_iterations", __doc__, sinkhorn_affinity=sinkhorn_affinity, route=reference.route
)
