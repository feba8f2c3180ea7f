"""Mutant: Sinkhorn scales plain exponentials of the logits, in the inputs' own dtype.

Identical to the log-domain spec in float64 and float32 at moderate logits; in float16, ``exp`` overflows above
11, which a ViT's router logits exceed, and the plan turns into inf and NaN (a failure reported for
low-precision Sinkhorn routers elsewhere). ``route`` computes the logits in the inputs' dtype, as a port that
never promotes would.
"""

import sys

import numpy as np

import reference

from ._base import build


def sinkhorn_affinity(logits, *, num_iters=20, tol=None):
    reference.sinkhorn_affinity(logits, num_iters=num_iters, tol=tol)  # the spec's validation
    logits = np.asarray(logits)
    tokens, experts = logits.shape
    with np.errstate(over="ignore", invalid="ignore"):  # silently, as a JAX or PyTorch port would
        plan = np.exp(logits)  # the bug: no log domain, no max subtraction, no wider dtype
        for _ in range(num_iters):
            plan = plan * (tokens / experts) / plan.sum(axis=0)  # columns first, then rows, as the spec
            plan = plan / plan.sum(axis=1, keepdims=True)
            if tol is not None and np.abs(plan.sum(axis=0) - tokens / experts).max() < tol:
                break
    return plan


def route(router, x, weight, *, factor=None, noise=None):
    if not router.startswith("sinkhorn"):
        return spec_route(router, x, weight, factor=factor, noise=noise)
    reference.route(router, x, weight, factor=factor, noise=noise)  # the spec's validation
    x, weight = np.asarray(x), np.asarray(weight)
    logits = x @ weight if noise is None else x @ weight + np.asarray(noise, x.dtype)  # in the inputs' dtype
    slots = reference.capacity(x.shape[0], weight.shape[1], 1 if factor is None else factor)
    plan, softmax = sinkhorn_affinity(logits), reference.softmax_affinity(logits)
    if router == "sinkhorn_token_choice":
        return reference.token_choice_allocation(plan, slots, 1 if factor is None else factor, weights=softmax)
    return reference.expert_choice_allocation(plan, slots, weights=softmax)


module = build("sinkhorn_exp_overflow", __doc__, sinkhorn_affinity=sinkhorn_affinity)
spec_route = module.route
module.route = route
sys.modules[__name__] = module
