"""The trainable layer in training, compared with the spec for a given key: its noise, output and auxiliary losses.

The spec's noise (eq. 6, Appendix A): Softmax Token Choice adds ``sigma * eps`` to its logits in training, with
``sigma = 1/E`` (V-MoE's noise_std; Choice [load-probability] in the reference) and ``eps`` the standard normal
(T, E) the layer draws from its key; the other routers draw none. The suite reconstructs ``eps`` from the key
with the implementation's ``training_noise(key, shape, dtype)`` if it has one (a PyTorch port maps its
generator there), else with ``jax.random.normal(key, shape, dtype)``, as ``optimized`` draws. The layer is built
with its default noise, so a wrong default standard deviation is caught here too.
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from .._checks import assert_close, check
from .._strategies import route_case
from ._base import SPARSE, TOKEN_CHOICE, f64, prop, softmax
from ._jax_layer import as_jax, call_layer, module_layer
from ._routing import assume_margins, choosing_scores, rounding_sensitivity

# Softmax Token Choice with k = E = 2 and C = T = 8, W = 0 and identical experts whose only nonzero parameter is
# b2 = 1: every token sits in both experts with combine weights softmax(noise), which sum to 1, and each expert
# outputs MLP(x) = gelu(0) @ w2 + b2 = (1, 1, 1); so y = 1 for every token whatever noise the key draws. The
# clean logits are 0: importances 4 and 4, importance loss 0. The load loss depends on the drawn noise.
TRAINING_HAND = {
    "router": "softmax_token_choice",
    "x": np.array([[0.5, -0.25, 1.0]] * 4 + [[0.0, 0.125, -1.0]] * 4),
    "weight": np.zeros((3, 2)),
    "factor": 2,
    "noise": None,
    "experts": (np.zeros((2, 3, 4)), np.zeros((2, 4)), np.zeros((2, 4, 3)), np.ones((2, 3))),
}


def spec_noise(ctx, key, shape, dtype) -> np.ndarray:
    """``sigma * eps`` as the spec draws it for ``key``: sigma = 1/E, eps the implementation's standard normal."""
    draw = getattr(ctx.impl_raw, "training_noise", None)
    if draw is None:
        import jax

        draw = jax.random.normal
    return f64(draw(key, shape, dtype)) / shape[1]


@prop("training", route_case, routers=SPARSE, needs="MoELayer", examples=[TRAINING_HAND], share=0.4)
def layer_in_training_matches_reference(ctx, case, router):
    """``MoELayer(x, key=key, inference=False)`` equals the reference composition on the logits plus the spec's
    noise for that key, and its ``aux["importance_loss"]`` and ``aux["load_loss"]`` equal Appendix A's: the
    importance loss on ``softmax(x @ W)``, the clean logits (both Token Choice routers), and the load loss of the
    clean and noisy logits with the noise's standard deviation 1/E (Softmax Token Choice)."""
    import jax

    if case["router"] != router:  # the hand case is Softmax Token Choice's
        assume(False)
    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    t, e = x.shape[0], w.shape[1]
    layer, dtype = module_layer(ctx, case, router)
    key = jax.random.key(7)
    y, aux = call_layer(layer, as_jax(x, dtype), key, inference=False)
    clean = x @ w
    noise = spec_noise(ctx, key, (t, e), dtype) if router == "softmax_token_choice" else None
    logits = clean if noise is None else clean + noise
    # The layer's own routing must choose as the reference does: no near-ties a float could decide.
    slots = ctx.ref_raw.capacity(t, e, factor)
    assume_margins(router, choosing_scores(ctx, router, logits, slots), factor, 1e-4)
    assume(rounding_sensitivity(ctx, router, logits, slots, ctx.dtype) <= 1e-4)
    dispatch, combine = ctx.ref.route(router, x, w, factor=factor, noise=noise)
    expected = ctx.ref.moe_layer(x, dispatch, combine, ctx.ref.mlp_experts(*params))
    what = "MoELayer(x, key=key, inference=False) vs reference.moe_layer(x, *reference.route(..., noise=eps / E))"
    assert_close(what, y, expected, dtype=ctx.dtype)
    if hasattr(layer, "token_expert_weights"):  # the combine weights themselves, where the layer shows them
        weights = layer.token_expert_weights(as_jax(x, dtype), key=key, inference=False)
        assert_close("MoELayer.token_expert_weights in training vs the reference's combine summed over slots",
                     weights, combine.sum(axis=2), dtype=ctx.dtype)  # fmt: skip
    if router not in TOKEN_CHOICE:
        return
    check("importance_loss" in aux, f"MoELayer's aux has no 'importance_loss' (keys: {sorted(aux)})")
    assert_close("MoELayer aux['importance_loss'] vs reference.importance_loss(softmax(x @ W)), the clean logits",
                 aux["importance_loss"], ctx.ref.importance_loss(softmax(clean)), dtype=ctx.dtype)  # fmt: skip
    if router == "softmax_token_choice":
        check("load_loss" in aux, f"MoELayer's aux has no 'load_loss' (keys: {sorted(aux)})")
        assert_close("MoELayer aux['load_loss'] vs reference.load_loss(x @ W, x @ W + noise, 1 / E, k)",
                     aux["load_loss"], ctx.ref.load_loss(clean, logits, 1 / e, factor), dtype=ctx.dtype)  # fmt: skip
