"""Mutant: the allocations put 1 (the dispatch value) in the combine tensor instead of the stated weight."""

import sys

import reference

from ._base import build


def token_choice_allocation(scores, capacity, k, weights=None):
    d, _ = reference.token_choice_allocation(scores, capacity, k, weights)
    return d, d.copy()


def expert_choice_allocation(scores, capacity, weights=None):
    d, _ = reference.expert_choice_allocation(scores, capacity, weights)
    return d, d.copy()


sys.modules[__name__] = build(
    "combine_without_weights", __doc__, token_choice_allocation=token_choice_allocation,
    expert_choice_allocation=expert_choice_allocation,
)  # fmt: skip
