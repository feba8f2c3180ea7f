"""Exact ties kept exact: identical tokens tie in every dtype, and the spec decides those ties (the lower index).

The tie-robust comparisons elsewhere forgive a swap of two tokens whose scores are within rounding of each other,
and the rounding model perturbs tokens one by one. Neither may forgive a wrong tie rule: identical tokens get
identical scores in any port, so which of them an expert (or a sparse projection) takes first is the spec's
rule, checked exactly here, with the rounding model perturbing identical tokens identically.
"""

from __future__ import annotations

import numpy as np

from .._checks import assert_close
from .._coverage import NotCovered
from .._strategies import duplicated_route_case
from ._base import SPARSE, case_logits, prop
from ._routing import assert_same_routing, rounding_sensitivity

# Sparsity-Constrained Expert Choice, T = 8, E = 2, c = 1 (C = 4): tokens 0-3 and 4-7 are four copies each of
# two tokens, logits (1, 0) and (0, 1). Each column of the sparse-OT plan can hold 4 nonzeros and every token of
# the preferred group has the same value: the sparse projection keeps all four (no cut among copies), each
# getting T/E / 4 = 1 in its expert; e0 takes tokens 0, 1, 2, 3 in that order (lower index first among
# equals), e1 takes 4, 5, 6, 7. With C = 2 (x two copies each, below) the cut falls among copies: the spec
# keeps the lower indices.
TIES_HAND = {
    "router": "sparsity_constrained_expert_choice",
    "x": np.array([[1.0, 0.0, 0.0]] * 4 + [[0.0, 1.0, 0.0]] * 4),
    "weight": np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
    "factor": 1,
    "noise": None,
    "experts": (np.zeros((2, 3, 4)), np.zeros((2, 4)), np.zeros((2, 4, 3)), np.zeros((2, 3))),
}
# T = 12, E = 3, c = 1: C = 4 and six copies of a token preferring e0 (logits (1, 0, 0)): the first projection
# of e0's column cuts among the six copies, keeping tokens 0-3 (the lower indices), never 2-5. The other tokens'
# logits, (0, 0.75, 0.25) and (0.125, 0, 0.5), break the symmetry that would tie tokens of different rows too.
TIES_CUT = {
    **TIES_HAND,
    "x": np.array([[1.0, 0.0, 0.0]] * 6 + [[0.0, 1.0, 0.0]] * 3 + [[0.0, 0.0, 1.0]] * 3),
    "weight": np.array([[1.0, 0.0, 0.0], [0.0, 0.75, 0.25], [0.125, 0.0, 0.5]]),
    "experts": (np.zeros((3, 3, 4)), np.zeros((3, 4)), np.zeros((3, 4, 3)), np.zeros((3, 3))),
}


@prop("ties", duplicated_route_case, routers=SPARSE, examples=[TIES_HAND, TIES_CUT], share=0.4)
def identical_tokens_tie_exactly(ctx, case, router):
    """With exact copies among the tokens, ``route`` chooses as the reference does, and an expert's slots go to
    identical tokens in increasing index order; the sparse-OT plan itself equals the reference's within the
    rounding model, which keeps copies identical (a projection that cuts among copies by the higher index fails)."""
    x, w, factor, noise = case["x"], case["weight"], case["factor"], case["noise"]
    d, c = ctx.impl.route(router, x, w, factor=factor, noise=noise)
    if router == "sparsity_constrained_expert_choice" and ctx.precision("impl", d, c) != np.float64:
        # Judged in float64 only. In float32 the solver's own rounding can decide among copies, and the rounding
        # model does not always see it: copies the tie rule set apart come back within float32's resolution of
        # each other in alpha + S (a drawn case: at the eleventh Adam step, a gap of 8.5e-7 at values near 1.3, some six
        # float32 roundings, where the model moves the duals by four), and then optimized's XLA arithmetic and the
        # spec's replayed in float32 (numpy) order them differently. Each agrees with the float64 spec to 1e-7 up to
        # that step. Rounding, not a tie rule (conformance/README.md, "float32 copies under sparse OT").
        raise NotCovered("copies under the sparse-OT solver are judged in float64 only (see conformance/README)")
    rd, rc = ctx.ref.route(router, x, w, factor=factor, noise=noise)
    logits = case_logits(case)
    assert_same_routing(ctx, router, logits, factor, (d, c), (rd, rc), "route with identical tokens")
    if router == "sparsity_constrained_expert_choice":
        slots = rd.shape[2]
        assert_close(
            f"sparse_ot_affinity(logits, {slots}) with identical tokens",
            ctx.impl.sparse_ot_affinity(logits, slots),
            ctx.ref.sparse_ot_affinity(logits, slots),
            dtype=ctx.dtype,
            slack=rounding_sensitivity(ctx, router, logits, slots, ctx.dtype),
        )
