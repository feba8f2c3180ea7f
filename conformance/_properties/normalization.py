"""Normalization properties: Sinkhorn and sparse-OT marginals, Soft MoE's sums."""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from .._checks import (
    TIE_MARGIN,
    assert_close,
    check,
    converged,
)
from .._strategies import logits_case, route_case
from ._base import f64, prop
from ._cases import SINKHORN_HAND


@prop("normalization", lambda r: logits_case(), examples=[SINKHORN_HAND])
def sinkhorn_marginals(ctx, case, router):
    logits = case["logits"]
    t, e = logits.shape
    for who, m in ctx.both():
        errors = []
        for n in (1, 5, 200):
            out = m.sinkhorn_affinity(logits, num_iters=n)
            dt = ctx.precision(who, out)
            plan = f64(out)
            check((plan > 0).all(), f"{who}: Sinkhorn plan has a non-positive entry")
            assert_close(f"{who}: Sinkhorn rows sum to 1 after {n} iterations", plan.sum(axis=1), np.ones(t), dtype=dt)
            errors.append(np.abs(plan.sum(axis=0) - t / e).max())
        slack = 10 * TIE_MARGIN[dt] * t / e
        check(
            errors[2] <= errors[1] + slack and errors[1] <= errors[0] + slack,
            f"{who}: column error does not shrink with iterations: {errors} after 1, 5, 200",
        )
        # The strategy's logits lie in [-3, 3], where Sinkhorn contracts fast: the reference's column error
        # after 200 iterations is below 1e-14 on every draw (and the hand case). Any implementation's must be
        # within its dtype's convergence floor.
        check(
            errors[2] <= converged(plan, floor=dt) * t / e,
            f"{who}: column error {errors[2]:.3g} after 200 iterations, not below {converged(plan, floor=dt) * t / e:g}"
            f" ({dt}): the plan does not converge to the column marginals T/E = {t / e:g}",
        )


@prop("normalization", lambda r: logits_case())
def sinkhorn_ignores_row_and_column_constants(ctx, case, router):
    logits = case["logits"]
    t, e = logits.shape
    col, row = np.linspace(-1.0, 2.0, e), np.linspace(3.0, -2.0, t)[:, None]
    for who, m in ctx.both():
        # A column constant is absorbed by the first (column) update: unchanged at any iteration count.
        plain = m.sinkhorn_affinity(logits)
        dt = ctx.precision(who, plain)
        assert_close(f"{who}: column constants", m.sinkhorn_affinity(logits + col), f64(plain), dtype=dt)
        # A row constant changes the iterates but not the solution of eq. (8): compare converged plans, the
        # convergence judged by the dtype's own floor (float32 cannot bring the column error below ~1e-6).
        solved = f64(m.sinkhorn_affinity(logits, num_iters=3000, tol=1e-12))
        assume(np.abs(solved.sum(axis=0) - t / e).max() < converged(solved, floor=dt))
        shifted = m.sinkhorn_affinity(logits + row, num_iters=3000, tol=1e-12)
        assert_close(f"{who}: row constants (converged)", shifted, solved, scale=100, dtype=dt)


@prop("normalization", lambda r: logits_case())
def sparse_ot_plan_invariants(ctx, case, router):
    logits, slots = case["logits"], case["capacity"]
    t, e = logits.shape
    for who, m in ctx.both():
        out = m.sparse_ot_affinity(logits, slots)
        dt = ctx.precision(who, out)
        plan = f64(out)
        check((plan >= 0).all(), f"{who}: sparse-OT plan has a negative entry")
        assert_close(f"{who}: sparse-OT columns sum to T/E", plan.sum(axis=0), np.full(e, t / e), dtype=dt)
        nonzeros = (plan != 0).sum(axis=0)
        check((nonzeros <= slots).all(), f"{who}: a column has {nonzeros.max()} > C = {slots} nonzeros")


@prop("normalization", lambda r: route_case("soft_moe"))
def soft_moe_normalization(ctx, case, router):
    x, phi = case["x"], case["weight"]
    for who, m in ctx.both():
        out = m.soft_moe_routing(x, phi)
        dt = ctx.precision(who, *out)
        d, c = (f64(a) for a in out)
        check((d >= 0).all() and (c >= 0).all(), f"{who}: negative routing weight")
        assert_close(f"{who}: dispatch sums to 1 over tokens for every slot", d.sum(axis=0), np.ones(d.shape[1:]),
                     dtype=dt)  # fmt: skip
        assert_close(f"{who}: combine sums to 1 over all slots for every token", c.sum(axis=(1, 2)), np.ones(len(c)),
                     dtype=dt)  # fmt: skip
