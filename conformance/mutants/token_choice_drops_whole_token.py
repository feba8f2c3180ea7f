"""Mutant: Algorithm 1 where a token refused by its i-th expert (full) is refused by all its later choices too,
even by experts with free slots (a rule some MoE codebases use; Algorithm 1 refuses only when full)."""

import sys

import numpy as np

import reference

from ._base import build


def token_choice_allocation(scores, capacity, k, weights=None):
    reference.token_choice_allocation(scores, capacity, k, weights)  # the spec's validation
    scores = np.asarray(scores, np.float64)
    weights = scores if weights is None else np.asarray(weights, np.float64)
    tokens, experts = scores.shape
    dispatch, combine = np.zeros((tokens, experts, capacity)), np.zeros((tokens, experts, capacity))
    ranking = np.argsort(-scores, axis=1, kind="stable")
    dropped = np.zeros(tokens, bool)
    for i in range(k):
        for t in range(tokens):
            r = ranking[t, i]
            c = int(np.count_nonzero(dispatch[:, r, :]))
            if c < capacity and not dropped[t]:  # the bug: "and not dropped[t]"
                dispatch[t, r, c], combine[t, r, c] = 1.0, weights[t, r]
            else:
                dropped[t] = True
    return dispatch, combine


sys.modules[__name__] = build(
    "token_choice_drops_whole_token", __doc__, token_choice_allocation=token_choice_allocation
)
