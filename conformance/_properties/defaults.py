"""Defaults as users call them: every public function called without its optional arguments gives the spec's
values for them, through every entry point (the affinity and allocation functions, ``route``, the layer)."""

from __future__ import annotations

import numpy as np

from reference import ROUTERS

from .._checks import assert_close, assert_equal, check, zero_one
from .._strategies import logits_case, route_case
from ._base import prop
from ._cases import SINKHORN_HAND, SINKHORN_SLOW
from ._routing import assert_same_routing, rounding_sensitivity


@prop("equivalence", lambda r: logits_case(), examples=[SINKHORN_HAND, SINKHORN_SLOW])
def defaults_as_users_call_them(ctx, case, router):
    """The keyword defaults are part of the spec: called without them, the functions give the spec's values."""
    logits, slots = case["logits"], case["capacity"]
    assert_close(
        "sinkhorn_affinity(logits), the default num_iters=20, tol=None",
        ctx.impl.sinkhorn_affinity(logits),
        ctx.ref.sinkhorn_affinity(logits, num_iters=20, tol=None),
        dtype=ctx.dtype,
    )
    assert_close(
        "sparse_ot_affinity(logits, capacity), the default num_iters=20, learning_rate=1e-2",
        ctx.impl.sparse_ot_affinity(logits, slots),
        ctx.ref.sparse_ot_affinity(logits, slots, num_iters=20, learning_rate=1e-2),
        dtype=ctx.dtype,
        slack=rounding_sensitivity(ctx, "sparsity_constrained_expert_choice", logits, slots, ctx.dtype),
    )
    scores = ctx.ref_raw.softmax_affinity(logits)
    for name, got, want in (
        ("token_choice_allocation(scores, capacity, 1), the default weights=scores",
         ctx.impl.token_choice_allocation(scores, slots, 1), ctx.ref.token_choice_allocation(scores, slots, 1, scores)),
        ("expert_choice_allocation(scores, capacity), the default weights=scores",
         ctx.impl.expert_choice_allocation(scores, slots), ctx.ref.expert_choice_allocation(scores, slots, scores)),
    ):  # fmt: skip
        assert_equal(f"{name}: dispatch", zero_one(name, got[0], ctx.precision("impl", *got)), want[0])
        assert_close(f"{name}: combine", got[1], want[1], dtype=ctx.dtype)


# route(router, x, W) with the defaults factor=None and noise=None: k = 1 (Token Choice), c = 1 (Expert Choice),
# Soft MoE's S from phi. Here T = 2, E = 2, logits [[1, -1], [2, -2]]: softmax rows (0.88, 0.12), (0.98, 0.02);
# C = round(1 * 2 / 2) = 1. Token Choice (k = 1): both tokens choose e0, which takes t0 and is then full; t1 is
# dropped. Expert Choice: e0 takes t1 (0.98), e1 takes t0 (0.12). A default of k = 2 would give C = 2.
DEFAULTS_HAND = {
    "router": None,
    "x": np.array([[1.0], [2.0]]),
    "weight": np.array([[1.0, -1.0]]),
    "factor": 1,
    "noise": None,
    "experts": (np.zeros((2, 1, 4)), np.zeros((2, 4)), np.zeros((2, 4, 1)), np.zeros((2, 1))),
}


@prop("equivalence", route_case, routers=ROUTERS, examples=[DEFAULTS_HAND], share=0.4)
def route_defaults_as_users_call_them(ctx, case, router):
    """``route(router, x, W)``, without ``factor`` and ``noise``, is the spec's ``route`` with factor 1 (Soft MoE: S
    from phi) and no noise; a trainable ``MoELayer`` built without ``factor`` has the spec's capacity round(T / E)
    (Soft MoE: that many slots per expert)."""
    x, w = case["x"], case["weight"]
    if router == "soft_moe" and w.ndim == 2:  # the hand case is the sparse routers'
        w = w[:, :, None]
    got, want = ctx.impl.route(router, x, w), ctx.ref.route(router, x, w, factor=None, noise=None)
    logits = None if router == "soft_moe" else x @ w
    assert_same_routing(ctx, router, logits, 1, got, want, f"route({router!r}, x, W) with its defaults")
    if hasattr(ctx.impl_raw, "MoELayer"):
        import jax

        t, e = x.shape[0], w.shape[1]
        layer = ctx.impl_raw.MoELayer(router, width=x.shape[1], hidden=4, num_experts=e, group_size=t,
                                      key=jax.random.key(0))  # fmt: skip
        expected = ctx.ref_raw.capacity(t, e, 1)
        check(layer.capacity == expected, f"MoELayer({router!r}, ...) without factor: capacity {layer.capacity}, "
              f"the spec's default factor 1 gives round(T / E) = {expected}")  # fmt: skip
