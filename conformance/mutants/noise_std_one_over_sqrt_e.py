"""Mutant: the trainable layer draws its routing noise with standard deviation 1/sqrt(E) instead of 1/E.

Eq. (14) writes the noise as N(0, 1/E), a variance; V-MoE's code (and the spec: reference ``load_loss``'s
Choice [load-probability]) uses the standard deviation 1/E. Reading 1/E as the variance draws noise sqrt(E)
times too large. The layer is ``optimized.MoELayer`` built with that default; the spec's functions are the
reference's.
"""

import math
import sys

from ._base import build, wrapped_layer


def configure(kwargs):
    if kwargs.get("noise_std") is None:  # the bug: the default standard deviation is 1/sqrt(E)
        kwargs["noise_std"] = 1 / math.sqrt(kwargs["num_experts"])
    return kwargs


def call(inner, x, key, inference):
    return inner(x, key=key, inference=inference)


sys.modules[__name__] = build(
    "noise_std_one_over_sqrt_e", __doc__, MoELayer=wrapped_layer(call, configure=configure)
)
