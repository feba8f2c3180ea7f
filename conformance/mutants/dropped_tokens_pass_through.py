"""Mutant: ``moe_layer`` hands a token no expert took its own input (eq. (2) gives it exactly 0).

Some Switch-Transformer ports start the MoE output from a copy of the hidden states and overwrite only the
routed tokens, so a dropped token leaves the MoE branch unchanged instead of as 0; with the residual connection
around the block it is then counted twice.
"""

import sys

import numpy as np

import reference

from ._base import build


def moe_layer(x, dispatch, combine, experts):
    y = reference.moe_layer(x, dispatch, combine, experts)
    dropped = np.asarray(dispatch).sum(axis=(1, 2)) == 0
    return np.where(dropped[:, None], np.asarray(x, np.float64), y)  # the bug: dropped tokens pass through


sys.modules[__name__] = build("dropped_tokens_pass_through", __doc__, moe_layer=moe_layer)
