"""Equivalence properties: every API function agrees with the reference."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import assume

from reference import ROUTERS

from .._checks import (
    assert_close,
    assert_equal,
    check,
    zero_one,
)
from .._strategies import grid_matrix, logits_case, route_case, scores_case
from ._base import TOKEN_CHOICE, case_logits, f64, prop, softmax
from ._cases import (
    BALANCED_SPARSE_OT,
    BALANCED_SPARSE_OT_20,
    EC_HAND,
    SINKHORN_HAND,
    SINKHORN_SLOW,
    TC_HAND,
    ZERO_PLAN_HAND,
)
from ._routing import assert_same_routing, rounding_sensitivity

# capacity(T, E, c) = round(c T / E), refused below 1 (Choice [capacity-below-one]): (1, 1, 1) -> 1, the smallest
# group; (3, 2, 0.5) -> round(0.75) = 1; (2, 4, 1) -> round(0.5) = 0 (half to even): refused; (5, 2, 1) ->
# round(2.5) = 2 (half to even, not 3).
CAPACITY_HAND = [(1, 1, 1), (3, 2, 0.5), (2, 4, 1), (5, 2, 1)]


@prop(
    "equivalence",
    lambda r: st.tuples(st.integers(1, 64), st.integers(1, 16), st.sampled_from([0.5, 1, 1.25, 2])),
    examples=CAPACITY_HAND,
)
def capacity_function(ctx, case, router):
    tokens, experts, factor = case
    outcomes = []
    for m in (ctx.impl, ctx.ref):
        try:
            outcomes.append(m.capacity(tokens, experts, factor))
        except ValueError:
            outcomes.append("ValueError")
    check(outcomes[0] == outcomes[1], f"capacity({tokens}, {experts}, {factor}): impl {outcomes[0]}, ref {outcomes[1]}")


@prop("equivalence", lambda r: logits_case())
def softmax_affinity_equivalence(ctx, case, router):
    assert_close(
        "softmax_affinity",
        ctx.impl.softmax_affinity(case["logits"]),
        ctx.ref.softmax_affinity(case["logits"]),
        dtype=ctx.dtype,
    )


@prop(
    "equivalence",
    lambda r: st.tuples(logits_case(), st.sampled_from([1, 3, 20]), st.sampled_from([None, 1e-2, 1e-4])),
    examples=[(SINKHORN_HAND, 1, None), (SINKHORN_SLOW, 20, None)],
)
def sinkhorn_affinity_equivalence(ctx, case, router):
    lc, num_iters, tol = case
    logits = lc["logits"]
    if tol is not None:  # an error within rounding of ``tol`` would let a float decide when to stop
        t, e = logits.shape
        errors = [
            np.abs(ctx.ref_raw.sinkhorn_affinity(logits, num_iters=n).sum(0) - t / e).max()
            for n in range(1, num_iters + 1)
        ]
        assume(all(abs(err - tol) > 1e-3 * tol for err in errors))
    assert_close(
        f"sinkhorn_affinity(num_iters={num_iters}, tol={tol})",
        ctx.impl.sinkhorn_affinity(logits, num_iters=num_iters, tol=tol),
        ctx.ref.sinkhorn_affinity(logits, num_iters=num_iters, tol=tol),
        dtype=ctx.dtype,
    )


@prop("equivalence", lambda r: st.tuples(logits_case(), st.sampled_from([1, 5, 20])),
      examples=[BALANCED_SPARSE_OT, BALANCED_SPARSE_OT_20])
def sparse_ot_affinity_equivalence(ctx, case, router):
    lc, num_iters = case
    logits, slots = lc["logits"], lc["capacity"]
    assert_close(
        f"sparse_ot_affinity(capacity={slots}, num_iters={num_iters})",
        ctx.impl.sparse_ot_affinity(logits, slots, num_iters=num_iters),
        ctx.ref.sparse_ot_affinity(logits, slots, num_iters=num_iters),
        dtype=ctx.dtype,
        slack=rounding_sensitivity(ctx, "sparsity_constrained_expert_choice", logits, slots, ctx.dtype, num_iters),
    )


@prop("equivalence", lambda r: scores_case(), examples=[TC_HAND])
def token_choice_allocation_equivalence(ctx, case, router):
    args = (case["scores"], case["capacity"], case["k"], case["weights"])
    (d, c), (rd, rc) = ctx.impl.token_choice_allocation(*args), ctx.ref.token_choice_allocation(*args)
    assert_equal(
        "token_choice_allocation dispatch",
        zero_one("token_choice_allocation dispatch", d, ctx.precision("impl", d, c)),
        rd,
    )
    assert_close("token_choice_allocation combine", c, rc, dtype=ctx.dtype)


@prop("equivalence", lambda r: scores_case(), examples=[EC_HAND])
def expert_choice_allocation_equivalence(ctx, case, router):
    args = (case["scores"], case["capacity"], case["weights"])
    (d, c), (rd, rc) = ctx.impl.expert_choice_allocation(*args), ctx.ref.expert_choice_allocation(*args)
    assert_equal(
        "expert_choice_allocation dispatch",
        zero_one("expert_choice_allocation dispatch", d, ctx.precision("impl", d, c)),
        rd,
    )
    assert_close("expert_choice_allocation combine", c, rc, dtype=ctx.dtype)


@prop("equivalence", lambda r: route_case("soft_moe"))
def soft_moe_routing_equivalence(ctx, case, router):
    (d, c), (rd, rc) = (
        ctx.impl.soft_moe_routing(case["x"], case["weight"]),
        ctx.ref.soft_moe_routing(case["x"], case["weight"]),
    )
    assert_close("soft_moe_routing dispatch", d, rd, dtype=ctx.dtype)
    assert_close("soft_moe_routing combine", c, rc, dtype=ctx.dtype)


@prop("equivalence", route_case, routers=ROUTERS, examples=[ZERO_PLAN_HAND])
def route_equivalence(ctx, case, router):
    assume(case["router"] == router)  # the hand case is Sparsity-Constrained Expert Choice's
    x, w, factor, noise = case["x"], case["weight"], case["factor"], case["noise"]
    d, c = ctx.impl.route(router, x, w, factor=factor, noise=noise)
    rd, rc = ctx.ref.route(router, x, w, factor=factor, noise=noise)
    logits = None if router == "soft_moe" else case_logits(case)
    assert_same_routing(ctx, router, logits, factor, (d, c), (rd, rc), "route")


@prop("equivalence", route_case, routers=ROUTERS)
def low_precision_inputs_route_like_the_reference(ctx, case, router):
    """Tokens and router weights in float16, at the scale a ViT's residual stream reaches (``|x @ W|`` up to 48):
    ``route`` stays finite and chooses as the reference does on the same values, judged by float16's tolerances.

    The values are exact in float16 (tokens are integers up to 16, weights multiples of 1/8), so both see the
    same logits. A Sinkhorn that exponentiates in float16 overflows above 11 (a failure reported elsewhere);
    the log domain, or router math in a wider dtype, does not. Sparsity-constrained Expert Choice is compared
    with the implementation's own ``route`` on the same values in float32 (see the comment below). Token Choice
    is drawn with k = 1 here: with such logits a token's second and third probabilities are near-ties in
    float16 more often than not.
    """
    x, w = 8 * case["x"], case["weight"]
    factor = 1 if router in TOKEN_CHOICE else case["factor"]
    try:
        got = ctx.impl.route(router, x.astype(np.float16), w.astype(np.float16), factor=factor)
    except (TypeError, ValueError) as err:
        raise AssertionError(f"route refuses float16 tokens and weights: {type(err).__name__}: {err}") from err
    for name, value in zip(("dispatch", "combine"), got, strict=True):
        bad = ~np.isfinite(f64(value))
        check(
            not bad.any(),
            f"route on float16 inputs: {int(bad.sum())} non-finite {name} entries "
            f"(first at {tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None})",
        )
    if router == "sparsity_constrained_expert_choice":
        # The yardstick is the implementation itself on the same values in float32. The sparse-OT solver's 20
        # Adam steps amplify rounding (see rounding_sensitivity): at logits of -12, float32 arithmetic alone
        # can move a plan entry by 1 from the float64 reference, so the reference cannot judge a float32 solve
        # here. What low-precision inputs must not change is the implementation's own decision.
        want = tuple(f64(a) for a in ctx.impl.route(router, x.astype(np.float32), w.astype(np.float32),
                                                    factor=factor))  # fmt: skip
    else:
        want = ctx.ref.route(router, x, w, factor=factor)
    logits = None if router == "soft_moe" else x @ w
    assert_same_routing(ctx, router, logits, factor, got, want, "route on float16 inputs")


@prop("equivalence", lambda r: st.tuples(logits_case(), grid_matrix((1,)), st.integers(1, 3)))
def auxiliary_losses_equivalence(ctx, case, router):
    lc, noise_scale, k = case
    logits = lc["logits"]
    assume(k <= logits.shape[1])
    noisy = logits + 0.5 * np.abs(noise_scale[0]) * np.cos(np.arange(logits.size)).reshape(logits.shape)
    gates = softmax(logits)
    assert_close("importance_loss", ctx.impl.importance_loss(gates), ctx.ref.importance_loss(gates), dtype=ctx.dtype)
    load, ref_load = ctx.impl.load_loss(logits, noisy, 0.5, k), ctx.ref.load_loss(logits, noisy, 0.5, k)
    assert_close("load_loss", load, ref_load, dtype=ctx.dtype)


@prop("equivalence", lambda r: route_case("softmax_expert_choice"))
def mlp_experts_equivalence(ctx, case, router):
    params, x = case["experts"], case["x"]
    impl_experts, ref_experts = ctx.impl.mlp_experts(*params), ctx.ref.mlp_experts(*params)
    for r in range(params[0].shape[0]):
        assert_close(f"mlp_experts: expert {r}", impl_experts(r, x), ref_experts(r, x), dtype=ctx.dtype)
