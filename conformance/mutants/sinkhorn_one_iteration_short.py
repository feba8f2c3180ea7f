"""Mutant: Sinkhorn stops one iteration early (19 of the default 20): an error small but real, which float32
tolerances must still see."""

import sys

import reference

from ._base import build


def sinkhorn_affinity(logits, *, num_iters=20, tol=None):
    reference.sinkhorn_affinity(logits, num_iters=num_iters, tol=tol)  # the spec's validation
    return reference.sinkhorn_affinity(logits, num_iters=max(1, num_iters - 1), tol=tol)  # the bug: one short


sys.modules[__name__] = build("sinkhorn_one_iteration_short", __doc__, sinkhorn_affinity=sinkhorn_affinity)
