"""The bad-input properties: the implementation refuses what the reference refuses, with the same exception type,
through every entry point."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import assume

from reference import ROUTERS

from .._checks import check
from ._base import prop

_GOOD = np.zeros((4, 2))
_X, _W = np.ones((4, 3)), np.ones((3, 2))
BAD_CALLS = {
    "nan logits": lambda m: m.softmax_affinity(np.array([[0.0, np.nan]])),
    "inf logits (sinkhorn)": lambda m: m.sinkhorn_affinity(np.array([[np.inf, 0.0]])),
    "logits of rank 1": lambda m: m.softmax_affinity(np.zeros(3)),
    "num_iters 0": lambda m: m.sinkhorn_affinity(_GOOD, num_iters=0),
    "sparse capacity 0": lambda m: m.sparse_ot_affinity(_GOOD, 0),
    "capacity 0": lambda m: m.token_choice_allocation(_GOOD, 0, 1),
    "k 0": lambda m: m.token_choice_allocation(_GOOD, 2, 0),
    "k > E": lambda m: m.token_choice_allocation(_GOOD, 2, 3),
    "k not an integer": lambda m: m.token_choice_allocation(_GOOD, 2, 1.5),
    "weights of another shape": lambda m: m.token_choice_allocation(_GOOD, 2, 1, np.zeros((4, 3))),
    "C > T for Expert Choice": lambda m: m.expert_choice_allocation(_GOOD, 5),
    "capacity below 1": lambda m: m.capacity(3, 32, 1),
    "unknown router": lambda m: m.route("switch", _X, _W),
    "W of the wrong width": lambda m: m.route("softmax_expert_choice", _X, np.ones((4, 2))),
    # The same two through Softmax Token Choice, the router every library has (a top-1 adapter covers only it).
    "W of the wrong width (Token Choice)": lambda m: m.route("softmax_token_choice", _X, np.ones((4, 2))),
    "nan tokens (Token Choice)": lambda m: m.route("softmax_token_choice", np.where(_X > 0, np.nan, 0.0), _W),
    "factor 1.5 for Token Choice": lambda m: m.route("sinkhorn_token_choice", _X, _W, factor=1.5),
    "noise of the wrong shape": lambda m: m.route("softmax_token_choice", _X, _W, noise=np.ones((4, 3))),
    "phi of the wrong width": lambda m: m.soft_moe_routing(_X, np.ones((2, 2, 1))),
    "noise for soft_moe": lambda m: m.route("soft_moe", _X, np.ones((3, 2, 1)), noise=np.ones((4, 2))),
    "soft_moe factor against phi's S": lambda m: m.route("soft_moe", _X, np.ones((3, 2, 1)), factor=1),
    "mismatched combine": lambda m: m.moe_layer(_X, np.ones((4, 2, 1)), np.ones((4, 2, 2)), m.mlp_experts(
        np.ones((2, 3, 4)), np.ones((2, 4)), np.ones((2, 4, 3)), np.ones((2, 3)))),
    "b1 of the wrong shape": lambda m: m.mlp_experts(
        np.ones((2, 3, 4)), np.ones((2, 5)), np.ones((2, 4, 3)), np.ones((2, 3))),
    "zero importance": lambda m: m.importance_loss(np.zeros((2, 2))),
    "importance of logits": lambda m: m.importance_loss(np.array([[2.0, -1.0], [0.5, 0.5]])),
    "noise_std 0": lambda m: m.load_loss(_GOOD, _GOOD, 0.0, 1),
}  # fmt: skip


# Every case is an explicit example: a profile draws fewer examples than there are cases, and a kill must not depend
# on which ones it draws (the mutation score found a port whose wrong-width refusal raised IndexError, let through
# by every draw that missed "phi of the wrong width").
@prop("bad_input", lambda r: st.sampled_from(sorted(BAD_CALLS)), calls_vary=True, examples=sorted(BAD_CALLS))
def rejects_bad_input_like_the_reference(ctx, case, router):
    kinds = []
    for m in (ctx.impl, ctx.ref):
        try:
            BAD_CALLS[case](m)
            kinds.append("no error")
        except (ValueError, TypeError) as err:
            kinds.append(type(err).__name__)
    check(kinds[1] != "no error", f"the reference accepts {case!r}")
    check(kinds[0] == kinds[1], f"{case}: the implementation raises {kinds[0]}, the reference {kinds[1]}")


# Every refusal of the spec that a factor, the tokens or the noise can trigger, tried through every entry point
# that reaches it: ``route`` for each router, and the trainable layer's constructor (if the implementation has
# ``MoELayer``) for the refusals of its factor. T = 4 tokens, E = 2 experts.
_NAN_X = np.where(_X > 0, np.nan, 0.0)
_PHI = np.ones((3, 2, 2))  # S = 2 = round(1 * 4 / 2)
ENTRY_REFUSALS = {
    "token_choice": {
        "k > E": {"factor": 3},
        "k = 0": {"factor": 0},
        "k not an integer": {"factor": 1.5},
    },
    "expert_choice": {
        "C > T (c = 3: C = round(3 * 4 / 2) = 6)": {"factor": 3},
        "C < 1 (c = 0.1: C = round(0.2) = 0)": {"factor": 0.1},
        "c negative": {"factor": -1.0},
    },
    "soft_moe": {
        "c negative": {"factor": -1.0},
        "c against phi's S (c = 2: S = 4, phi has 2)": {"factor": 2},
    },
    "sparse": {
        "nan tokens": {"x": _NAN_X},
        "W of the wrong width": {"weight": np.ones((4, 2))},
        "noise of the wrong shape": {"noise": np.ones((4, 3))},
    },
}


def _refusals(router):
    kind = "token_choice" if router.endswith("token_choice") else "expert_choice"
    kind = "soft_moe" if router == "soft_moe" else kind
    cases = dict(ENTRY_REFUSALS[kind])
    if router == "soft_moe":
        cases |= {"nan tokens": {"x": _NAN_X}, "noise for soft_moe": {"noise": np.ones((4, 2))},
                  "phi of the wrong width": {"weight": np.ones((4, 2, 2))}}  # fmt: skip
    else:
        cases |= ENTRY_REFUSALS["sparse"]
    return cases


_ENTRY_CASES = sorted(
    {name for kind in ENTRY_REFUSALS.values() for name in kind} | {"noise for soft_moe", "phi of the wrong width"}
)


@prop("bad_input", lambda r: st.sampled_from(sorted(_refusals(r))), routers=ROUTERS, examples=_ENTRY_CASES)
def refuses_at_every_entry_point(ctx, case, router):
    """Each refusal of the spec's ``route`` for this router (a factor out of range, C > T, NaN tokens, shapes) is
    a refusal of the implementation's ``route``, with the same exception type, and for a factor also of its
    ``MoELayer`` constructor: a port that clips C to T, or rounds k, instead of refusing fails here."""
    cases = _refusals(router)
    if case not in cases:  # the explicit examples name every router's cases
        assume(False)
    call = {"x": _X, "weight": _PHI if router == "soft_moe" else _W} | cases[case]
    x, weight = call.pop("x"), call.pop("weight")
    kinds = []
    for m in (ctx.impl, ctx.ref):
        try:
            m.route(router, x, weight, **call)
            kinds.append("no error")
        except (ValueError, TypeError) as err:
            kinds.append(type(err).__name__)
    check(kinds[1] != "no error", f"the reference accepts route({router!r}) with {case}")
    check(kinds[0] == kinds[1], f"route({router!r}) with {case}: the implementation raises {kinds[0]}, the "
          f"reference {kinds[1]}")  # fmt: skip
    if "factor" not in call or not hasattr(ctx.impl_raw, "MoELayer") or "phi" in case:
        return
    import jax

    try:
        ctx.impl_raw.MoELayer(router, width=3, hidden=4, num_experts=2, group_size=4, factor=call["factor"],
                              key=jax.random.key(0))  # fmt: skip
        kind = "no error"
    except (ValueError, TypeError) as err:
        kind = type(err).__name__
    check(kind == kinds[1], f"MoELayer({router!r}, group_size=4, num_experts=2, factor={call['factor']}) with "
          f"{case}: the implementation raises {kind}, the reference's route {kinds[1]}")  # fmt: skip
