"""Mutant: among equal scores, prefer the higher index (the spec prefers the lower one)."""

import sys

import reference

from ._base import build


def token_choice_allocation(scores, capacity, k, weights=None):
    # Reverse the experts, allocate (lower index first), reverse back: ties now go to the higher expert index.
    weights = None if weights is None else weights[:, ::-1]
    d, c = reference.token_choice_allocation(scores[:, ::-1], capacity, k, weights)
    return d[:, ::-1], c[:, ::-1]


def expert_choice_allocation(scores, capacity, weights=None):
    weights = None if weights is None else weights[::-1]
    d, c = reference.expert_choice_allocation(scores[::-1], capacity, weights)
    return d[::-1], c[::-1]


sys.modules[__name__] = build(
    "ties_to_higher_index", __doc__, token_choice_allocation=token_choice_allocation,
    expert_choice_allocation=expert_choice_allocation,
)  # fmt: skip
