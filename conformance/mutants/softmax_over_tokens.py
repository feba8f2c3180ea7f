"""Mutant: the softmax normalizes over tokens (axis 0) instead of over experts."""

import sys

import numpy as np

from ._base import build


def softmax_affinity(logits):
    logits = np.asarray(logits, np.float64)
    z = np.exp(logits - logits.max(axis=0, keepdims=True))
    return z / z.sum(axis=0, keepdims=True)


sys.modules[__name__] = build("softmax_over_tokens", __doc__, softmax_affinity=softmax_affinity)
