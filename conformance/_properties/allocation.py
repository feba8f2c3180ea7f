"""Allocation properties: Algorithms 1 and 2 choose as written; relabeling and permutation equivariance."""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from reference import ROUTERS

from .._checks import (
    TIE_MARGIN,
    assert_close,
    assert_equal,
    check,
    stable_ranking,
    zero_one,
)
from .._strategies import route_case, scores_case
from ._base import SPARSE, case_logits, f64, prop
from ._cases import EC_HAND, TC_HAND, TC_ROOM_HAND
from ._routing import assume_margins, choosing_scores, rounding_sensitivity


@prop("allocation", lambda r: scores_case(), examples=[EC_HAND])
def expert_choice_takes_best_tokens(ctx, case, router):
    scores, slots = case["scores"], case["capacity"]
    best = stable_ranking(scores, axis=0)[:slots]  # (C, E): each expert's C best tokens, lower index on ties
    for who, m in ctx.both():
        out = m.expert_choice_allocation(scores, slots)
        d = zero_one(f"{who}: dispatch", out[0], ctx.precision(who, *out))
        chosen = d.argmax(axis=0).T  # (C, E): the token in each slot
        assert_equal(f"{who}: tokens in slots 0..C-1 of each expert (C best by score, in order)", chosen, best)


@prop("allocation", lambda r: scores_case(), examples=[TC_HAND, TC_ROOM_HAND])
def token_choice_follows_algorithm_1(ctx, case, router):
    scores, slots, k = case["scores"], case["capacity"], case["k"]
    ranking = stable_ranking(scores, axis=1)  # ranking[t, i]: token t's i-th choice (lower index on ties)
    t_count = scores.shape[0]
    for who, m in ctx.both():
        out = m.token_choice_allocation(scores, slots, k)
        d = zero_one(f"{who}: dispatch", out[0], ctx.precision(who, *out))
        placed = d.any(axis=2)  # (T, E)
        for t in range(t_count):
            allowed = set(ranking[t, :k].tolist())
            got = set(np.nonzero(placed[t])[0].tolist())
            check(got <= allowed, f"{who}: token {t} placed in experts {sorted(got)}, not among its top k {allowed}")
        accepted = {(i, t): bool(placed[t, ranking[t, i]]) for i in range(k) for t in range(t_count)}
        for (i, t), ok in accepted.items():
            if ok:
                continue
            r = ranking[t, i]
            # Algorithm 1 refuses a request only when its expert is full: C requests visited before it accepted.
            before = sum(
                ok2 and ranking[t2, i2] == r for (i2, t2), ok2 in accepted.items() if i2 < i or (i2 == i and t2 < t)
            )
            check(
                before == slots,
                f"{who}: token {t}'s choice #{i + 1} (expert {r}) was refused although the expert held only "
                f"{before} of C = {slots} tokens when Algorithm 1 visited it",
            )
            for (i2, t2), ok2 in accepted.items():
                if ok2 and ranking[t2, i2] == r and ((i2 == i and t2 > t) or i2 > i):
                    raise AssertionError(
                        f"{who}: token {t}'s choice #{i + 1} (expert {r}) was refused, but token {t2}'s choice "
                        f"#{i2 + 1} for the same expert, visited later by Algorithm 1, was accepted"
                    )
        # Algorithm 1 gives each accepted request the expert's next free slot, in visiting order.
        for r in range(scores.shape[1]):
            order = [t for i in range(k) for t in range(t_count) if ranking[t, i] == r and accepted[(i, t)]]
            expected = [d[t, r].argmax() for t in order]
            assert_equal(f"{who}: slots of expert {r} in visiting order", np.array(expected), np.arange(len(order)))


@prop("allocation", route_case, routers=ROUTERS)
def relabeling_experts_permutes_the_expert_axis(ctx, case, router):
    x, w, factor, noise = case["x"], case["weight"], case["factor"], case["noise"]
    e = w.shape[1]
    perm = np.roll(np.arange(e), 1)
    for who, m in ctx.both():
        out = m.route(router, x, w, factor=factor, noise=noise)
        dt = ctx.precision(who, *out)
        d, c = (f64(a) for a in out)
        if router in SPARSE:
            scores = choosing_scores(ctx, router, case_logits(case), d.shape[2])
            assume_margins(router, scores, factor, TIE_MARGIN[dt])
            # A choice that rounding in dt can move is not the relabeling's to decide (see rounding_sensitivity).
            assume(rounding_sensitivity(ctx, router, case_logits(case), d.shape[2], dt) <= TIE_MARGIN[dt])
        wp, noisep = (w[..., perm, :], None) if w.ndim == 3 else (w[:, perm], None if noise is None else noise[:, perm])
        dp, cp = m.route(router, x, wp, factor=factor, noise=noisep)
        assert_close(f"{who}: dispatch with experts relabeled", dp, d[:, perm], dtype=dt)
        assert_close(f"{who}: combine with experts relabeled", cp, c[:, perm], dtype=dt)


@prop("allocation", route_case, routers=("soft_moe",))
def soft_moe_is_equivariant_to_token_permutations(ctx, case, router):
    x, phi = case["x"], case["weight"]
    perm = np.roll(np.arange(x.shape[0]), 3)
    for who, m in ctx.both():
        out = m.soft_moe_routing(x, phi)
        dt = ctx.precision(who, *out)
        d, c = (f64(a) for a in out)
        dp, cp = m.soft_moe_routing(x[perm], phi)
        assert_close(f"{who}: dispatch of permuted tokens", dp, d[perm], dtype=dt)
        assert_close(f"{who}: combine of permuted tokens", cp, c[perm], dtype=dt)
