"""The six routers end to end, as the paper's boxed summaries (sec. 2.1-2.6) put them."""

from __future__ import annotations

import numpy as np

from ._affinity import sinkhorn_affinity, softmax_affinity
from ._allocation import capacity, expert_choice_allocation, rounded_capacity, token_choice_allocation
from ._checks import integer, positive_real, real_array, same_shape
from ._soft_moe import soft_moe_routing
from ._sparse_ot import sparse_ot_affinity

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


def route(router: str, x, weight, *, factor=None, noise=None) -> tuple[np.ndarray, np.ndarray]:
    """Routing tensors ``(dispatch, combine)`` of one group of tokens, for any of the six routers.

    Sparse routers (``weight`` is W, (D, E); ``logits = x @ W``, plus ``noise`` when given):

    - ``softmax_token_choice`` (sec. 2.1): Algorithm 1 on ``softmax(logits)``, combine from the same matrix.
    - ``sinkhorn_token_choice`` (sec. 2.2): Algorithm 1 choosing with ``Pi_ent = sinkhorn(logits)``,
      combine values from ``softmax(logits)`` at the chosen positions.
    - ``softmax_expert_choice`` (sec. 2.3): Algorithm 2 on ``softmax(logits)``.
    - ``sinkhorn_expert_choice`` (sec. 2.4): Algorithm 2 choosing with ``Pi_ent``, combine from the softmax.
    - ``sparsity_constrained_expert_choice`` (sec. 2.5): Algorithm 2 choosing with the sparse-OT plan
      ``Pi_sparse``, combine from the softmax.

    The capacity is ``C = capacity(T, E, factor)``: ``factor`` is k (an integer) for Token Choice and the
    capacity factor c (a positive number) for Expert Choice; left at None it is 1.

    ``soft_moe`` (sec. 2.6): ``weight`` is phi, (D, E, S); the tensors are eqs. (10)-(11) with S slots. The
    paper sizes S like C (sec. 3.1): ``S = round(c * T / E)`` with T the tokens of one image.

    Choice [noise-placement]: ``noise`` (T, E) is added to the logits once, and every matrix of the call
    (softmax, Sinkhorn plan, sparse-OT plan) is computed from the noisy logits, as eq. (6) writes
    ``softmax(XW + sigma eps)``. Drawing it, in training only, is the caller's business.
    Choice [soft-moe-no-noise]: Soft MoE takes no noise; passing any is an error rather than being ignored.
    Choice [soft-moe-factor]: Soft MoE's slot count is phi's last axis, S. With ``factor=None`` (the default) any S is
    accepted; an explicit factor c must agree with it, ``S == round(c * T / E)`` with the rounding of
    ``capacity``, or the call is an error naming both numbers. A factor is then a check of phi's shape,
    never a silent override of it.

    Args:
      router: one of ``ROUTERS``.
      x: (T, D) tokens of one routing group.
      weight: W (D, E) for the sparse routers, phi (D, E, S) for ``soft_moe``.
      factor: k for Token Choice, c for Expert Choice (None: 1); for Soft MoE, None or the c that gave phi
        its S slots per expert.
      noise: optional (T, E) noise added to the logits of the sparse routers.

    Returns:
      ``(dispatch, combine)``, each (T, E, C) float64 (C = S for Soft MoE).

    Example:
      >>> x = np.array([[1.0], [2.0]]); w = np.array([[1.0, -1.0]])  # logits [[1, -1], [2, -2]]
      >>> d, c = route("softmax_expert_choice", x, w)  # C = round(1 * 2 / 2) = 1
      >>> d[:, :, 0].tolist()  # expert 0 takes token 1 (p = 0.98), expert 1 takes token 0 (p = 0.12)
      [[0.0, 1.0], [1.0, 0.0]]
    """
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)}; got {router!r}")
    x = real_array("x", x, "(T, D)")
    num_tokens, width = x.shape
    if router == "soft_moe":
        phi = real_array("weight", weight, "(D, E, S)")
        if phi.shape[0] != width:
            raise ValueError(f"weight (phi) must have shape (D, E, S) with D = {width}, got {phi.shape}")
        if noise is not None:  # Choice [soft-moe-no-noise]: an error, not ignored
            raise ValueError("noise must be None for soft_moe: Soft MoE routing has no noisy logits")
        if factor is not None:
            _check_soft_moe_factor(factor, num_tokens, phi.shape[1], phi.shape[2])
        return soft_moe_routing(x, phi)

    w = real_array("weight", weight, "(D, E)")
    if w.shape[0] != width:
        raise ValueError(f"weight (W) must have shape (D, E) with D = {width}, got {w.shape}")
    num_experts = w.shape[1]
    factor = 1 if factor is None else factor
    if router in TOKEN_CHOICE_ROUTERS:
        k = integer("factor", factor, minimum=1, maximum=num_experts, what=" (k, experts per token, at most E)")
        slots = capacity(num_tokens, num_experts, k)
    else:
        c = positive_real("factor", factor)
        slots = capacity(num_tokens, num_experts, c)
        if slots > num_tokens:
            raise ValueError(
                f"factor c = {c} gives capacity {slots} > T = {num_tokens} tokens; Expert Choice needs C <= T"
            )
    logits = x @ w  # X W
    if noise is not None:
        noise = real_array("noise", noise, "(T, E)")
        same_shape("noise", noise, logits.shape, "(T, E)")
        logits = logits + noise  # Choice [noise-placement]: every matrix below sees the noisy logits (eq. 6)
    softmax = softmax_affinity(logits)  # Pi_softmax, eq. (6); Choice [combine-weights]: always the combine values

    if router == "softmax_token_choice":
        return token_choice_allocation(softmax, slots, k)
    if router == "sinkhorn_token_choice":
        return token_choice_allocation(sinkhorn_affinity(logits), slots, k, weights=softmax)
    if router == "softmax_expert_choice":
        return expert_choice_allocation(softmax, slots)
    if router == "sinkhorn_expert_choice":
        return expert_choice_allocation(sinkhorn_affinity(logits), slots, weights=softmax)
    # sparsity_constrained_expert_choice
    return expert_choice_allocation(sparse_ot_affinity(logits, slots), slots, weights=softmax)


def _check_soft_moe_factor(factor, num_tokens: int, num_experts: int, num_slots: int) -> None:
    """Raise unless phi's S slots per expert are ``round(factor * T / E)``, the capacity rounding."""
    c = positive_real("factor", factor)
    expected = rounded_capacity(num_tokens, num_experts, c)
    if expected != num_slots:  # Choice [soft-moe-factor]: an explicit factor must agree with phi's S
        raise ValueError(
            f"factor c = {c} asks for round(c * T / E) = round({c} * {num_tokens} / {num_experts}) = {expected} "
            f"slots per expert, but weight (phi) has S = weight.shape[2] = {num_slots}; pass the c that sized "
            f"phi, or leave factor at None to use S as it is"
        )
