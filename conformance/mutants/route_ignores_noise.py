"""Mutant: ``route`` validates ``noise`` but routes the sparse routers on the clean logits ``x @ W``."""

import sys

import reference

from ._base import build


def route(router, x, weight, *, factor=None, noise=None):
    reference.route(router, x, weight, factor=factor, noise=noise)  # the spec's validation
    return reference.route(router, x, weight, factor=factor)  # the bug: the noise is dropped


sys.modules[__name__] = build("route_ignores_noise", __doc__, route=route)
