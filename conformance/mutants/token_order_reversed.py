"""Mutant: Algorithm 1 visits the tokens from last to first."""

import sys

import reference

from ._base import build


def token_choice_allocation(scores, capacity, k, weights=None):
    weights = None if weights is None else weights[::-1]
    d, c = reference.token_choice_allocation(scores[::-1], capacity, k, weights)
    return d[::-1], c[::-1]


sys.modules[__name__] = build("token_order_reversed", __doc__, token_choice_allocation=token_choice_allocation)
