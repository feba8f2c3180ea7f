"""Mutant: the capacity is one more than round(factor * T / E)."""

import sys

import reference

from ._base import build

sys.modules[__name__] = build(
    "capacity_off_by_one", __doc__, capacity=lambda t, e, factor: reference.capacity(t, e, factor) + 1
)
