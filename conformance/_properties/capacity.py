"""Capacity properties: dispatch is 0/1, slots hold one token, combine equals the given weights."""

from __future__ import annotations

from .._checks import (
    assert_close,
    check,
    zero_one,
)
from .._strategies import route_case, scores_case
from ._base import SPARSE, TOKEN_CHOICE, case_logits, f64, prop, softmax
from ._cases import CAPACITY_ROUTE_HAND, EC_HAND, TC_HAND


@prop("capacity", lambda r: scores_case(), examples=[TC_HAND])
def token_choice_capacity(ctx, case, router):
    scores, weights, slots, k = case["scores"], case["weights"], case["capacity"], case["k"]
    for who, m in ctx.both():
        out = m.token_choice_allocation(scores, slots, k, weights)
        dt = ctx.precision(who, *out)
        d, c = (f64(a) for a in out)
        t, e = scores.shape
        check(d.shape == (t, e, slots), f"{who}: dispatch shape {d.shape}, expected {(t, e, slots)}")
        d = zero_one(f"{who}: dispatch", d, dt)
        check((d.sum(axis=0) <= 1).all(), f"{who}: a slot holds more than one token")
        check((d.sum(axis=2) <= 1).all(), f"{who}: a token sits twice in one expert")
        check((d.sum(axis=(1, 2)) <= k).all(), f"{who}: a token is placed in more than k = {k} experts")
        expected = d * weights[:, :, None]
        assert_close(f"{who}: combine equals weights where dispatched, 0 elsewhere", c, expected, dtype=dt)


@prop("capacity", lambda r: scores_case(), examples=[EC_HAND])
def expert_choice_capacity(ctx, case, router):
    scores, weights, slots = case["scores"], case["weights"], case["capacity"]
    for who, m in ctx.both():
        out = m.expert_choice_allocation(scores, slots, weights)
        dt = ctx.precision(who, *out)
        d, c = (f64(a) for a in out)
        check(d.shape == (*scores.shape, slots), f"{who}: dispatch shape {d.shape}")
        d = zero_one(f"{who}: dispatch", d, dt)
        check((d.sum(axis=0) == 1).all(), f"{who}: a slot is not filled with exactly one token")
        check((d.sum(axis=2) <= 1).all(), f"{who}: an expert took the same token twice")
        expected = d * weights[:, :, None]
        assert_close(f"{who}: combine equals weights where dispatched, 0 elsewhere", c, expected, dtype=dt)


@prop("capacity", route_case, routers=SPARSE, examples=[CAPACITY_ROUTE_HAND])
def route_capacity(ctx, case, router):
    x, w, factor = case["x"], case["weight"], case["factor"]
    t, e = x.shape[0], w.shape[1]
    slots = ctx.ref_raw.capacity(t, e, factor)
    probs = softmax(case_logits(case))  # the stated combine matrix: softmax of the (noisy) logits (sec. 2.1-2.5)
    for who, m in ctx.both():
        out = m.route(router, x, w, factor=factor, noise=case["noise"])
        dt = ctx.precision(who, *out)
        d, c = (f64(a) for a in out)
        check(d.shape == (t, e, slots), f"{who}: dispatch shape {d.shape}, expected {(t, e, slots)}")
        d = zero_one(f"{who}: dispatch", d, dt)
        check((d.sum(axis=0) <= 1).all(), f"{who}: a slot holds more than one token")
        if router in TOKEN_CHOICE:
            check((d.sum(axis=(1, 2)) <= factor).all(), f"{who}: a token is placed in more than k experts")
        else:
            check((d.sum(axis=0) == 1).all(), f"{who}: Expert Choice left a slot empty")
        assert_close(f"{who}: combine equals softmax(logits) where dispatched", c, d * probs[:, :, None], dtype=dt)
