"""Mutant: ``soft_moe_routing`` refuses a phi of the wrong width with an IndexError, not the spec's ValueError.

The port formats its message with ``x.shape[2]`` (x has two axes), so the refusal itself fails: the caller gets
an IndexError from inside the check. Found by the mutation score (``tools/mutation_score.py``): the bad-input
property tried this case only when Hypothesis happened to draw it; every case is now an explicit example.
"""

import sys

import numpy as np

import reference

from ._base import build


def soft_moe_routing(x, phi):
    x, phi = np.asarray(x), np.asarray(phi)
    if x.ndim == 2 and phi.ndim == 3 and phi.shape[0] != x.shape[1]:
        raise ValueError(f"phi must have D = {x.shape[2]} rows")  # the bug: x has no axis 2 (IndexError)
    return reference.soft_moe_routing(x, phi)


sys.modules[__name__] = build("soft_moe_width_refusal_index_error", __doc__, soft_moe_routing=soft_moe_routing)
