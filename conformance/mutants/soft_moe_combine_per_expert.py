"""Mutant: Soft MoE's combine is a softmax over each expert's slots separately, not over all E * S slots."""

import sys

import numpy as np

import reference

from ._base import build


def soft_moe_routing(x, phi):
    dispatch, _ = reference.soft_moe_routing(x, phi)
    logits = np.einsum("td,des->tes", np.asarray(x, np.float64), np.asarray(phi, np.float64))
    z = np.exp(logits - logits.max(axis=2, keepdims=True))
    return dispatch, z / z.sum(axis=2, keepdims=True)


sys.modules[__name__] = build("soft_moe_combine_per_expert", __doc__, soft_moe_routing=soft_moe_routing)
