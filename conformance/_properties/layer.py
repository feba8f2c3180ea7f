"""Layer properties: eq. (2) on given routing, dropped tokens, and the trainable layer at inference."""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from reference import ROUTERS

from .._checks import (
    assert_close,
    assert_equal,
    check,
    host,
)
from .._strategies import HIDDEN, route_case
from ._base import SPARSE, prop, softmax
from ._jax_layer import as_jax, call_layer, mlp, module_layer
from ._routing import assume_margins, choosing_scores, rounding_sensitivity

# The layer properties that need a trainable layer come first in their group: they are the ones that catch a
# broken layer, and the suite stops at its first failure when asked to (fail_fast).


@prop("layer", route_case, routers=ROUTERS, needs="MoELayer")
def inference_is_noise_free_and_key_independent(ctx, case, router):
    """``MoELayer(x, inference=True)`` draws no noise: with any key, or none, the same output (eq. (6)'s noise is a
    training-time device), equal to the reference composition without noise."""
    import jax

    layer, dtype = module_layer(ctx, case, router)
    x = as_jax(case["x"], dtype)
    outputs = [host(call_layer(layer, x)[0])]
    outputs += [host(call_layer(layer, x, jax.random.key(seed))[0]) for seed in (1, 2)]
    for seed, y in zip(("1", "2"), outputs[1:], strict=True):
        assert_equal(f"MoELayer(x, key=key({seed}), inference=True) vs MoELayer(x, inference=True)", y, outputs[0])


@prop("layer", route_case, routers=SPARSE)
def dropped_tokens_get_exactly_zero(ctx, case, router):
    """A token no expert took gets exactly 0 from the MoE branch (the residual carries it), not a small number
    and not its own input: from ``moe_layer`` on the reference's tensors, and from ``MoELayer`` if there is one."""
    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    dispatch, combine = ctx.ref.route(router, x, w, factor=factor)
    dropped = dispatch.sum(axis=(1, 2)) == 0
    assume(dropped.any())
    for who, m in ctx.both():
        y = host(m.moe_layer(x, dispatch, combine, m.mlp_experts(*params)))
        check(
            not y[dropped].any(),
            f"{who}: moe_layer gives dropped token(s) {np.flatnonzero(dropped).tolist()} "
            f"a nonzero output (largest magnitude {np.abs(y[dropped]).max()!r}); eq. (2) gives them exactly 0",
        )
    if not hasattr(ctx.impl_raw, "MoELayer"):
        return
    t, e = x.shape[0], w.shape[1]
    # The layer's own routing must drop the same tokens: no near-ties a float could decide.
    assume_margins(router, choosing_scores(ctx, router, x @ w, ctx.ref_raw.capacity(t, e, factor)), factor, 1e-4)
    assume(rounding_sensitivity(ctx, router, x @ w, ctx.ref_raw.capacity(t, e, factor), ctx.dtype) <= 1e-4)
    layer, dtype = module_layer(ctx, case, router)
    y = host(call_layer(layer, as_jax(x, dtype))[0])
    check(
        not y[dropped].any(),
        f"MoELayer gives dropped token(s) {np.flatnonzero(dropped).tolist()} a nonzero "
        f"output (largest magnitude {np.abs(y[dropped]).max()!r}); eq. (2) gives them exactly 0",
    )


@prop("layer", lambda r: route_case("softmax_token_choice"))
def eq2_with_c_equal_t_recovers_eq1(ctx, case, router):
    x, w, k, params = case["x"], case["weight"], case["factor"], case["experts"]
    t, e = x.shape[0], w.shape[1]
    probs = softmax(x @ w)
    ordered = np.sort(probs, axis=1)[:, ::-1]
    if k < e:  # top_k is ambiguous when the k-th and (k+1)-th probabilities tie
        assume((ordered[:, k - 1] - ordered[:, k] > 1e-9).all())
    gate = np.where(probs >= ordered[:, [k - 1]], probs, 0.0)  # Gate_r(x_t) = top_k(softmax(W x_t))[r]
    eq1 = np.stack([sum(gate[s, r] * mlp(params, r, x[s]) for r in range(e)) for s in range(t)])
    combine = np.zeros((t, e, t))
    combine[np.arange(t), :, np.arange(t)] = gate  # eq. (3): C[t, r, c] = Gate_r(x_t) if c = t
    dispatch = (combine > 0).astype(np.float64)
    for who, m in ctx.both():
        y = m.moe_layer(x, dispatch, combine, m.mlp_experts(*params))
        assert_close(f"{who}: eq. (2) with the tensors of eq. (3) vs eq. (1)", y, eq1, dtype=ctx.precision(who, y))


@prop("layer", route_case, routers=ROUTERS)
def moe_layer_on_reference_routing(ctx, case, router):
    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    dispatch, combine = ctx.ref.route(router, x, w, factor=factor, noise=case["noise"])
    expected = ctx.ref.moe_layer(x, dispatch, combine, ctx.ref.mlp_experts(*params))
    y = ctx.impl.moe_layer(x, dispatch, combine, ctx.impl.mlp_experts(*params))
    assert_close("impl.moe_layer vs reference.moe_layer on reference.route's tensors", y, expected, dtype=ctx.dtype)


@prop("layer", route_case, routers=ROUTERS, needs="MoELayer")
def moe_layer_module_matches_reference(ctx, case, router):
    """The implementation's trainable layer (e.g. optimized.MoELayer) == reference.moe_layer o reference.route."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    t, e = x.shape[0], w.shape[1]
    if router in SPARSE:
        slots = ctx.ref_raw.capacity(t, e, factor)
        assume_margins(router, choosing_scores(ctx, router, x @ w, slots), factor, 1e-4)
        assume(rounding_sensitivity(ctx, router, x @ w, slots, ctx.dtype) <= 1e-4)
    layer = ctx.impl_raw.MoELayer(
        router, width=x.shape[1], hidden=HIDDEN, num_experts=e, group_size=t,
        factor=factor if router != "soft_moe" else w.shape[2] * e / t, key=jax.random.key(0),
    )  # fmt: skip
    check(layer.capacity == (w.shape[2] if router == "soft_moe" else ctx.ref_raw.capacity(t, e, factor)),
          f"layer capacity {layer.capacity}")  # fmt: skip
    dtype = layer.router_weight.dtype
    leaves = lambda m: (m.router_weight, m.experts.w1, m.experts.b1, m.experts.w2, m.experts.b2)  # noqa: E731
    layer = eqx.tree_at(leaves, layer, tuple(jnp.asarray(a, dtype) for a in (w, *params)))
    y, _ = call_layer(layer, jnp.asarray(x, dtype))
    dispatch, combine = ctx.ref.route(router, x, w, factor=factor)
    expected = ctx.ref.moe_layer(x, dispatch, combine, ctx.ref.mlp_experts(*params))
    assert_close("MoELayer(x) vs reference.moe_layer(x, *reference.route(...))", y, expected, dtype=ctx.dtype)
