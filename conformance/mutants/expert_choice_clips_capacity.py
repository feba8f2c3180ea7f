"""Mutant: ``route`` clips an Expert Choice capacity above T to T instead of refusing the factor.

The spec refuses C = round(c T / E) > T (an expert cannot hold a token twice); silently clipping changes what
the caller asked for. The allocation function itself still refuses C > T, as the spec does.
"""

import sys

import numpy as np

import reference

from ._base import build


def route(router, x, weight, *, factor=None, noise=None):
    if router in reference.ROUTERS[2:5] and factor is not None:
        x, weight = np.asarray(x, np.float64), np.asarray(weight)
        tokens, experts = x.shape[0], weight.shape[-1]
        try:
            too_many = reference.capacity(tokens, experts, factor) > tokens
        except (TypeError, ValueError):
            too_many = False
        if too_many:  # the bug: C clipped to T (c = E gives round(E T / E) = T) instead of an error
            factor = experts
    return reference.route(router, x, weight, factor=factor, noise=noise)


sys.modules[__name__] = build("expert_choice_clips_capacity", __doc__, route=route)
