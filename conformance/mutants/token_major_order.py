"""Mutant: Algorithm 1 with the loops swapped: each token places all its k choices before the next token."""

import sys

import numpy as np

from ._base import build


def token_choice_allocation(scores, capacity, k, weights=None):
    scores = np.asarray(scores, np.float64)
    weights = scores if weights is None else np.asarray(weights, np.float64)
    tokens, experts = scores.shape
    dispatch, combine = np.zeros((tokens, experts, capacity)), np.zeros((tokens, experts, capacity))
    ranking = np.argsort(-scores, axis=1, kind="stable")
    for t in range(tokens):  # the bug: tokens outside, choices inside
        for i in range(k):
            r = ranking[t, i]
            c = int(np.count_nonzero(dispatch[:, r, :]))
            if c < capacity:
                dispatch[t, r, c], combine[t, r, c] = 1.0, weights[t, r]
    return dispatch, combine


sys.modules[__name__] = build("token_major_order", __doc__, token_choice_allocation=token_choice_allocation)
