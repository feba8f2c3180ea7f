"""Soft MoE routing tensors, eqs. (10)-(11) (Puigcerver et al., 2023; sec. 2.6 of the paper)."""

from __future__ import annotations

import numpy as np

from ._checks import real_array


def soft_moe_routing(x, phi) -> tuple[np.ndarray, np.ndarray]:
    """Soft MoE dispatch and combine tensors of one image, eqs. (10)-(11), literally.

        Z[t, r, c] = x[t, :] . phi[:, r, c]                                        (10)
        dispatch[t, r, c] = exp Z[t, r, c] / sum_t' exp Z[t', r, c]                 (11, softmax over tokens)
        combine[t, r, c]  = exp Z[t, r, c] / sum_{r', c'} exp Z[t, r', c']          (11, softmax over all slots)

    Every slot receives a convex combination of the tokens; every output token is a convex combination of
    the E * S slot outputs.

    Args:
      x: (T, D) tokens of one image (Soft MoE never mixes tokens of different images, sec. 2.6).
      phi: (D, E, S) slot parameters, S slots per expert.

    Returns:
      ``(dispatch, combine)``, each (T, E, S) float64.

    Example:
      >>> d, c = soft_moe_routing(np.zeros((2, 3)), np.zeros((3, 1, 2)))  # all logits 0: uniform weights
      >>> d[:, 0, 0].tolist(), c[0].tolist()
      ([0.5, 0.5], [[0.5, 0.5]])
    """
    x = real_array("x", x, "(T, D)")
    phi = real_array("phi", phi, "(D, E, S)")
    if phi.shape[0] != x.shape[1]:
        raise ValueError(f"phi must have shape (D, E, S) with D = {x.shape[1]} (the width of x), got {phi.shape}")
    num_tokens = x.shape[0]
    _, num_experts, num_slots = phi.shape
    logits = np.einsum("td,des->tes", x, phi)  # eq. (10)
    # eq. (11), dispatch: softmax over the token axis, separately for each slot (r, c).
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    dispatch = shifted / shifted.sum(axis=0, keepdims=True)
    # eq. (11), combine: softmax over all E * S slots, separately for each token t.
    flat = logits.reshape(num_tokens, num_experts * num_slots)
    shifted = np.exp(flat - flat.max(axis=1, keepdims=True))
    combine = (shifted / shifted.sum(axis=1, keepdims=True)).reshape(num_tokens, num_experts, num_slots)
    return dispatch, combine
