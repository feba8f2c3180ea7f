"""The MoE layer of eq. (2) and the stacked MLP experts it calls."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._checks import integer, real_array, same_shape

Experts = Callable[[int, np.ndarray], np.ndarray]


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, as ``jax.nn.gelu``."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def mlp_experts(w1, b1, w2, b2) -> Experts:
    """E two-layer MLP experts with stacked weights: ``MLP_r(u) = gelu(u @ w1[r] + b1[r]) @ w2[r] + b2[r]``.

    Choice [gelu-tanh]: GELU in its tanh form, the default of ``jax.nn.gelu`` and of ViT/V-MoE code.

    Args:
      w1: (E, D, H) first-layer weights.   b1: (E, H) first-layer biases.
      w2: (E, H, D) second-layer weights.  b2: (E, D) second-layer biases.

    Returns:
      ``experts(r, inputs)`` mapping expert index r (0-based) and inputs (n, D) to outputs (n, D).

    Example:
      >>> experts = mlp_experts(np.ones((1, 1, 1)), np.zeros((1, 1)), np.ones((1, 1, 1)), np.zeros((1, 1)))
      >>> experts(0, np.array([[0.0]])).tolist()  # gelu(0) = 0
      [[0.0]]
    """
    w1 = real_array("w1", w1, "(E, D, H)")
    num_experts, width, hidden = w1.shape
    b1 = real_array("b1", b1, "(E, H)")
    same_shape("b1", b1, (num_experts, hidden), "(E, H)")
    w2 = real_array("w2", w2, "(E, H, D)")
    same_shape("w2", w2, (num_experts, hidden, width), "(E, H, D)")
    b2 = real_array("b2", b2, "(E, D)")
    same_shape("b2", b2, (num_experts, width), "(E, D)")

    def experts(r: int, inputs) -> np.ndarray:
        r = integer("r", r, minimum=0, maximum=num_experts - 1, what=" (an expert index)")
        inputs = real_array("inputs", inputs, "(n, D)")
        same_shape("inputs", inputs, (inputs.shape[0], width), "(n, D)")
        return gelu_tanh(inputs @ w1[r] + b1[r]) @ w2[r] + b2[r]  # Choice [gelu-tanh]

    return experts


def moe_layer(x, dispatch, combine, experts: Experts) -> np.ndarray:
    """The unified MoE layer, eq. (2), literally.

        MoE(X)[t, :] = sum_r sum_c combine[t, r, c] * MLP_r(X^T dispatch[:, r, c])                    (2)

    Slot (r, c) receives the dispatch-weighted sum of tokens ``X^T dispatch[:, r, c]``, expert r processes
    it, and token t gets back the combine-weighted sum of all slot outputs.

    Args:
      x: (T, D) tokens of the routing group.
      dispatch: (T, E, C) dispatch tensor.
      combine: (T, E, C) combine tensor.
      experts: ``experts(r, inputs)`` mapping (n, D) to (n, D), e.g. from ``mlp_experts``.

    Returns:
      (T, D) float64 outputs.

    Example:
      >>> x = np.array([[1.0], [2.0]]); d = np.eye(2)[:, None, :]  # C = T: slot c holds token c
      >>> moe_layer(x, d, 0.5 * d, lambda r, u: 3 * u).tolist()  # each token: 0.5 * 3 * x_t
      [[1.5], [3.0]]
    """
    x = real_array("x", x, "(T, D)")
    dispatch = real_array("dispatch", dispatch, "(T, E, C)")
    combine = real_array("combine", combine, "(T, E, C)")
    num_tokens, width = x.shape
    if dispatch.shape[0] != num_tokens:
        raise ValueError(f"dispatch must have shape (T, E, C) with T = {num_tokens}, got {dispatch.shape}")
    same_shape("combine", combine, dispatch.shape, "(T, E, C) of dispatch")
    if not callable(experts):
        raise TypeError(f"experts must be callable as experts(r, inputs), got {type(experts).__name__}")
    _, num_experts, slots = dispatch.shape
    out = np.zeros((num_tokens, width))
    for r in range(num_experts):  # sum over experts r
        for c in range(slots):  # sum over slots c
            slot_input = x.T @ dispatch[:, r, c]  # X^T D[:, r, c], shape (D,)
            slot_output = np.asarray(experts(r, slot_input[None, :]), dtype=np.float64)[0]  # MLP_r(...)
            out += np.outer(combine[:, r, c], slot_output)  # for every t: C[t, r, c] * MLP_r(...)
    return out
