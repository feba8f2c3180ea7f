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


def _patterns(logits):
    """Three perturbation patterns of the logits, each entry a function of the token's own row: identical tokens
    get identical perturbations, as a port's rounding gives them (the same values, the same arithmetic), so the
    exact ties between them stay the spec's to decide."""
    columns = np.arange(logits.shape[1])
    row = (logits * (1 + columns)).sum(axis=1, keepdims=True)  # the same for identical tokens
    return (np.cos(7 * logits + 3 * columns + row), -np.cos(7 * logits + 3 * columns + row), np.sin(5 * logits + row))


def perturbed(logits, dtype):
    """The logits moved by about 4 roundings of ``dtype``, three ways (identical tokens alike)."""
    size = 4 * float(np.finfo(dtype).eps) * max(1.0, float(np.abs(logits).max()))
    return [logits + size * pattern for pattern in _patterns(logits)]


def stable_zeros(ctx, logits, slots, dtype) -> bool:
    """The exact zeros of the reference's sparse-OT plan stay where they are when the logits move by rounding of
    ``dtype``: no zero is a near-tie with a small positive entry, so which tokens hold zeros is the spec's to
    decide, and the spec fills the slots left to them by the lower token index."""
    zeros = ctx.ref_raw.sparse_ot_affinity(logits, slots) == 0
    return all(np.array_equal(ctx.ref_raw.sparse_ot_affinity(p, slots) == 0, zeros) for p in perturbed(logits, dtype))


def _sparse_ot_in(dtype, logits, slots, num_iters):
    """The spec's sparse-OT plan (``reference.sparse_ot_affinity``: softmax utility, the sparse projection keeping
    the lower index among equal entries, Adam as in Choice [sparse-ot-adam]) with every operation in ``dtype``,
    returned in float64: what the spec's own arithmetic gives in a coarser dtype."""
    one = dtype.type(1)
    z = logits.astype(dtype)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    utility = z / z.sum(axis=1, keepdims=True)
    tokens, experts = logits.shape
    b = dtype.type(tokens / experts)
    kept = min(slots, tokens)
    ranks = np.arange(1, kept + 1)

    def column(v):
        order = np.argsort(-v, kind="stable")[:kept]  # Choice [tie-sparse-projection]: lower index first
        u = v[order]
        cumulative = np.cumsum(u, dtype=dtype)
        rho = ranks[u - (cumulative - one) / ranks.astype(dtype) > 0][-1]
        out = np.zeros_like(v)
        out[order] = np.maximum(u - (cumulative[rho - 1] - one) / dtype.type(rho), dtype.type(0))
        return out

    def plan(alpha):
        return np.stack([b * column((alpha + utility[:, r]) / b) for r in range(experts)], axis=1)

    return _adam_duals(plan, tokens, num_iters, dtype).astype(np.float64)


def _adam_duals(plan, tokens, num_iters, dtype=np.float64, rounding=None, dual_rounding=None):
    """``plan(alpha)`` at the duals the spec's Adam reaches (Choice [sparse-ot-adam]: from 0, b1 0.9, b2 0.999,
    eps 1e-8, learning rate 1e-2, the gradient the plan's row sums minus 1), every operation in ``dtype``;
    ``rounding(grad)`` added to every gradient and ``dual_rounding(alpha)`` to the duals the plan is taken at,
    when given (``_sparse_ot_rounded_gradients``)."""
    t = np.dtype(dtype).type
    rounded = (lambda a: a) if dual_rounding is None else (lambda a: a + dual_rounding(a))
    alpha, m, v = (np.zeros(tokens, t) for _ in range(3))
    for step in range(1, num_iters + 1):
        grad = plan(rounded(alpha)).sum(axis=1) - t(1)
        if rounding is not None:
            grad = grad + rounding(grad)
        m = t(0.9) * m + t(1 - 0.9) * grad  # the spec's expressions in the spec's order, so that in float64 with
        v = t(0.999) * v + t(1 - 0.999) * grad**2  # no rounding added this is the spec's solve, bit for bit
        first, second = m / t(1 - 0.9**step), v / t(1 - 0.999**step)
        alpha = alpha - t(1e-2) * first / (np.sqrt(second) + t(1e-8))
    return plan(rounded(alpha))


def _sparse_ot_rounded_gradients(ref, logits, slots, num_iters, rounding, dual_rounding=None):
    """The reference's sparse-OT solve (Choice [sparse-ot-adam]: Adam from 0, b1 0.9, b2 0.999, eps 1e-8, learning
    rate 1e-2) with ``rounding(grad)`` (T,) added to every gradient, the error a port's row sums carry in its
    dtype, and ``dual_rounding(alpha)`` to the duals where the projection compares them, the error of
    ``alpha + S``: each a function of the values computed. Built from the reference's ``softmax_affinity``
    and ``project_sparse_simplex``."""
    utility = ref.softmax_affinity(logits)
    tokens, experts = logits.shape
    b = tokens / experts

    def plan(alpha):
        return np.stack(
            [b * ref.project_sparse_simplex((alpha + utility[:, r]) / b, slots) for r in range(experts)], axis=1
        )

    return _adam_duals(plan, tokens, num_iters, rounding=rounding, dual_rounding=dual_rounding)


def rounding_sensitivity(ctx, router, logits, slots, dtype, num_iters=20) -> float:
    """How far the reference's sparse-OT plan moves under a few roundings of ``dtype``, in its inputs and in its
    own arithmetic.

    The sparse-OT solver takes Adam steps ``m / (sqrt(v) + 1e-8)``, which turn a gradient entry of any size into
    a step of about the learning rate unless it is well below 1e-8. Two roundings reach it. (1) The logits: where
    the reference's gradient is exactly 0 for tokens with equal logits, another summation order leaves ~1e-17
    (float64) or ~1e-8 (float32). (2) The gradient itself, the row sums of the plan minus 1: where it is 0
    analytically (the plan is already balanced, as whenever C = T and no entry is clipped, whatever the logits),
    a port computing in float32 gets the rounding of its row sums, about 1e-7, and Adam takes a step of the
    learning rate in its direction; the reference, in float64, gets ~1e-16 and steps 1e-10. Moving the logits
    cannot show (2), so the gradient is moved too, by 4 roundings of ``dtype`` in six patterns: every entry up, every
    entry down (a common shift of alpha leaves the exact plan unchanged, but not its rounding in ``alpha + S``, which
    Adam then amplifies: this is how optimized's float64 loop rounds, ``BALANCED_SPARSE_OT_20``), distinct tokens
    alternately up and down, either way round, and two signs drawn from each token's row and current gradient
    value; and the duals where
    the projection compares them, in two patterns drawn from each token's row and dual. Rounding is a
    function of the values computed: identical tokens, while their values are identical, are perturbed
    identically (their exact ties stay the spec's to decide); once the spec's tie rule has set them apart
    (a sparse projection keeps the lower index), their roundings differ like any other tokens'. Measured, not
    guessed: the largest change of the plan under these and three perturbations of the logits, doubled (the
    port's own roundings need not point the same way). It is 0 wherever the solve is well conditioned, and for
    the other routers.
    """
    if router != "sparsity_constrained_expert_choice":
        return 0.0
    solve = lambda v: ctx.ref_raw.sparse_ot_affinity(v, slots, num_iters=num_iters)  # noqa: E731
    plan = solve(logits)
    moved = [solve(p) for p in perturbed(logits, dtype)]
    size = 4 * float(np.finfo(dtype).eps)
    _, token_class = np.unique(logits, axis=0, return_inverse=True)
    alternate = np.where(token_class.ravel() % 2 == 0, 1.0, -1.0)
    row = (logits * (1 + np.arange(logits.shape[1]))).sum(axis=1)  # the same for identical tokens
    patterns = (
        lambda g: size * np.ones_like(g),
        lambda g: -size * np.ones_like(g),
        lambda g: size * alternate,
        lambda g: -size * alternate,
        lambda g: size * np.sign(np.cos(1e9 * g + 3 * row) + 0.5),
        lambda g: size * np.sign(np.sin(1e9 * g + 5 * row) + 0.5),
    )
    for rounding in patterns:
        moved.append(_sparse_ot_rounded_gradients(ctx.ref_raw, logits, slots, num_iters, rounding))
    # The duals where the projection compares them: two tokens whose duals the spec's tie rule has set a hair
    # apart (1e-8, say) are a tie in float32's rounding of alpha + S, decided by the lower index there.
    for phase in (0.0, 1.0):
        dual = lambda a, phase=phase: size * np.sign(np.cos(1e9 * a + 3 * row + phase) + 0.5)  # noqa: E731
        moved.append(_sparse_ot_rounded_gradients(ctx.ref_raw, logits, slots, num_iters, lambda g: 0.0, dual))
    # And the dtype's own rounding, exactly: the spec's solve with every operation in ``dtype`` (nothing new in
    # float64). In float32 copies that the tie rule set apart can meet or cross again in the rounding of alpha + S,
    # where the patterns above only approximate it: a drawn case (ten tokens, E = 4, C = 2) put optimized in
    # float32 0.0029 from the reference where the patterns gave 1e-6, and this replay reproduces optimized's plan
    # to 5e-7; in another (twelve tokens, E = 3) the float32 solve chooses other tokens (a difference of 1.0), and
    # so does this replay: the spec itself is not decided there in float32.
    if np.dtype(dtype) != np.float64:
        moved.append(_sparse_ot_in(np.dtype(dtype), logits, slots, num_iters))
    return 2 * float(max(np.abs(p - plan).max() for p in moved))


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
    # Exact ties are the spec's to decide. Identical tokens (equal rows of logits) with equal scores in the
    # reference get identical scores in any port, whatever its dtype (the same values, the same arithmetic): the
    # lower index goes first, and a swap is a wrong tie rule, not rounding. (A sparse-OT plan can give identical
    # tokens different values, by the spec's projection tie rule; those are compared by score above.)
    # The sparse-OT solver can set copies apart by less than the dtype resolves (Adam steps that differ by 1e-8),
    # so there only where the rounding model leaves the plan in place.
    swapped = (got != want) & (logits[got] == logits[want]).all(axis=-1) & (got_scores == want_scores)
    if router == "sparsity_constrained_expert_choice" and tie > TIE_MARGIN[dt] * max(1.0, np.abs(scores).max()):
        swapped[:] = False
    if swapped.any():
        r, s = (int(i) for i in np.argwhere(swapped)[0])
        raise AssertionError(
            f"{what}: expert {r} slot {s} holds token {got[r, s]}, the reference token {want[r, s]}: identical "
            f"tokens (equal logits), an exact tie the spec breaks by the lower token index"
        )
    # The exact zeros of the sparse-OT plan fill an expert's remaining
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
