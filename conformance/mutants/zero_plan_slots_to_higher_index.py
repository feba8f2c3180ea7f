"""Mutant: Sparsity-Constrained Expert Choice fills the slots left to the exact zeros of the sparse-OT plan by
the higher token index (the spec: ties, zeros included, go to the lower index)."""

import sys

import numpy as np

import reference

from ._base import build


def route(router, x, weight, *, factor=None, noise=None):
    dispatch, combine = reference.route(router, x, weight, factor=factor, noise=noise)  # and its validation
    if router != "sparsity_constrained_expert_choice":
        return dispatch, combine
    logits = np.asarray(x, np.float64) @ np.asarray(weight, np.float64)
    logits = logits if noise is None else logits + np.asarray(noise, np.float64)
    slots = dispatch.shape[2]
    plan = reference.sparse_ot_affinity(logits, slots)
    tokens = np.arange(plan.shape[0])[:, None]
    # The bug: zeros ranked among themselves by decreasing token index (all still below every positive entry).
    scores = np.where(plan == 0, -(plan.shape[0] - tokens) + 0.0 * plan, plan)
    return reference.expert_choice_allocation(scores, slots, weights=reference.softmax_affinity(logits))


sys.modules[__name__] = build("zero_plan_slots_to_higher_index", __doc__, route=route)
