"""Hypothesis strategies: small fixed shapes and values on a dyadic grid.

Why a grid: every value is a multiple of 1/16 (scores) or 1/8 (tokens and weights) of modest size, so it is
exactly representable in float32 and float64, and ``x @ W`` is computed exactly in both. Two values are then
either exactly equal (a tie both implementations see identically, decided by the documented tie rule) or at
least 1/64 apart (a gap no rounding can close). Where a computed matrix (a Sinkhorn or sparse-OT plan) decides
a discrete choice, the comparison is tie-robust instead; see ``_properties``.

Shapes come from a small fixed set: each new shape is a recompilation for a jit-compiled implementation.
"""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np

# (T, E) pairs: T tokens in the group, E experts; T/E is not always an integer.
SHAPES = ((8, 2), (12, 3), (10, 4), (24, 6))
WIDTHS = (3,)
HIDDEN = 4


def grid_matrix(shape, *, step=1 / 16, bound=4.0):
    """Arrays of the given shape with entries in {-bound, ..., bound} on a grid of ``step``."""
    levels = round(bound / step)
    size = int(np.prod(shape))
    return st.lists(st.integers(-levels, levels), min_size=size, max_size=size).map(
        lambda v: (np.array(v, dtype=np.float64) * step).reshape(shape)
    )


def distinct_matrix(shape):
    """Arrays whose entries are all distinct (a permutation of grid levels): no ties anywhere."""
    size = int(np.prod(shape))
    return st.permutations(range(size)).map(lambda p: ((np.array(p, np.float64) - size / 2) / 16).reshape(shape))


def capacities(tokens: int, experts: int):
    """A few capacities per shape (each is a recompilation for jit): 1, about T/E and 2T/E, and T."""
    return st.sampled_from(sorted({1, max(1, tokens // experts), max(1, 2 * tokens // experts), tokens}))


@st.composite
def scores_case(draw, *, distinct=False):
    """A (T, E) score matrix, separate combine weights, and a capacity; grid values (ties possible) or distinct."""
    tokens, experts = draw(st.sampled_from(SHAPES))
    matrix = distinct_matrix if distinct else grid_matrix
    scores = draw(matrix((tokens, experts)))
    weights = draw(grid_matrix((tokens, experts)))
    slots = draw(capacities(tokens, experts))
    k = draw(st.integers(1, min(3, experts)))
    return {"scores": scores, "weights": weights, "capacity": slots, "k": k}


@st.composite
def logits_case(draw):
    tokens, experts = draw(st.sampled_from(SHAPES))
    return {"logits": draw(grid_matrix((tokens, experts), bound=3.0)), "capacity": draw(capacities(tokens, experts))}


@st.composite
def route_case(draw, router: str):
    """Tokens x (T, D), router weights W (D, E) or phi (D, E, S), a factor, noise (T, E) for the sparse routers
    (or None), and expert MLP parameters."""
    tokens, experts = draw(st.sampled_from(SHAPES))
    width = draw(st.sampled_from(WIDTHS))
    x = draw(grid_matrix((tokens, width), step=1 / 8, bound=2.0))
    if router == "soft_moe":
        slots = draw(st.integers(1, 3))
        weight = draw(grid_matrix((width, experts, slots), step=1 / 8, bound=1.0))
        # None takes S from phi; the explicit c = S E / T is the factor that sizes phi: round(c T / E) = S.
        factor = draw(st.sampled_from((None, slots * experts / tokens)))
        noise = None  # Soft MoE takes none
    else:
        weight = draw(grid_matrix((width, experts), step=1 / 8, bound=1.0))
        if router.endswith("token_choice"):
            factor = draw(st.integers(1, min(2, experts)))
        else:  # c = E gives C = T: every token in every expert, the slots after the plan's zeros decided by ties
            factor = draw(st.sampled_from((1, 2, experts)))
        # The noise of eq. (6), on the grid of 1/16: x @ W + noise stays exact (multiples of 1/64).
        noise = draw(st.one_of(st.none(), grid_matrix((tokens, experts), step=1 / 16, bound=1.0)))
    experts_params = tuple(
        draw(grid_matrix(shape, step=1 / 8, bound=1.0))
        for shape in ((experts, width, HIDDEN), (experts, HIDDEN), (experts, HIDDEN, width), (experts, width))
    )
    return {"router": router, "x": x, "weight": weight, "factor": factor, "noise": noise, "experts": experts_params}


@st.composite
def duplicated_route_case(draw, router: str):
    """A ``route_case`` in which some tokens are exact copies of earlier ones (their noise too): ties between
    identical tokens are exact in every dtype, and the spec decides them (the lower index first)."""
    case = draw(route_case(router))
    tokens = case["x"].shape[0]
    picks = draw(st.lists(st.integers(0, tokens - 1), min_size=tokens, max_size=tokens))
    source = np.arange(tokens)
    for j, pick in enumerate(picks):
        if pick < j:  # token j copies token pick (itself a copy, perhaps: then of the same original)
            source[j] = source[pick]
    case["x"] = case["x"][source]
    if case["noise"] is not None:
        case["noise"] = case["noise"][source]
    return case


@st.composite
def slow_sinkhorn_case(draw):
    """Logits where Sinkhorn converges slowly (each token prefers one expert by a gap of 3 to 5, the experts
    unevenly wanted) and a tolerance ``tol``: the iteration at which the column error first falls below ``tol``
    is far from its neighbours, so a stopping rule that stops elsewhere is visible even in float32."""
    tokens, experts = draw(st.sampled_from(SHAPES))
    preferred = np.array(draw(st.lists(st.integers(0, experts - 1), min_size=tokens, max_size=tokens)))
    gap = draw(st.sampled_from((3.0, 4.0, 5.0)))
    logits = draw(grid_matrix((tokens, experts), bound=0.5)) + gap * np.eye(experts)[preferred]
    tol = draw(st.sampled_from((3e-1, 1e-1, 3e-2, 1e-2)))
    return {"logits": logits, "tol": tol}
