"""The six routers end to end: one compact routing function shared by ``route`` and ``MoELayer``."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ._checks import float_array, integer, positive_real, same_shape
from ._routing import (
    Routing,
    _dense_plan,
    _sinkhorn,
    _sparse_ot,
    capacity,
    dense_routing,
    expert_choice_routing,
    rounded_capacity,
    router_dtype,
    soft_moe_routing,
    token_choice_routing,
)

ROUTERS = (
    "softmax_token_choice",
    "sinkhorn_token_choice",
    "softmax_expert_choice",
    "sinkhorn_expert_choice",
    "sparsity_constrained_expert_choice",
    "soft_moe",
)
TOKEN_CHOICE_ROUTERS = ROUTERS[:2]
EXPERT_CHOICE_ROUTERS = ROUTERS[2:5]
SPARSE_ROUTERS = ROUTERS[:5]
SINKHORN_ROUTERS = ("sinkhorn_token_choice", "sinkhorn_expert_choice")
COMBINE_FROM = ("softmax", "plan")


def check_router(router) -> str:
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)}; got {router!r}")
    return router


CAPACITY_RULES = ("round", "vmoe")
VMOE_CAPACITY_MULTIPLE = 4  # vmoe/moe.py compute_capacity(multiple_of=4), the dispatchers' default


def vmoe_capacity(num_tokens, num_experts: int, capacity_factor: float) -> int:
    """vmoe's capacity: ``ceil(num_tokens * capacity_factor / E)``, then rounded up to a multiple of 4.

    The authors' ``vmoe.moe.compute_capacity`` with its defaults (``ceil_or_round="ceil"``, ``multiple_of=4``),
    as its Token Choice dispatcher calls it with ``num_tokens = T * k`` and its Expert Choice dispatcher with
    ``num_tokens = T``; the product is taken in that order, as there, so the float rounding is the same.

    >>> vmoe_capacity(8 * 50 * 2, 8, 1.05)  # B/32 at 224 px, 8 images per group, k = 2: ceil(105.0) = 105 -> 108
    108
    """
    result = math.ceil(num_tokens * capacity_factor / num_experts)
    if result < 1:
        raise ValueError(f"vmoe capacity ceil({num_tokens} * {capacity_factor} / {num_experts}) = {result} is below 1")
    return result + (-result) % VMOE_CAPACITY_MULTIPLE


def sparse_capacity(
    router: str, num_tokens: int, num_experts: int, factor, *, rule: str = "round", vmoe_factor: float = 1.05
) -> tuple[int, int]:
    """Validate ``factor`` for ``router`` and return ``(C, k)``; k is 0 for Expert Choice.

    ``rule="round"``: C = round(factor T / E) (sec. 3.1). ``rule="vmoe"``: the authors' configs
    (``vmoe_capacity``): Token Choice C = vmoe_capacity(T k, E, vmoe_factor), vmoe's
    ``dispatcher.capacity_factor`` (1.05 in ``vmoe/configs/vmoe_paper/common.py:249``); Expert Choice
    C = vmoe_capacity(T, E, c), where c (``factor``) is that same ``capacity_factor`` of vmoe's Expert Choice
    dispatcher.
    """
    if rule not in CAPACITY_RULES:
        raise ValueError(f"capacity_rule must be one of {', '.join(CAPACITY_RULES)}; got {rule!r}")
    vmoe_factor = positive_real("vmoe_capacity_factor", vmoe_factor)
    if router in TOKEN_CHOICE_ROUTERS:
        k = integer("factor", factor, minimum=1, maximum=num_experts, what=" (k, experts per token, at most E)")
        if rule == "vmoe":
            return vmoe_capacity(num_tokens * k, num_experts, vmoe_factor), k
        return capacity(num_tokens, num_experts, k), k
    c = positive_real("factor", factor)
    slots = vmoe_capacity(num_tokens, num_experts, c) if rule == "vmoe" else capacity(num_tokens, num_experts, c)
    if slots > num_tokens:
        raise ValueError(
            f"factor c = {c} gives capacity {slots} > T = {num_tokens} tokens"
            + (" (capacity_rule 'vmoe' rounds C up to a multiple of 4)" if rule == "vmoe" else "")
            + "; Expert Choice needs C <= T"
        )
    return slots, 0


def check_soft_moe_factor(factor, num_tokens: int, num_experts: int, num_slots: int) -> None:
    """Raise unless phi's S slots per expert are ``round(factor * T / E)``, the capacity rounding.

    Choice: as the spec's ``route``: an explicit factor is a check of phi's S, never an override of it.
    """
    c = positive_real("factor", factor)
    expected = rounded_capacity(num_tokens, num_experts, c)
    if expected != num_slots:
        raise ValueError(
            f"factor c = {c} asks for round(c * T / E) = round({c} * {num_tokens} / {num_experts}) = {expected} "
            f"slots per expert, but weight (phi) has S = weight.shape[2] = {num_slots}; pass the c that sized "
            f"phi, or leave factor at None to use S as it is"
        )


@functools.partial(
    jax.jit,
    static_argnames=(
        "router",
        "slots",
        "k",
        "sinkhorn_iters",
        "sparse_ot_iters",
        "sparse_ot_learning_rate",
        "combine_from",
    ),
)
def sparse_routing(
    router: str,
    logits: jax.Array,
    slots: int,
    k: int,
    *,
    sinkhorn_iters: int = 20,
    sparse_ot_iters: int = 20,
    sparse_ot_learning_rate: float = 1e-2,
    combine_from: str = "softmax",
    combine_logits: jax.Array | None = None,
) -> tuple[Routing, jax.Array]:
    """Route one group with a sparse router, from its (possibly noisy) logits.

    The combine weights are the softmax of ``logits``, or of ``combine_logits`` when given (vmoe's Sinkhorn
    Token Choice combines with the softmax of the clean logits while its plan sees the noisy ones).

    Returns the compact routing and the plan's marginal error: for Sinkhorn, the largest column error
    ``max_r |sum_t Pi[t, r] - T/E|`` (its rows are exact); for sparse OT, the largest row error
    ``max_t |sum_r Pi[t, r] - 1|`` (its columns are exact); 0 for the softmax routers.

    Choice: no gradient flows through Sinkhorn or the sparse-OT solver (``stop_gradient``, sec. 3.4):
    they only decide which tokens go where; gradients reach the router through the softmax combine
    weights. With ``combine_from="plan"`` (the "without softmax combine" ablation of Figure 3, Sinkhorn
    routers only) the combine weights are the plan's own entries, and the gradient then flows back through
    the unrolled Sinkhorn iterations.
    """
    num_tokens, num_experts = logits.shape
    softmax = jax.nn.softmax(logits if combine_logits is None else combine_logits, axis=-1)
    error = jnp.zeros((), logits.dtype)
    if router == "softmax_token_choice":
        return token_choice_routing(jax.lax.stop_gradient(softmax), slots, k, softmax), error
    if router == "softmax_expert_choice":
        return expert_choice_routing(jax.lax.stop_gradient(softmax), slots, softmax), error
    if router in ("sinkhorn_token_choice", "sinkhorn_expert_choice"):
        plan = _sinkhorn(logits, sinkhorn_iters, None)
        error = jnp.max(jnp.abs(plan.sum(axis=0) - num_tokens / num_experts))
        weights = plan if combine_from == "plan" else softmax
        plan = jax.lax.stop_gradient(plan)
        if router == "sinkhorn_token_choice":
            return token_choice_routing(plan, slots, k, weights), jax.lax.stop_gradient(error)
        return expert_choice_routing(plan, slots, weights), jax.lax.stop_gradient(error)
    # sparsity_constrained_expert_choice
    values, tokens, rows = _sparse_ot(jax.lax.stop_gradient(logits), slots, sparse_ot_iters, sparse_ot_learning_rate)
    plan = _dense_plan(values, tokens, num_tokens)
    return expert_choice_routing(plan, slots, softmax), jnp.max(jnp.abs(rows - 1))


def route(router: str, x, weight, *, factor=None, noise=None):
    """Dense routing tensors ``(dispatch, combine)`` of one group for any of the six routers (the spec's
    ``route``): W (D, E) for the sparse routers with C = capacity(T, E, factor), factor None meaning 1;
    phi (D, E, S) for Soft MoE, where an explicit factor c must satisfy ``S == round(c * T / E)``.

    The routing math runs in ``router_dtype`` (at least float32), as in ``MoELayer``, and the tensors are
    returned in that dtype: float16 or bfloat16 tokens give float32 tensors.
    """
    router = check_router(router)
    x = float_array("x", x, "(T, D)")
    num_tokens, width = x.shape
    if router == "soft_moe":
        phi = float_array("weight", weight, "(D, E, S)")
        if phi.shape[0] != width:
            raise ValueError(f"weight (phi) must have shape (D, E, S) with D = {width}, got {phi.shape}")
        if noise is not None:
            raise ValueError("noise must be None for soft_moe: Soft MoE routing has no noisy logits")
        if factor is not None:
            check_soft_moe_factor(factor, num_tokens, phi.shape[1], phi.shape[2])
        dtype = router_dtype(jnp.result_type(x, phi))
        return soft_moe_routing(x.astype(dtype), phi.astype(dtype))
    w = float_array("weight", weight, "(D, E)")
    if w.shape[0] != width:
        raise ValueError(f"weight (W) must have shape (D, E) with D = {width}, got {w.shape}")
    slots, k = sparse_capacity(router, num_tokens, w.shape[1], 1 if factor is None else factor)
    if noise is not None:
        noise = float_array("noise", noise, "(T, E)")
        same_shape("noise", noise, (num_tokens, w.shape[1]), "(T, E)")
    dtype = router_dtype(jnp.result_type(x, w) if noise is None else jnp.result_type(x, w, noise))
    noise = None if noise is None else noise.astype(dtype)
    return _dense_route(router, x.astype(dtype), w.astype(dtype), noise, slots, k)


@functools.partial(jax.jit, static_argnames=("router", "slots", "k"))
def _dense_route(router, x, w, noise, slots, k):
    logits = x @ w if noise is None else x @ w + noise  # noise: every matrix below sees the noisy logits
    routing, _ = sparse_routing(router, logits, slots, k)
    return dense_routing(routing, x.shape[0])
