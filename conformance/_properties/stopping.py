"""Stopping rules where they matter: Sinkhorn's ``tol`` on logits that converge slowly, so that stopping one
iteration early or late (another error measure, another moment of measuring it) moves the plan by far more than
even float32's tolerance."""

from __future__ import annotations

import numpy as np
from hypothesis import assume

from .._checks import assert_close
from .._strategies import slow_sinkhorn_case
from ._base import prop

# T = 12, E = 3: six tokens prefer e0, four e1 and two e2 by a logit gap of 4, every column must carry T/E = 4:
# e2 must take two tokens that prefer another expert against e^4, which takes dozens of iterations. With
# tol = 0.3 the reference stops after iteration 5, the first whose largest column error max_r |sum_t P[t, r] - 4|
# is below 0.3 (Choice [sinkhorn-stopping]); the mean error over the three columns is below it after iteration 4
# already, whose plan differs by 0.032 (iteration 6's by 0.015).
STOPPING_HAND = {"logits": 4.0 * np.eye(3)[[0] * 6 + [1] * 4 + [2] * 2], "tol": 0.3}
MAX_ITERS = 300
# Consecutive iterates around the stop must differ by this much for the case to be kept: ten times float32's
# tolerance for entries <= 1, so a stop one iteration away is a failure in any dtype, never rounding.
SEPARATION = 1e-3


@prop("stopping", lambda r: slow_sinkhorn_case(), examples=[STOPPING_HAND])
def sinkhorn_stops_where_the_spec_stops(ctx, case, router):
    """``sinkhorn_affinity(logits, num_iters=300, tol=tol)`` equals the reference's, on cases where the reference
    stops after more than one iteration, no column error lies within 5% of ``tol`` (rounding cannot decide the
    stop), and the plans one iteration before and after the stop differ from it by more than 1e-3."""
    logits, tol = case["logits"], case["tol"]
    t, e = logits.shape
    solve = lambda n: ctx.ref_raw.sinkhorn_affinity(logits, num_iters=n)  # noqa: E731
    stop = None
    for n in range(1, MAX_ITERS + 1):
        error = np.abs(solve(n).sum(axis=0) - t / e).max()
        assume(abs(error - tol) > 0.05 * tol)
        if error < tol:
            stop = n
            break
    assume(stop is not None and stop > 1)
    plan = solve(stop)
    for n in (stop - 1, stop + 1):
        assume(np.abs(solve(n) - plan).max() > SEPARATION)
    assert_close(
        f"sinkhorn_affinity(num_iters={MAX_ITERS}, tol={tol}): the reference stops after {stop} iterations",
        ctx.impl.sinkhorn_affinity(logits, num_iters=MAX_ITERS, tol=tol),
        ctx.ref.sinkhorn_affinity(logits, num_iters=MAX_ITERS, tol=tol),
        dtype=ctx.dtype,
    )
