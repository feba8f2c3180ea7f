"""The properties: invariants every implementation must satisfy, then equivalence with the reference.

Each property draws one case from its strategy and checks it. Invariant properties (groups ``capacity``,
``allocation``, ``normalization``, ``layer``) run on the implementation under test *and* on the reference
before anything is compared; ``equivalence`` properties compare the two; ``bad_input`` checks that both
reject the same invalid calls with the same exception type.

Ties. Scores given directly (allocation functions) are on a dyadic grid, so ties are exact in every dtype and
decided by the documented rule (lower index first), which is therefore tested exactly. Where a *computed*
matrix decides a choice (Sinkhorn and sparse-OT plans inside ``route``), two implementations can round a
near-tie differently; there the comparison is tie-robust: Expert Choice is accepted when each slot's token
has, by the reference's scores, the same score as the reference's token up to the dtype's tie margin;
Token Choice cases whose reference scores hold a near-tie among a token's top k + 1 are discarded with
``assume`` (the allocation is then exact). A float tie never decides a verdict. Exact ties the spec decides
stay decided: the exact zeros of a sparse-OT plan fill the remaining Expert Choice slots by the lower token
index, checked wherever rounding cannot move those zeros.

Precision. Every check judges the implementation by the dtype of its outputs as returned (before this module
converts them to float64), or by the ``--dtype`` asked for (``Context.dtype``) if coarser: tolerances, tie
margins and convergence floors all come from ``_checks``' tables for that dtype. The reference is float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import hypothesis.strategies as st
import numpy as np
from hypothesis import assume

from reference import ROUTERS

from ._checks import (
    TIE_MARGIN,
    assert_close,
    assert_equal,
    check,
    converged,
    host,
    min_gap,
    precision,
    stable_ranking,
    zero_one,
)
from ._strategies import HIDDEN, grid_matrix, logits_case, route_case, scores_case

SPARSE = ROUTERS[:5]
TOKEN_CHOICE = ROUTERS[:2]
EXPERT_CHOICE = ROUTERS[2:5]


@dataclasses.dataclass
class Context:
    impl: object  # the implementation under test (wrapped by the recorder)
    ref: object  # the reference (wrapped by the recorder)
    impl_raw: object  # the unwrapped modules, for invariants that need no recording
    ref_raw: object
    dtype: np.dtype  # the --dtype asked for: the implementation is judged at least this coarsely

    def both(self):
        """The implementation first, then the reference: invariants are checked on each."""
        return (("impl", self.impl), ("reference", self.ref))

    def precision(self, who, *outputs) -> np.dtype:
        """The dtype ``who``'s outputs are judged by: their own (read before any conversion to float64), and
        for the implementation at least as coarse as the ``--dtype`` asked for. The reference is float64."""
        return precision(*outputs, floor=self.dtype if who == "impl" else None)


@dataclasses.dataclass(frozen=True)
class Property:
    name: str
    group: str
    check: Callable  # check(ctx, case, router)
    strategy: Callable  # strategy(router) -> SearchStrategy of cases
    routers: tuple[str, ...] | None = None  # None: router-independent
    examples: tuple = ()  # hand-worked cases, run before the generated ones
    needs: str | None = None  # an attribute the implementation must have (else: not applicable)
    # Which API functions a property calls depends on the drawn case (not only on the router): an adapter's
    # examples that reach only delegated functions are then discarded one by one (see _runner.run_property).
    calls_vary: bool = False


PROPERTIES: list[Property] = []


def prop(group, strategy, routers=None, examples=(), needs=None, calls_vary=False):
    def register(fn):
        PROPERTIES.append(Property(fn.__name__, group, fn, strategy, routers, tuple(examples), needs, calls_vary))
        return fn

    return register


def _np(value):
    return host(value).astype(np.float64)


def _logits(case):
    """The logits every matrix of ``route`` sees: x @ W, plus the case's noise (Choice [noise-placement])."""
    logits = case["x"] @ case["weight"]
    return logits if case["noise"] is None else logits + case["noise"]


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


# Hand-worked cases, their arithmetic in comments.
# Algorithm 1, C = 2, k = 2: first choices t0->e0, t1->e1, t2->e1 (e1 now full); second choices t0->e1 refused,
# t1->e0 (slot 1), t2->e0 refused (full). Token-major order would have given t0 the slot (e1, 0) instead.
TC_HAND = {
    "scores": np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]),
    "weights": np.array([[0.5, 0.25], [0.125, 0.75], [1.0, 2.0]]),
    "capacity": 2,
    "k": 2,
}
# Algorithm 1, C = 1, k = 2, three experts: first choices t0->e0, t1->e0 refused (full); second choices t0->e1,
# t1->e2, which is empty: accepted (a refusal at one expert does not drop the token from the others).
TC_ROOM_HAND = {
    "scores": np.array([[0.6, 0.3, 0.1], [0.7, 0.1, 0.2]]),
    "weights": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
    "capacity": 1,
    "k": 2,
}
# Algorithm 2 with ties, C = 2: e0 scores [0.5, 0.9, 0.5, 0.1] -> t1, then the tie 0.5 goes to t0 (lower index);
# e1 scores all 0.25 -> t0, t1.
EC_HAND = {
    "scores": np.array([[0.5, 0.25], [0.9, 0.25], [0.5, 0.25], [0.1, 0.25]]),
    "weights": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]),
    "capacity": 2,
    "k": 1,
}
# Sinkhorn, T = E = 2, logits [[log 3, 0], [0, 0]], one iteration: columns -> [[3/4, 1/2], [1/4, 1/2]],
# rows -> [[3/5, 2/5], [1/3, 2/3]]. The column error after one iteration is |3/5 + 1/3 - 1| = 1/15.
SINKHORN_HAND = {"logits": np.log([[3.0, 1.0], [1.0, 1.0]]), "capacity": 1}
# Sinkhorn converging slowly: 3 tokens prefer e0 and 5 prefer e1, each by a logit gap of 6, but each column
# must carry T/E = 4, so one of the five must be moved across against e^6. After 20 iterations the column error
# is still 2.9e-3 and the 20th iteration changes the plan by about 13 times float32's tolerance: an
# implementation one iteration short fails here even in float32 (a correct float32 one is 1e3 times inside).
SINKHORN_SLOW = {"logits": np.array([[3.0, -3.0]] * 3 + [[-3.0, 3.0]] * 5), "capacity": 4}


# ------------------------------------------------------------------------------------------------ capacity


@prop("capacity", lambda r: scores_case(), examples=[TC_HAND])
def token_choice_capacity(ctx, case, router):
    scores, weights, slots, k = case["scores"], case["weights"], case["capacity"], case["k"]
    for who, m in ctx.both():
        out = m.token_choice_allocation(scores, slots, k, weights)
        dt = ctx.precision(who, *out)
        d, c = (_np(a) for a in out)
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
        d, c = (_np(a) for a in out)
        check(d.shape == (*scores.shape, slots), f"{who}: dispatch shape {d.shape}")
        d = zero_one(f"{who}: dispatch", d, dt)
        check((d.sum(axis=0) == 1).all(), f"{who}: a slot is not filled with exactly one token")
        check((d.sum(axis=2) <= 1).all(), f"{who}: an expert took the same token twice")
        expected = d * weights[:, :, None]
        assert_close(f"{who}: combine equals weights where dispatched, 0 elsewhere", c, expected, dtype=dt)


@prop("capacity", route_case, routers=SPARSE)
def route_capacity(ctx, case, router):
    x, w, factor = case["x"], case["weight"], case["factor"]
    t, e = x.shape[0], w.shape[1]
    slots = ctx.ref_raw.capacity(t, e, factor)
    probs = softmax(_logits(case))  # the stated combine matrix: softmax of the (noisy) logits (sec. 2.1-2.5)
    for who, m in ctx.both():
        out = m.route(router, x, w, factor=factor, noise=case["noise"])
        dt = ctx.precision(who, *out)
        d, c = (_np(a) for a in out)
        check(d.shape == (t, e, slots), f"{who}: dispatch shape {d.shape}, expected {(t, e, slots)}")
        d = zero_one(f"{who}: dispatch", d, dt)
        check((d.sum(axis=0) <= 1).all(), f"{who}: a slot holds more than one token")
        if router in TOKEN_CHOICE:
            check((d.sum(axis=(1, 2)) <= factor).all(), f"{who}: a token is placed in more than k experts")
        else:
            check((d.sum(axis=0) == 1).all(), f"{who}: Expert Choice left a slot empty")
        assert_close(f"{who}: combine equals softmax(logits) where dispatched", c, d * probs[:, :, None], dtype=dt)


# ---------------------------------------------------------------------------------------------- allocation


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


def _choosing_scores(ctx, router, logits, slots):
    """The matrix the reference chooses with: softmax, Sinkhorn plan or sparse-OT plan (capacity ``slots``)."""
    ref = ctx.ref_raw
    if router.startswith("softmax"):
        return ref.softmax_affinity(logits)
    if router.startswith("sinkhorn"):
        return ref.sinkhorn_affinity(logits)
    return ref.sparse_ot_affinity(logits, slots)


def _perturbed(logits, dtype):
    """The logits moved by about 4 roundings of ``dtype``, three ways."""
    size = 4 * float(np.finfo(dtype).eps) * max(1.0, float(np.abs(logits).max()))
    index = np.arange(logits.size).reshape(logits.shape)
    return [logits + size * pattern for pattern in (np.cos(index), -np.cos(index), np.sin(3 * index))]


def _stable_zeros(ctx, logits, slots, dtype) -> bool:
    """The exact zeros of the reference's sparse-OT plan stay where they are when the logits move by rounding of
    ``dtype``: no zero is a near-tie with a small positive entry, so which tokens hold zeros is the spec's to
    decide, and the spec fills the slots left to them by the lower token index."""
    zeros = ctx.ref_raw.sparse_ot_affinity(logits, slots) == 0
    return all(np.array_equal(ctx.ref_raw.sparse_ot_affinity(p, slots) == 0, zeros) for p in _perturbed(logits, dtype))


def _rounding_sensitivity(ctx, router, logits, slots, dtype, num_iters=20) -> float:
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
    return 2 * float(max(np.abs(solve(p) - plan).max() for p in _perturbed(logits, dtype)))


def _assume_margins(router, scores, k, tie):
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


@prop("allocation", route_case, routers=ROUTERS)
def relabeling_experts_permutes_the_expert_axis(ctx, case, router):
    x, w, factor, noise = case["x"], case["weight"], case["factor"], case["noise"]
    e = w.shape[1]
    perm = np.roll(np.arange(e), 1)
    for who, m in ctx.both():
        out = m.route(router, x, w, factor=factor, noise=noise)
        dt = ctx.precision(who, *out)
        d, c = (_np(a) for a in out)
        if router in SPARSE:
            scores = _choosing_scores(ctx, router, _logits(case), d.shape[2])
            _assume_margins(router, scores, factor, TIE_MARGIN[dt])
            # A choice that rounding in dt can move is not the relabeling's to decide (see _rounding_sensitivity).
            assume(_rounding_sensitivity(ctx, router, _logits(case), d.shape[2], dt) <= TIE_MARGIN[dt])
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
        d, c = (_np(a) for a in out)
        dp, cp = m.soft_moe_routing(x[perm], phi)
        assert_close(f"{who}: dispatch of permuted tokens", dp, d[perm], dtype=dt)
        assert_close(f"{who}: combine of permuted tokens", cp, c[perm], dtype=dt)


# ------------------------------------------------------------------------------------------- normalization


@prop("normalization", lambda r: logits_case(), examples=[SINKHORN_HAND])
def sinkhorn_marginals(ctx, case, router):
    logits = case["logits"]
    t, e = logits.shape
    for who, m in ctx.both():
        errors = []
        for n in (1, 5, 200):
            out = m.sinkhorn_affinity(logits, num_iters=n)
            dt = ctx.precision(who, out)
            plan = _np(out)
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
        assert_close(f"{who}: column constants", m.sinkhorn_affinity(logits + col), _np(plain), dtype=dt)
        # A row constant changes the iterates but not the solution of eq. (8): compare converged plans, the
        # convergence judged by the dtype's own floor (float32 cannot bring the column error below ~1e-6).
        solved = _np(m.sinkhorn_affinity(logits, num_iters=3000, tol=1e-12))
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
        plan = _np(out)
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
        d, c = (_np(a) for a in out)
        check((d >= 0).all() and (c >= 0).all(), f"{who}: negative routing weight")
        assert_close(f"{who}: dispatch sums to 1 over tokens for every slot", d.sum(axis=0), np.ones(d.shape[1:]),
                     dtype=dt)  # fmt: skip
        assert_close(f"{who}: combine sums to 1 over all slots for every token", c.sum(axis=(1, 2)), np.ones(len(c)),
                     dtype=dt)  # fmt: skip


# --------------------------------------------------------------------------------------------------- layer


def _mlp(params, r, inputs):
    w1, b1, w2, b2 = params
    return gelu_tanh(inputs @ w1[r] + b1[r]) @ w2[r] + b2[r]


# The layer properties that need a trainable layer come first in their group: they are the ones that catch a
# broken layer, and the suite stops at its first failure when asked to (fail_fast).


def _module_layer(ctx, case, router):
    """The implementation's ``MoELayer`` holding the case's weights, and those weights' dtype."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    t, e = x.shape[0], w.shape[1]
    layer = ctx.impl_raw.MoELayer(
        router, width=x.shape[1], hidden=HIDDEN, num_experts=e, group_size=t,
        factor=factor if router != "soft_moe" else w.shape[2] * e / t, key=jax.random.key(0),
    )  # fmt: skip
    dtype = layer.router_weight.dtype
    leaves = lambda m: (m.router_weight, m.experts.w1, m.experts.b1, m.experts.w2, m.experts.b2)  # noqa: E731
    return eqx.tree_at(leaves, layer, tuple(jnp.asarray(a, dtype) for a in (w, *params))), dtype


def _as_jax(value, dtype):
    import jax.numpy as jnp

    return jnp.asarray(value, dtype)


@prop("layer", route_case, routers=TOKEN_CHOICE, needs="MoELayer")
def layer_losses_on_clean_logits(ctx, case, router):
    """In training, the layer's importance loss is Appendix A's on the softmax of the clean logits ``x @ W``
    (the noise enters only the load loss), whatever noise the layer draws."""
    import jax

    layer, dtype = _module_layer(ctx, case, router)
    x = _as_jax(case["x"], dtype)
    expected = ctx.ref.importance_loss(softmax(case["x"] @ case["weight"]))
    for seed in (1, 2):
        _, aux = _call_layer(layer, x, jax.random.key(seed), inference=False)
        check("importance_loss" in aux, f"MoELayer's aux has no 'importance_loss' (keys: {sorted(aux)})")
        assert_close(f"MoELayer aux['importance_loss'] (key {seed}) vs reference.importance_loss(softmax(x @ W))",
                     aux["importance_loss"], expected, dtype=ctx.dtype)  # fmt: skip


@prop("layer", route_case, routers=ROUTERS, needs="MoELayer")
def inference_is_noise_free_and_key_independent(ctx, case, router):
    """``MoELayer(x, inference=True)`` draws no noise: with any key, or none, the same output (eq. (6)'s noise is a
    training-time device), equal to the reference composition without noise."""
    import jax

    layer, dtype = _module_layer(ctx, case, router)
    x = _as_jax(case["x"], dtype)
    outputs = [host(_call_layer(layer, x)[0])]
    outputs += [host(_call_layer(layer, x, jax.random.key(seed))[0]) for seed in (1, 2)]
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
    _assume_margins(router, _choosing_scores(ctx, router, x @ w, ctx.ref_raw.capacity(t, e, factor)), factor, 1e-4)
    assume(_rounding_sensitivity(ctx, router, x @ w, ctx.ref_raw.capacity(t, e, factor), ctx.dtype) <= 1e-4)
    layer, dtype = _module_layer(ctx, case, router)
    y = host(_call_layer(layer, _as_jax(x, dtype))[0])
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
    eq1 = np.stack([sum(gate[s, r] * _mlp(params, r, x[s]) for r in range(e)) for s in range(t)])
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


_JITTED = {}


def _call_layer(layer, x, key=None, inference=True):
    """``layer(x, key=key, inference=inference)``, jitted: each (structure, shape) compiles once."""
    import equinox as eqx

    if "layer" not in _JITTED:
        _JITTED["layer"] = eqx.filter_jit(lambda m, v, k, i: m(v, key=k, inference=i))
    return _JITTED["layer"](layer, x, key, inference)


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
        _assume_margins(router, _choosing_scores(ctx, router, x @ w, slots), factor, 1e-4)
        assume(_rounding_sensitivity(ctx, router, x @ w, slots, ctx.dtype) <= 1e-4)
    layer = ctx.impl_raw.MoELayer(
        router, width=x.shape[1], hidden=HIDDEN, num_experts=e, group_size=t,
        factor=factor if router != "soft_moe" else w.shape[2] * e / t, key=jax.random.key(0),
    )  # fmt: skip
    check(layer.capacity == (w.shape[2] if router == "soft_moe" else ctx.ref_raw.capacity(t, e, factor)),
          f"layer capacity {layer.capacity}")  # fmt: skip
    dtype = layer.router_weight.dtype
    leaves = lambda m: (m.router_weight, m.experts.w1, m.experts.b1, m.experts.w2, m.experts.b2)  # noqa: E731
    layer = eqx.tree_at(leaves, layer, tuple(jnp.asarray(a, dtype) for a in (w, *params)))
    y, _ = _call_layer(layer, jnp.asarray(x, dtype))
    dispatch, combine = ctx.ref.route(router, x, w, factor=factor)
    expected = ctx.ref.moe_layer(x, dispatch, combine, ctx.ref.mlp_experts(*params))
    assert_close("MoELayer(x) vs reference.moe_layer(x, *reference.route(...))", y, expected, dtype=ctx.dtype)


# --------------------------------------------------------------------------------------------- equivalence


@prop("equivalence", lambda r: st.tuples(st.integers(1, 64), st.integers(1, 16), st.sampled_from([0.5, 1, 1.25, 2])))
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


@prop("equivalence", lambda r: st.tuples(logits_case(), st.sampled_from([1, 5, 20])))
def sparse_ot_affinity_equivalence(ctx, case, router):
    lc, num_iters = case
    logits, slots = lc["logits"], lc["capacity"]
    assert_close(
        f"sparse_ot_affinity(capacity={slots}, num_iters={num_iters})",
        ctx.impl.sparse_ot_affinity(logits, slots, num_iters=num_iters),
        ctx.ref.sparse_ot_affinity(logits, slots, num_iters=num_iters),
        dtype=ctx.dtype,
        slack=_rounding_sensitivity(ctx, "sparsity_constrained_expert_choice", logits, slots, ctx.dtype, num_iters),
    )


@prop("equivalence", lambda r: logits_case(), examples=[SINKHORN_HAND, SINKHORN_SLOW])
def defaults_as_users_call_them(ctx, case, router):
    """The keyword defaults are part of the spec: called without them, the functions give the spec's values."""
    logits, slots = case["logits"], case["capacity"]
    assert_close(
        "sinkhorn_affinity(logits), the default num_iters=20, tol=None",
        ctx.impl.sinkhorn_affinity(logits),
        ctx.ref.sinkhorn_affinity(logits, num_iters=20, tol=None),
        dtype=ctx.dtype,
    )
    assert_close(
        "sparse_ot_affinity(logits, capacity), the default num_iters=20, learning_rate=1e-2",
        ctx.impl.sparse_ot_affinity(logits, slots),
        ctx.ref.sparse_ot_affinity(logits, slots, num_iters=20, learning_rate=1e-2),
        dtype=ctx.dtype,
        slack=_rounding_sensitivity(ctx, "sparsity_constrained_expert_choice", logits, slots, ctx.dtype),
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


@prop("equivalence", route_case, routers=ROUTERS)
def route_equivalence(ctx, case, router):
    x, w, factor, noise = case["x"], case["weight"], case["factor"], case["noise"]
    d, c = ctx.impl.route(router, x, w, factor=factor, noise=noise)
    rd, rc = ctx.ref.route(router, x, w, factor=factor, noise=noise)
    logits = None if router == "soft_moe" else _logits(case)
    _assert_same_routing(ctx, router, logits, factor, (d, c), (rd, rc), "route")


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
        bad = ~np.isfinite(_np(value))
        check(
            not bad.any(),
            f"route on float16 inputs: {int(bad.sum())} non-finite {name} entries "
            f"(first at {tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None})",
        )
    if router == "sparsity_constrained_expert_choice":
        # The yardstick is the implementation itself on the same values in float32. The sparse-OT solver's 20
        # Adam steps amplify rounding (see _rounding_sensitivity): at logits of -12, float32 arithmetic alone
        # can move a plan entry by 1 from the float64 reference, so the reference cannot judge a float32 solve
        # here. What low-precision inputs must not change is the implementation's own decision.
        want = tuple(_np(a) for a in ctx.impl.route(router, x.astype(np.float32), w.astype(np.float32),
                                                    factor=factor))  # fmt: skip
    else:
        want = ctx.ref.route(router, x, w, factor=factor)
    logits = None if router == "soft_moe" else x @ w
    _assert_same_routing(ctx, router, logits, factor, got, want, "route on float16 inputs")


def _assert_same_routing(ctx, router, logits, factor, got, want, what):
    """``got = impl.route(...)`` chooses and weighs as ``want = reference.route(...)``, judged by the dtype of
    ``got``: Soft MoE within tolerance; Token Choice exactly, cases with near-ties discarded; Expert Choice
    tie-robust slot by slot, with the exact zeros of a sparse-OT plan decided by the lower token index."""
    d, c = got
    rd, rc = want
    dt = ctx.precision("impl", d, c)
    d, c = _np(d), _np(c)
    check(d.shape == rd.shape, f"{what} dispatch shape {d.shape}, expected {rd.shape}")
    if router == "soft_moe":
        assert_close(f"{what} dispatch", d, rd, dtype=dt)
        assert_close(f"{what} combine", c, rc, dtype=dt)
        return
    scores = _choosing_scores(ctx, router, logits, rd.shape[2])
    d = zero_one(f"{what} dispatch", d, dt)
    if router in TOKEN_CHOICE:
        _assume_margins(router, scores, factor, TIE_MARGIN[dt])
        assert_equal(f"{what} dispatch (Token Choice, no near-ties)", d, rd)
        assert_close(f"{what} combine", c, rc, dtype=dt)
        return
    # Expert Choice, tie-robust: slot by slot, the token chosen must score what the reference's token scores.
    check((d.sum(axis=0) == 1).all(), f"{what} dispatch does not fill every slot with one token")
    got, want = d.argmax(axis=0), rd.argmax(axis=0)  # (E, C) tokens
    experts = np.arange(d.shape[1])[:, None]
    got_scores, want_scores = scores[got, experts], scores[want, experts]
    tie = TIE_MARGIN[dt] * max(1.0, np.abs(scores).max())
    tie += _rounding_sensitivity(ctx, router, logits, rd.shape[2], dt)
    bad = np.abs(got_scores - want_scores) > tie
    if bad.any():
        r, s = (int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: expert {r} slot {s} holds token {got[r, s]} (reference score {got_scores[r, s]!r}); the "
            f"reference chose token {want[r, s]} (score {want_scores[r, s]!r}), not a tie"
        )
    # Exact ties are the spec's to decide: the exact zeros of the sparse-OT plan fill an expert's remaining
    # slots by the lower token index. Checked where the zeros are stable under rounding (else near-ties).
    if router == "sparsity_constrained_expert_choice" and _stable_zeros(ctx, logits, rd.shape[2], dt):
        bad = (want_scores == 0) & (got != want)
        if bad.any():
            r, s = (int(i) for i in np.argwhere(bad)[0])
            raise AssertionError(
                f"{what}: expert {r} slot {s} holds token {got[r, s]}, the reference token {want[r, s]}: both "
                f"have an exact 0 in the sparse-OT plan, a tie the spec breaks by the lower token index"
            )
    probs = softmax(logits)
    assert_close(f"{what} combine = softmax(logits) at the chosen slots", c, d * probs[:, :, None], dtype=dt)


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


# ----------------------------------------------------------------------------------------------- bad input

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


@prop("bad_input", lambda r: st.sampled_from(sorted(BAD_CALLS)), calls_vary=True)
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
