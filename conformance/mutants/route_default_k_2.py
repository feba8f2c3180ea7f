"""Mutant: ``route`` called without ``factor`` gives Token Choice k = 2 (V-MoE's usual setting) instead of the
spec's default factor 1; with an explicit factor it is the spec."""

import sys

import reference

from ._base import build


def route(router, x, weight, *, factor=None, noise=None):
    if factor is None and router.endswith("token_choice"):
        factor = 2  # the bug: the default k
    return reference.route(router, x, weight, factor=factor, noise=noise)


sys.modules[__name__] = build("route_default_k_2", __doc__, route=route)
