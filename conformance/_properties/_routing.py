"""Comparing two routings without letting a float tie decide: choosing scores, margins, rounding sensitivity."""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from .._checks import (
    TIE_MARGIN,
    assert_close,
    assert_equal,
    check,
    min_gap,
    zero_one,
)
from ._base import EXPERT_CHOICE, TOKEN_CHOICE, f64, softmax


def choosing_scores(ctx, router, logits, slots):
    """The matrix the reference chooses with: softmax, Sinkhorn plan or sparse-OT plan (capacity ``slots``)."""
    ref = ctx.ref_raw
    if router.startswith("softmax"):
        return ref.softmax_affinity(logits)
    if router.startswith("sinkhorn"):
        return ref.sinkhorn_affinity(logits)
    return ref.sparse_ot_affinity(logits, slots)


def perturbed(logits, dtype):
    """The logits moved by about 4 roundings of ``dtype``, three ways."""
    size = 4 * float(np.finfo(dtype).eps) * max(1.0, float(np.abs(logits).max()))
    index = np.arange(logits.size).reshape(logits.shape)
    return [logits + size * pattern for pattern in (np.cos(index), -np.cos(index), np.sin(3 * index))]


def stable_zeros(ctx, logits, slots, dtype) -> bool:
    """The exact zeros of the reference's sparse-OT plan stay where they are when the logits move by rounding of
    ``dtype``: no zero is a near-tie with a small positive entry, so which tokens hold zeros is the spec's to
    decide, and the spec fills the slots left to them by the lower token index."""
    zeros = ctx.ref_raw.sparse_ot_affinity(logits, slots) == 0
    return all(np.array_equal(ctx.ref_raw.sparse_ot_affinity(p, slots) == 0, zeros) for p in perturbed(logits, dtype))


def rounding_sensitivity(ctx, router, logits, slots, dtype, num_iters=20) -> float:
    """How far the reference's sparse-OT plan moves when the logits move by a few roundings of ``dtype``.

    The sparse-OT solver takes Adam steps ``m / (sqrt(v) + 1e-8)``: where a gradient entry is exactly zero in
    the reference (tokens with equal logits), another summation order leaves one of ~1e-17 (float64) or ~1e-8
    (float32), which Adam grows into steps of the learning rate within a few iterations. A correct port can
    then end far from the reference's plan, in either dtype. Measured, not guessed: the largest change of the
    plan under three perturbations of 4 roundings, doubled (the port's own roundings need not point the same
    way). It is 0 wherever the solve is well conditioned, and for the other routers.
    """
    if router != "sparsity_constrained_expert_choice":
        return 0.0
    solve = lambda v: ctx.ref_raw.sparse_ot_affinity(v, slots, num_iters=num_iters)  # noqa: E731
    plan = solve(logits)
    return 2 * float(max(np.abs(solve(p) - plan).max() for p in perturbed(logits, dtype)))


def assume_margins(router, scores, k, tie):
    """Discard cases whose choosing scores hold a near-tie that a float could decide.

    Token Choice: among each token's top k + 1 scores. Expert Choice: among each expert's scores, except exact
    zeros of a sparse plan, which both implementations produce exactly and break by the lower token index.
    """
    if router in TOKEN_CHOICE:
        for row in scores:
            top = np.sort(row)[::-1][: k + 1]
            assume(min_gap(top) > tie * max(1.0, np.abs(top).max()))
    elif router in EXPERT_CHOICE:
        for col in scores.T:
            threshold = tie * max(1.0, np.abs(col).max())
            assume(not ((col > 0) & (col <= threshold)).any())
            assume(min_gap(col[col > threshold]) > threshold)


def assert_same_routing(ctx, router, logits, factor, got, want, what):
    """``got = impl.route(...)`` chooses and weighs as ``want = reference.route(...)``, judged by the dtype of
    ``got``: Soft MoE within tolerance; Token Choice exactly, cases with near-ties discarded; Expert Choice
    tie-robust slot by slot, with the exact zeros of a sparse-OT plan decided by the lower token index."""
    d, c = got
    rd, rc = want
    dt = ctx.precision("impl", d, c)
    d, c = f64(d), f64(c)
    check(d.shape == rd.shape, f"{what} dispatch shape {d.shape}, expected {rd.shape}")
    if router == "soft_moe":
        assert_close(f"{what} dispatch", d, rd, dtype=dt)
        assert_close(f"{what} combine", c, rc, dtype=dt)
        return
    scores = choosing_scores(ctx, router, logits, rd.shape[2])
    d = zero_one(f"{what} dispatch", d, dt)
    if router in TOKEN_CHOICE:
        assume_margins(router, scores, factor, TIE_MARGIN[dt])
        assert_equal(f"{what} dispatch (Token Choice, no near-ties)", d, rd)
        assert_close(f"{what} combine", c, rc, dtype=dt)
        return
    # Expert Choice, tie-robust: slot by slot, the token chosen must score what the reference's token scores.
    check((d.sum(axis=0) == 1).all(), f"{what} dispatch does not fill every slot with one token")
    got, want = d.argmax(axis=0), rd.argmax(axis=0)  # (E, C) tokens
    experts = np.arange(d.shape[1])[:, None]
    got_scores, want_scores = scores[got, experts], scores[want, experts]
    tie = TIE_MARGIN[dt] * max(1.0, np.abs(scores).max())
    tie += rounding_sensitivity(ctx, router, logits, rd.shape[2], dt)
    bad = np.abs(got_scores - want_scores) > tie
    if bad.any():
        r, s = (int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: expert {r} slot {s} holds token {got[r, s]} (reference score {got_scores[r, s]!r}); the "
            f"reference chose token {want[r, s]} (score {want_scores[r, s]!r}), not a tie"
        )
    # Exact ties are the spec's to decide: the exact zeros of the sparse-OT plan fill an expert's remaining
    # slots by the lower token index. Checked where the zeros are stable under rounding (else near-ties).
    if router == "sparsity_constrained_expert_choice" and stable_zeros(ctx, logits, rd.shape[2], dt):
        bad = (want_scores == 0) & (got != want)
        if bad.any():
            r, s = (int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"{what}: expert {r} slot {s} holds token {got[r, s]}, the reference token {want[r, s]}: both "
                f"have an exact 0 in the sparse-OT plan, a tie the spec breaks by the lower token index"
            )
    probs = softmax(logits)
    assert_close(f"{what} combine = softmax(logits) at the chosen slots", c, d * probs[:, :, None], dtype=dt)
