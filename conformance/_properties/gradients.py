"""The gradient property, for implementations that can differentiate their layer.

An implementation may expose ``layer_gradients(router, x, weight, experts, cotangent, *, factor=None)``: the
gradients of ``sum(cotangent * y)``, with ``y`` its trainable layer's output at inference (no noise), with
respect to the router weights, the experts' ``(w1, b1, w2, b2)`` and the tokens, as a tuple in that order. An
adapter provides it with ``jax.grad`` or ``torch.autograd``; without it the property is n/a. It is judged against
central finite differences of the reference composition ``reference.moe_layer(x, *reference.route(...))`` in
float64, with the routing held fixed: the sparse routers' dispatch is the one at the unperturbed point and their
combine weights are the softmax of the perturbed logits there (the router learns through the combine weights,
sec. 3.4; nothing flows through top-k, Sinkhorn or sparse OT); Soft MoE's dispatch and combine are smooth and
are differentiated whole. A port with a ``stop_gradient``/``detach`` in the wrong place fails here.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from .._checks import assert_close
from .._strategies import route_case
from ._base import SPARSE, prop
from ._routing import assume_margins, choosing_scores, rounding_sensitivity

STEP = 1e-6  # central differences in float64: truncation ~1e-12, cancellation ~1e-10 relative
DIRECTIONS = 2  # random directions per group of arguments
GROUPS = {"router weights": (0,), "experts": (1, 2, 3, 4), "tokens": (5,)}
# Gradients against finite differences: float64 to 1e-6 (the differences' own error is below 1e-9); float32 to
# 1e-3, the rounding of a float32 backward pass through softmax, two matmuls and a sum over the group.
SCALE = {np.dtype(np.float64): 1e3, np.dtype(np.float32): 10.0, np.dtype(np.float16): 1.0}

# Soft MoE, T = 2, D = 1, E = 1, S = 1, phi = 0: the dispatch softmax over the two tokens is (1/2, 1/2), the
# combine weight 1 (one slot); the slot input is (x0 + x1) / 2 and y_t = MLP(slot) = gelu(0) w2 + b2 = b2 for
# both tokens (w1, b1, w2, b2 = 0). So y depends on b2 alone: d/d b2 of sum_t cotangent_t y_t is
# cotangent_0 + cotangent_1 = cos 0 + cos 1 = 1.5403, every other gradient is 0 (w2's multiplies gelu(0) = 0).
GRADIENTS_HAND = {
    "router": "soft_moe",
    "x": np.array([[1.0], [3.0]]),
    "weight": np.zeros((1, 1, 1)),
    "factor": None,
    "noise": None,
    "experts": (np.zeros((1, 1, 4)), np.zeros((1, 4)), np.zeros((1, 4, 1)), np.zeros((1, 1))),
}


def _reference_output(ref, router, arrays, factor, dispatch):
    weight, w1, b1, w2, b2, x = arrays
    experts = ref.mlp_experts(w1, b1, w2, b2)
    if router == "soft_moe":
        return ref.moe_layer(x, *ref.route(router, x, weight, factor=factor), experts)
    combine = dispatch * ref.softmax_affinity(x @ weight)[:, :, None]  # the routing held at ``dispatch``
    return ref.moe_layer(x, dispatch, combine, experts)


# Soft MoE first: its dispatch is the one differentiable routing tensor, where a misplaced stop_gradient shows.
@prop("gradients", route_case, routers=("soft_moe", *SPARSE), needs="layer_gradients", examples=[GRADIENTS_HAND],
      share=0.4)  # fmt: skip
def layer_gradients_match_finite_differences(ctx, case, router):
    """``impl.layer_gradients`` along random directions in the router weights, the experts and the tokens equals
    central finite differences of the reference composition in float64, the routing held fixed."""
    if case["router"] == "soft_moe" and router != "soft_moe":
        assume(False)  # the hand case is Soft MoE's
    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    t, e = x.shape[0], w.shape[1]
    if router in SPARSE:  # the implementation's routing must be the reference's: no near-ties
        slots = ctx.ref_raw.capacity(t, e, factor)
        assume_margins(router, choosing_scores(ctx, router, x @ w, slots), factor, 1e-4)
        assume(rounding_sensitivity(ctx, router, x @ w, slots, ctx.dtype) <= 1e-4)
    arrays = [w, *params, x]
    cotangent = np.cos(np.arange(x.size)).reshape(x.shape)
    grads = ctx.impl.layer_gradients(router, x, w, tuple(params), cotangent, factor=factor)
    dt = ctx.precision("impl", *grads)
    dispatch = None if router == "soft_moe" else ctx.ref_raw.route(router, x, w, factor=factor)[0]
    rng = np.random.default_rng(0)
    for group, indices in GROUPS.items():
        for _ in range(DIRECTIONS):
            step = [rng.normal(size=a.shape) if i in indices else np.zeros_like(a) for i, a in enumerate(arrays)]
            values = []
            for sign in (1, -1):
                moved = [a + sign * STEP * s for a, s in zip(arrays, step, strict=True)]
                if dispatch is not None:  # a step that moves the routing is a tie: not the gradient's to decide
                    assume(np.array_equal(ctx.ref_raw.route(router, moved[5], moved[0], factor=factor)[0], dispatch))
                y = _reference_output(ctx.ref_raw, router, moved, factor, dispatch)
                values.append(float(np.sum(cotangent * y)))
            finite = (values[0] - values[1]) / (2 * STEP)
            analytic = sum(float(np.sum(np.asarray(g, np.float64) * s)) for g, s in zip(grads, step, strict=True))
            assert_close(f"layer_gradients along a random direction in the {group} vs central finite differences "
                         f"of the reference (routing held fixed)", np.array(analytic), np.array(finite),
                         scale=SCALE[dt], dtype=dt)  # fmt: skip
