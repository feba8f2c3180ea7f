"""Mutant: the trainable layer adds its routing noise whenever it is given a key, in inference too.

Evaluation is then random and differs from the noise-free routing the spec evaluates with (eq. (6)'s noise is
a training-time device). The spec's functions are the reference's; the layer is ``optimized.MoELayer`` with
this one bug.
"""

import sys

from ._base import build, wrapped_layer


def call(inner, x, key, inference):
    return inner(x, key=key, inference=inference and key is None)  # the bug: a key switches the noise on


sys.modules[__name__] = build("noise_at_inference", __doc__, MoELayer=wrapped_layer(call))
