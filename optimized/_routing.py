"""Routing decisions in JAX: affinities (eqs. 6, 8, 9), Algorithms 1 and 2 as compact results, Soft MoE.

The hot path never builds a (T, E, C) tensor for the sparse routers. Each allocation returns a compact
``Routing``: for every expert slot (E, C), the token it holds, its combine weight and whether it is used.
The spec-mirroring functions (``token_choice_allocation`` and friends) are a thin dense view of that same
result, so what the conformance suite proves of them is proved of the code that trains.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._checks import float_array, integer, positive_real, same_shape

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


class Routing(NamedTuple):
    """The compact routing result of a sparse router on one group of T tokens.

    ``token_index[r, c]`` is the token in slot c of expert r (T where the slot is empty), ``weight[r, c]``
    its combine weight (0 where empty) and ``valid[r, c]`` whether the slot holds a token.
    """

    token_index: Int[Array, "E C"]
    weight: Float[Array, "E C"]
    valid: Bool[Array, "E C"]


def capacity(num_tokens: int, num_experts: int, factor: float) -> int:
    """``C = round(factor * T / E)`` (sec. 3.1), Python's round (halves to even); below 1 is an error."""
    num_tokens = integer("num_tokens", num_tokens, minimum=1)
    num_experts = integer("num_experts", num_experts, minimum=1)
    factor = positive_real("factor", factor)
    result = rounded_capacity(num_tokens, num_experts, factor)
    if result < 1:
        raise ValueError(
            f"capacity round(factor * num_tokens / num_experts) = round({factor} * {num_tokens} / {num_experts}) "
            f"= {result} is below 1; use more tokens per group, fewer experts or a larger factor"
        )
    return result


def rounded_capacity(num_tokens: int, num_experts: int, factor: float) -> int:
    """``round(factor * T / E)`` without any check: the one rounding that ``capacity`` and Soft MoE's slots share."""
    return round(factor * num_tokens / num_experts)


# ----------------------------------------------------------------------------------------------- affinities


def router_dtype(dtype) -> jnp.dtype:
    """The dtype the router's math runs in for tokens of ``dtype``: ``dtype`` promoted to at least float32.

    Choice: softmax, Sinkhorn and the sparse-OT solver never run in bfloat16 or float16, even when the layer
    does: their exponentials overflow there (float16 above 11), and near-equal plan entries would decide
    choices by rounding. V-MoE's routers likewise compute in float32.
    """
    return jnp.promote_types(dtype, jnp.float32)


def softmax_affinity(logits) -> Float[Array, "T E"]:
    """Eq. (6): softmax over experts of (T, E) logits (noise, if any, already added)."""
    logits = float_array("logits", logits, "(T, E)")
    return _softmax(logits)


@jax.jit
def _softmax(logits):
    return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("num_iters", "tol"))
def _sinkhorn(logits: Float[Array, "T E"], num_iters: int, tol: float | None) -> Float[Array, "T E"]:
    num_tokens, num_experts = logits.shape
    log_col = jnp.log(jnp.asarray(num_tokens / num_experts, logits.dtype))

    def one_iteration(f, g):
        g = log_col - jax.nn.logsumexp(logits + f[:, None], axis=0)  # columns to T/E
        f = -jax.nn.logsumexp(logits + g[None, :], axis=1)  # then rows to 1
        return f, g

    # zeros_like(a slice of logits), not zeros(...): the carry then has the logits' type, including the
    # devices it varies over when the router runs inside shard_map (expert parallelism).
    f = jnp.zeros_like(logits[:, 0])
    g = jnp.zeros_like(logits[0])
    if tol is None:
        f, g = jax.lax.fori_loop(0, num_iters, lambda _, fg: one_iteration(*fg), (f, g))
    else:

        def column_error(f, g):
            plan = jnp.exp(logits + f[:, None] + g[None, :])
            return jnp.max(jnp.abs(plan.sum(axis=0) - num_tokens / num_experts))

        def body(state):
            i, f, g, _ = state
            f, g = one_iteration(f, g)
            return i + 1, f, g, column_error(f, g)

        def cond(state):
            i, _, _, error = state
            return (i < num_iters) & (error >= tol)

        init = (jnp.asarray(0), f, g, jnp.full_like(logits[0, 0], jnp.inf))
        _, f, g, _ = jax.lax.while_loop(cond, body, init)
    return jnp.exp(logits + f[:, None] + g[None, :])


def sinkhorn_affinity(logits, *, num_iters: int = 20, tol: float | None = None) -> Float[Array, "T E"]:
    """Eq. (8) by log-domain Sinkhorn: columns to T/E, then rows to 1, ``num_iters`` times or until the
    largest absolute column error after an iteration is below ``tol``."""
    logits = float_array("logits", logits, "(T, E)")
    num_iters = integer("num_iters", num_iters, minimum=1)
    if tol is not None:
        tol = positive_real("tol", tol)
    return _sinkhorn(logits, num_iters, tol)


def _project_sorted_simplex(u: Float[Array, "... n"]) -> Float[Array, "... n"]:
    """Projection onto the simplex of vectors already sorted in decreasing order (Duchi et al. 2008)."""
    n = u.shape[-1]
    cumulative = jnp.cumsum(u, axis=-1)
    ranks = jnp.arange(1, n + 1, dtype=u.dtype)
    support = u - (cumulative - 1) / ranks > 0
    rho = jnp.max(jnp.where(support, jnp.arange(1, n + 1), 0), axis=-1)  # >= 1: the first entry qualifies
    theta = (jnp.take_along_axis(cumulative, (rho - 1)[..., None], axis=-1) - 1) / rho[..., None].astype(u.dtype)
    return jnp.maximum(u - theta, 0)


def _sparse_columns(alpha, utility, slots):
    """Columns of the plan at duals ``alpha``: (E, C) values ``b * P_C((alpha + S[:, r]) / b)`` and their tokens."""
    num_tokens, num_experts = utility.shape
    b = num_tokens / num_experts
    kept = min(slots, num_tokens)
    top_values, top_tokens = jax.lax.top_k((alpha[:, None] + utility).T / b, kept)  # ties: lower token first
    return b * _project_sorted_simplex(top_values), top_tokens


@functools.partial(jax.jit, static_argnames=("slots", "num_iters", "learning_rate"))
def _sparse_ot(logits, slots: int, num_iters: int, learning_rate: float):
    """Adam on the negative semi-dual; returns the (E, C) columns of the final plan and their tokens."""
    utility = jax.nn.softmax(logits, axis=-1)
    num_tokens = logits.shape[0]

    def row_sums(values, tokens):
        return jnp.zeros(num_tokens, values.dtype).at[tokens.ravel()].add(values.ravel())

    def adam_step(i, state):
        alpha, first, second = state
        grad = row_sums(*_sparse_columns(alpha, utility, slots)) - 1
        first = ADAM_B1 * first + (1 - ADAM_B1) * grad
        second = ADAM_B2 * second + (1 - ADAM_B2) * grad**2
        step = (i + 1).astype(logits.dtype)
        update = (first / (1 - ADAM_B1**step)) / (jnp.sqrt(second / (1 - ADAM_B2**step)) + ADAM_EPS)
        return alpha - learning_rate * update, first, second

    zeros = jnp.zeros_like(logits[:, 0])  # the logits' type, as in _sinkhorn
    alpha, _, _ = jax.lax.fori_loop(0, num_iters, adam_step, (zeros, zeros, zeros))
    values, tokens = _sparse_columns(alpha, utility, slots)
    return values, tokens, row_sums(values, tokens)


def _dense_plan(values, tokens, num_tokens):
    num_experts = values.shape[0]
    experts = jnp.broadcast_to(jnp.arange(num_experts)[:, None], tokens.shape)
    return jnp.zeros((num_tokens, num_experts), values.dtype).at[tokens, experts].set(values)


def sparse_ot_affinity(logits, capacity: int, *, num_iters: int = 20, learning_rate: float = 1e-2):
    """Eq. (9) approximated by ``num_iters`` Adam steps on the semi-dual (Liu, Puigcerver & Blondel, 2023);
    column r of the plan is ``b * P_C((alpha + softmax(logits)[:, r]) / b)`` with ``b = T/E``."""
    logits = float_array("logits", logits, "(T, E)")
    slots = integer("capacity", capacity, minimum=1)
    num_iters = integer("num_iters", num_iters, minimum=1)
    learning_rate = positive_real("learning_rate", learning_rate)
    values, tokens, _ = _sparse_ot(logits, slots, num_iters, learning_rate)
    return _dense_plan(values, tokens, logits.shape[0])


_dense_plan = jax.jit(_dense_plan, static_argnames=("num_tokens",))


# ---------------------------------------------------------------------------------------------- allocation


@functools.partial(jax.jit, static_argnames=("slots", "k"))
def token_choice_routing(scores: Float[Array, "T E"], slots: int, k: int, weights=None) -> Routing:
    """Algorithm 1 without a loop over tokens.

    Requests are laid out choice-major (all first choices in token order, then all second choices, ...),
    exactly the order in which Algorithm 1 visits them. A request's position in its expert's queue is the
    number of earlier requests for that expert, a cumulative count; it gets slot = position if that is
    below C and is dropped otherwise (once an expert is full it stays full, so earlier requests were all
    accepted and the slot is the next free one).
    """
    num_tokens, num_experts = scores.shape
    weights = scores if weights is None else weights
    _, choices = jax.lax.top_k(scores, k)  # (T, k); ties: lower expert index first
    expert = choices.T.reshape(-1)  # (k T,), choice-major
    token = jnp.tile(jnp.arange(num_tokens, dtype=jnp.int32), k)
    requests = jax.nn.one_hot(expert, num_experts, dtype=jnp.int32)  # (k T, E)
    position = jnp.sum(jnp.cumsum(requests, axis=0) * requests, axis=1) - 1
    slot = jnp.where(position < slots, position, slots)  # slot C is out of range: the request is dropped
    token_index = jnp.full((num_experts, slots), num_tokens, jnp.int32).at[expert, slot].set(token, mode="drop")
    weight = jnp.zeros((num_experts, slots), weights.dtype).at[expert, slot].set(weights[token, expert], mode="drop")
    return Routing(token_index, weight, token_index < num_tokens)


@functools.partial(jax.jit, static_argnames=("slots",))
def expert_choice_routing(scores: Float[Array, "T E"], slots: int, weights=None) -> Routing:
    """Algorithm 2: each expert takes its C best tokens by score (ties: lower token index first)."""
    weights = scores if weights is None else weights
    _, token_index = jax.lax.top_k(scores.T, slots)  # (E, C)
    weight = jnp.take_along_axis(weights.T, token_index, axis=1)
    return Routing(token_index.astype(jnp.int32), weight, jnp.ones(token_index.shape, bool))


@functools.partial(jax.jit, static_argnames=("num_tokens",))
def dense_routing(routing: Routing, num_tokens: int) -> tuple[Float[Array, "T E C"], Float[Array, "T E C"]]:
    """The (T, E, C) dispatch and combine tensors of a compact ``Routing`` (for checking, not for training)."""
    dispatch = jax.nn.one_hot(routing.token_index, num_tokens, dtype=routing.weight.dtype)  # (E, C, T)
    dispatch = jnp.where(routing.valid[..., None], dispatch, 0).transpose(2, 0, 1)
    return dispatch, dispatch * routing.weight[None]


def _scores_and_weights(scores, weights):
    scores = float_array("scores", scores, "(T, E)")
    if weights is None:
        return scores, scores
    weights = float_array("weights", weights, "(T, E)")
    same_shape("weights", weights, scores.shape, "(T, E) of scores")
    return scores, weights


def token_choice_allocation(scores, capacity: int, k: int, weights=None):
    """Algorithm 1 as dense (T, E, C) dispatch and combine tensors (a view of ``token_choice_routing``)."""
    scores, weights = _scores_and_weights(scores, weights)
    slots = integer("capacity", capacity, minimum=1)
    k = integer("k", k, minimum=1, maximum=scores.shape[1], what=" (experts per token, at most E)")
    return dense_routing(token_choice_routing(scores, slots, k, weights), scores.shape[0])


def expert_choice_allocation(scores, capacity: int, weights=None):
    """Algorithm 2 as dense (T, E, C) dispatch and combine tensors (a view of ``expert_choice_routing``)."""
    scores, weights = _scores_and_weights(scores, weights)
    slots = integer("capacity", capacity, minimum=1)
    if slots > scores.shape[0]:
        raise ValueError(
            f"capacity must be at most the number of tokens T = {scores.shape[0]} for Expert Choice "
            f"(each expert fills all its slots with distinct tokens), got {slots}"
        )
    return dense_routing(expert_choice_routing(scores, slots, weights), scores.shape[0])


# ------------------------------------------------------------------------------------------------- Soft MoE


@jax.jit
def soft_moe_logits(x: Float[Array, "T D"], phi: Float[Array, "D E S"]) -> Float[Array, "T E S"]:
    """Eq. (10): ``Z[t, r, c] = x[t] . phi[:, r, c]``."""
    return jnp.einsum("td,des->tes", x, phi)


@jax.jit
def soft_moe_tensors(logits: Float[Array, "T E S"]):
    """Eq. (11): dispatch is a softmax over tokens, combine a softmax over all E * S slots of a token."""
    num_tokens = logits.shape[0]
    dispatch = jax.nn.softmax(logits, axis=0)
    combine = jax.nn.softmax(logits.reshape(num_tokens, -1), axis=-1).reshape(logits.shape)
    return dispatch, combine


def soft_moe_routing(x, phi):
    """Soft MoE dispatch and combine tensors (T, E, S) of one image, eqs. (10)-(11)."""
    x = float_array("x", x, "(T, D)")
    phi = float_array("phi", phi, "(D, E, S)")
    if phi.shape[0] != x.shape[1]:
        raise ValueError(f"phi must have shape (D, E, S) with D = {x.shape[1]} (the width of x), got {phi.shape}")
    return soft_moe_tensors(soft_moe_logits(x, phi))
