"""Mutant: the softmax exponentiates the logits as they are, without subtracting each row's maximum.

The same numbers at moderate logits; beyond exp's range (about 88.7 in float32, 709.8 in float64) it gives
inf / inf = NaN, and below it 0 / 0. ``route`` is rebuilt from this softmax, so every sparse router has it.
"""

import sys

import numpy as np

import reference

from ._base import build


def softmax_affinity(logits):
    reference.softmax_affinity(logits)  # the spec's validation
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # silently, as a JAX or PyTorch port would
        z = np.exp(np.asarray(logits, np.float64))  # the bug: no max subtracted
        return z / z.sum(axis=1, keepdims=True)


sys.modules[__name__] = build("softmax_without_max_subtraction", __doc__, softmax_affinity=softmax_affinity)
