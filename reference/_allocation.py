"""Buffer capacity (sec. 3.1), Token Choice allocation (Algorithm 1) and Expert Choice allocation (Algorithm 2)."""

from __future__ import annotations

import numpy as np

from ._checks import integer, positive_real, real_array, same_shape


def capacity(num_tokens: int, num_experts: int, factor: float) -> int:
    """Buffer capacity ``C = round(factor * T / E)`` of sec. 3.1.

    ``factor`` is k for Token Choice and the capacity factor c for Expert Choice and Soft MoE.

    Choice [capacity-rounding]: ``round`` is Python's, which rounds halves to even (``round(2.5) == 2``), and
    the product is formed as ``(factor * T) / E`` in float64. The paper writes ``round`` without saying how
    halves go.
    Choice [capacity-below-one]: a capacity below 1 (a group of at most ``E / (2 factor)`` tokens) is an error,
    not raised to 1: saying so beats routing with a capacity nobody asked for. The authors' ``compute_capacity``
    (``vmoe/moe.py``) raises too.

    Raises:
      ValueError: if C would be below 1 (the group is too small for this many experts).

    Example:
      >>> capacity(1568, 32, 1)  # 8 images x 196 tokens, 32 experts, c = 1
      49
      >>> capacity(5, 2, 1)  # 2.5 rounds to even
      2
    """
    num_tokens = integer("num_tokens", num_tokens, minimum=1)
    num_experts = integer("num_experts", num_experts, minimum=1)
    factor = positive_real("factor", factor)
    result = rounded_capacity(num_tokens, num_experts, factor)
    if result < 1:  # Choice [capacity-below-one]: an error, not silently 1
        raise ValueError(
            f"capacity round(factor * num_tokens / num_experts) = round({factor} * {num_tokens} / {num_experts}) "
            f"= {result} is below 1; use more tokens per group, fewer experts or a larger factor"
        )
    return result


def rounded_capacity(num_tokens: int, num_experts: int, factor: float) -> int:
    """``round(factor * T / E)`` without any check: the one rounding that ``capacity`` and Soft MoE's slots share."""
    return round(factor * num_tokens / num_experts)  # Choice [capacity-rounding]: Python's round, halves to even


def _scores_and_weights(scores, weights) -> tuple[np.ndarray, np.ndarray]:
    scores = real_array("scores", scores, "(T, E)")
    if weights is None:  # Choice [combine-weights]: by default the choosing matrix also gives the combine values
        return scores, scores
    weights = real_array("weights", weights, "(T, E)")
    same_shape("weights", weights, scores.shape, "(T, E) of scores")
    return scores, weights


def token_choice_allocation(scores, capacity: int, k: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Routing tensors by Token Choice allocation, Algorithm 1 of the paper, literally.

    For i = 1..k, then for t = 1..T in order, token t asks for its i-th best expert r by ``scores``; if r
    holds fewer than C tokens, t takes r's next free slot c, with ``dispatch[t, r, c] = 1`` and
    ``combine[t, r, c] = weights[t, r]``. Otherwise the choice is dropped. All first choices are placed
    before any second choice.

    Choice [tie-token-choice]: among equal scores a token prefers the lower expert index.
    Choice [combine-weights]: ``weights`` (default: ``scores``) gives the combine values, so that the Sinkhorn
    routers can choose with the transport plan and combine with the softmax (sec. 2.2).

    Args:
      scores: (T, E) affinity matrix Pi that decides the choices.
      capacity: C, the number of slots per expert, >= 1.
      k: experts per token, an integer in [1, E].
      weights: optional (T, E) matrix whose entries become the combine values.

    Returns:
      ``(dispatch, combine)``, each (T, E, C) float64; dispatch is 0/1.

    Example:
      >>> d, c = token_choice_allocation([[0.9, 0.1], [0.8, 0.2]], capacity=1, k=1)
      >>> d[:, :, 0].tolist()  # token 1 wants expert 0 too, but its single slot is taken: dropped
      [[1.0, 0.0], [0.0, 0.0]]
    """
    scores, weights = _scores_and_weights(scores, weights)
    num_tokens, num_experts = scores.shape
    slots = integer("capacity", capacity, minimum=1)
    k = integer("k", k, minimum=1, maximum=num_experts, what=" (experts per token, at most E)")
    dispatch = np.zeros((num_tokens, num_experts, slots))
    combine = np.zeros((num_tokens, num_experts, slots))
    # ranking[t, i] is token t's i-th best expert; the stable sort keeps the lower index first on ties.
    ranking = np.argsort(-scores, axis=1, kind="stable")  # Choice [tie-token-choice]
    for i in range(k):  # Algorithm 1: for the top i-th choice with i = 1, ..., k
        for t in range(num_tokens):  # for token index t = 1, ..., T
            r = ranking[t, i]  # w, r = max_{i-th} Pi[t, :]
            c = int(np.count_nonzero(dispatch[:, r, :]))  # c = ||D[:, r, :]||_0, tokens already at expert r
            if c < slots:  # if c < C
                dispatch[t, r, c] = 1.0  # D[t, r, c] = 1
                combine[t, r, c] = weights[t, r]  # C[t, r, c] = w
    return dispatch, combine


def expert_choice_allocation(scores, capacity: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Routing tensors by Expert Choice allocation, Algorithm 2 of the paper, literally.

    Expert r fills its slots c = 1..C with its C best tokens by ``scores[:, r]``, in decreasing order:
    ``dispatch[t, r, c] = 1`` and ``combine[t, r, c] = weights[t, r]``. Every expert fills all C slots; a
    token may be chosen by several experts or by none.

    Choice [tie-expert-choice]: among equal scores an expert prefers the lower token index.
    Choice [fill-every-slot]: every slot is filled, even where the score is 0 (as can happen with the
    sparse-OT plan): the algorithm as printed takes the c-th largest score without a threshold.

    Args:
      scores: (T, E) affinity matrix Pi that decides the choices.
      capacity: C, the number of slots per expert, an integer in [1, T].
      weights: optional (T, E) matrix whose entries become the combine values (default: ``scores``).

    Returns:
      ``(dispatch, combine)``, each (T, E, C) float64; dispatch is 0/1.

    Example:
      >>> d, c = expert_choice_allocation([[0.9, 0.1], [0.8, 0.2]], capacity=1)
      >>> d[:, :, 0].tolist()  # both experts prefer a token: expert 0 takes token 0, expert 1 token 1
      [[1.0, 0.0], [0.0, 1.0]]
    """
    scores, weights = _scores_and_weights(scores, weights)
    num_tokens, num_experts = scores.shape
    slots = integer("capacity", capacity, minimum=1)
    if slots > num_tokens:
        raise ValueError(
            f"capacity must be at most the number of tokens T = {num_tokens} for Expert Choice "
            f"(each expert fills all its slots with distinct tokens), got {slots}"
        )
    dispatch = np.zeros((num_tokens, num_experts, slots))
    combine = np.zeros((num_tokens, num_experts, slots))
    for r in range(num_experts):  # Algorithm 2: for expert index r = 1, ..., E
        # Choice [tie-expert-choice]: tokens by decreasing score, a stable sort keeps the lower index on ties.
        ranking = np.argsort(-scores[:, r], kind="stable")
        for c in range(slots):  # for capacity index c = 1, ..., C; Choice [fill-every-slot]: no threshold
            t = ranking[c]  # w, t = max_{c-th} [Gate_r(x_1), ..., Gate_r(x_T)]
            dispatch[t, r, c] = 1.0  # D[t, r, c] = 1
            combine[t, r, c] = weights[t, r]  # C[t, r, c] = w
    return dispatch, combine
