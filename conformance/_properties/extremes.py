"""Inputs at the dtype's limits: logits beyond the range where ``exp`` overflows (float32 above 88.7, float64 above
709.8) or underflows to 0, where the spec's outputs are finite and so must the implementation's be."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import assume

from reference import ROUTERS

from .._checks import assert_close, check, host
from .._strategies import route_case
from ._base import EXPERT_CHOICE, prop
from ._jax_layer import as_jax, call_layer, module_layer
from ._routing import assert_same_routing, assume_margins, choosing_scores, rounding_sensitivity

# Every logit is shifted by the same constant, beyond exp's range in float64 (and so in float32); softmax, the
# Sinkhorn plan and the sparse-OT plan ignore a constant added to every logit, so the routing is that of the
# unshifted case, but a softmax without its max subtracted gives inf / inf (or 0 / 0) = NaN. Soft MoE takes no
# noise: its phi is scaled by 256 instead, |x @ phi| up to 1536, exact on the grid.
OFFSET = 800.0
SOFT_MOE_SCALE = 256.0

# Softmax Expert Choice, T = 2, E = 2, logits [[1, -1], [2, -2]] + 800 (the noise is the constant 800): the
# softmax is that of [[1, -1], [2, -2]], rows (0.88, 0.12) and (0.98, 0.02); C = 1: e0 takes t1, e1 takes t0.
EXTREMES_HAND = (
    {
        "router": "softmax_expert_choice",
        "x": np.array([[1.0], [2.0]]),
        "weight": np.array([[1.0, -1.0]]),
        "factor": 1,
        "noise": None,
        "experts": (np.zeros((2, 1, 4)), np.zeros((2, 4)), np.zeros((2, 4, 1)), np.zeros((2, 1))),
    },
    OFFSET,
)


@prop("extremes", lambda r: st.tuples(route_case(r), st.sampled_from((OFFSET, -OFFSET))), routers=ROUTERS,
      examples=[EXTREMES_HAND], share=0.4)  # fmt: skip
def logits_beyond_exp_overflow(ctx, case, router):
    """``route`` on logits shifted by +-800 (sparse routers, through ``noise``) or scaled to |x @ phi| up to 1536
    (Soft MoE): every output finite where the reference's is, and the same routing as the reference's; and the
    trainable layer, if there is one, with its router weights scaled by 256: finite, and the reference's output
    (Token Choice and Soft MoE)."""
    case, offset = case
    x, w, factor, noise = case["x"], case["weight"], case["factor"], case["noise"]
    if router == "soft_moe":
        if w.ndim == 2:  # the hand case is the sparse routers'
            w = w[:, :, None]
            factor = None
        w, noise, logits = SOFT_MOE_SCALE * w, None, None
    else:
        noise = (np.zeros((x.shape[0], w.shape[1])) if noise is None else noise) + offset
        logits = x @ w + noise
    want = ctx.ref.route(router, x, w, factor=factor, noise=noise)
    got = ctx.impl.route(router, x, w, factor=factor, noise=noise)
    for name, value, spec in zip(("dispatch", "combine"), got, want, strict=True):
        check(np.isfinite(spec).all(), f"reference: non-finite {name} at logits beyond exp's range")
        bad = ~np.isfinite(host(value).astype(np.float64))
        check(
            not bad.any(),
            f"route at logits beyond exp's range: {int(bad.sum())} non-finite {name} entries (first at "
            f"{tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None}); the spec's are finite",
        )
    assert_same_routing(ctx, router, logits, factor, got, want, "route at logits beyond exp's range")
    if not hasattr(ctx.impl_raw, "MoELayer") or case["router"] != router or router in EXPERT_CHOICE:
        return
    # The trainable layer, its router weights scaled by 256 (|x @ W| up to 1536): finite, and the reference's.
    # (Not Expert Choice: there nearly every softmax score is a hair above 0, near-ties a float may decide.)
    scaled = {**case, "weight": w if router == "soft_moe" else SOFT_MOE_SCALE * w}
    x, w, params = case["x"], scaled["weight"], case["experts"]
    if router != "soft_moe":
        slots = ctx.ref_raw.capacity(x.shape[0], w.shape[1], factor)
        assume_margins(router, choosing_scores(ctx, router, x @ w, slots), factor, 1e-4)
        assume(rounding_sensitivity(ctx, router, x @ w, slots, ctx.dtype) <= 1e-4)
    layer, dtype = module_layer(ctx, scaled, router)
    y = host(call_layer(layer, as_jax(x, dtype))[0]).astype(np.float64)
    check(np.isfinite(y).all(), f"MoELayer at |x @ W| up to 1536: {int((~np.isfinite(y)).sum())} non-finite outputs")
    want = ctx.ref.route(router, x, w, factor=factor)
    expected = ctx.ref.moe_layer(x, *want, ctx.ref.mlp_experts(*params))
    assert_close("MoELayer(x) at |x @ W| up to 1536 vs the reference composition", y, expected, dtype=ctx.dtype)
