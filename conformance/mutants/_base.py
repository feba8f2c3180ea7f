"""Building blocks of the mutants: the reference's functions, one of them broken on purpose.

A mutant is a module exposing the spec's API, identical to ``reference`` except for one deliberate bug.
``route`` is rebuilt from the module's own pieces, so a broken allocation or affinity reaches it too.
"""

from __future__ import annotations

import types

import numpy as np

import reference

from .._coverage import API


def build(name: str, doc: str, *, sinkhorn_combine: str = "softmax", **overrides) -> types.ModuleType:
    module = types.ModuleType(f"conformance.mutants.{name}", doc)
    for api in API:
        setattr(module, api, getattr(reference, api))
    for key, value in overrides.items():
        setattr(module, key, value)
    if "route" not in overrides:
        module.route = _route_from(module, sinkhorn_combine)
    return module


def _route_from(ns, sinkhorn_combine):
    def route(router, x, weight, *, factor=None, noise=None):
        reference.route(router, x, weight, factor=factor, noise=noise)  # the spec's validation
        x, weight = np.asarray(x, np.float64), np.asarray(weight, np.float64)
        if router == "soft_moe":
            return ns.soft_moe_routing(x, weight)
        factor = 1 if factor is None else factor
        logits = x @ weight + (0 if noise is None else np.asarray(noise, np.float64))
        slots = ns.capacity(x.shape[0], weight.shape[1], factor)
        softmax = ns.softmax_affinity(logits)
        if router == "softmax_token_choice":
            return ns.token_choice_allocation(softmax, slots, factor)
        if router == "softmax_expert_choice":
            return ns.expert_choice_allocation(softmax, slots)
        if router == "sparsity_constrained_expert_choice":
            return ns.expert_choice_allocation(ns.sparse_ot_affinity(logits, slots), slots, weights=softmax)
        plan = ns.sinkhorn_affinity(logits)
        weights = plan if sinkhorn_combine == "plan" else softmax
        if router == "sinkhorn_token_choice":
            return ns.token_choice_allocation(plan, slots, factor, weights=weights)
        return ns.expert_choice_allocation(plan, slots, weights=weights)

    return route


def wrapped_layer(call, configure=None):
    """A trainable layer class: ``optimized.MoELayer`` whose ``__call__`` is replaced by ``call(inner, x, key,
    inference)``, for the mutants whose bug lives in the layer (its weights stay reachable as ``router_weight``
    and ``experts``, so the suite can set them). ``configure(kwargs)``, if given, rewrites the constructor's
    keyword arguments (a wrong default)."""
    import equinox as eqx

    import optimized

    class MoELayer(eqx.Module):
        inner: optimized.MoELayer

        def __init__(self, *args, **kwargs):
            self.inner = optimized.MoELayer(*args, **(configure(kwargs) if configure else kwargs))

        router_weight = property(lambda self: self.inner.router_weight)
        experts = property(lambda self: self.inner.experts)
        capacity = property(lambda self: self.inner.capacity)

        def __call__(self, x, *, key=None, inference=False):
            return call(self.inner, x, key, inference)

    return MoELayer
