"""Auxiliary losses that balance Softmax Token Choice routers (Appendix A of the paper)."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from ._checks import integer, positive_real, real_array, row_stochastic, same_shape


def cv_squared(values: np.ndarray, name: str) -> float:
    """Squared coefficient of variation ``var(values) / mean(values)^2``.

    Choice [cv-population-variance]: the population variance (ddof = 0), as ``jnp.std`` in V-MoE's losses; the
    paper's "empirical coefficient of variation" does not say which.
    Choice [cv-no-epsilon]: no epsilon is added to the denominator; a zero mean is an error rather than a
    silent blow-up.
    """
    mean = values.mean()
    if mean == 0:  # Choice [cv-no-epsilon]
        raise ValueError(f"the coefficient of variation of {name} is undefined: their mean is 0")
    return float(values.var() / mean**2)  # Choice [cv-population-variance]: ddof = 0


def importance_loss(gates) -> float:
    """Importance loss of Appendix A: ``CV(sum_t gates[t, :])^2``.

    ``gates`` is the routing probability matrix ``softmax(X W)`` of the clean logits (Appendix A writes
    ``Pi_{W,X} = softmax(XW)``, without the noise); its column sums are each expert's importance on the
    group, and the loss is their squared coefficient of variation across experts.

    Choice [importance-gates]: ``gates`` must be row-stochastic, every entry >= 0 and every row summing to 1 within a
    tolerance set by the caller's dtype (1e-9 for 64-bit floats and integers, 1e-5 for 32-bit, 1e-2 for
    16-bit); anything else is an error saying it looks like logits. The loss of logits is a number, but
    not the importance loss.

    Args:
      gates: (T, E) routing probabilities, each row summing to 1.

    Returns:
      The loss, a float >= 0.

    Example:
      >>> importance_loss([[0.75, 0.25], [0.75, 0.25]])  # importances 1.5, 0.5: var 0.25 / mean^2 1.0
      0.25
    """
    probabilities = real_array("gates", gates, "(T, E)")
    row_stochastic("gates", probabilities, np.asarray(gates).dtype)  # Choice [importance-gates]
    importance = probabilities.sum(axis=0)  # r = Pi^T 1_T
    return cv_squared(importance, "the expert importances")


def load_loss(logits, noisy_logits, noise_std: float, k: int) -> float:
    """Load loss of Appendix A, eqs. (12)-(15): ``CV(load)^2``.

    Token t's threshold is the k-th largest of its noisy logits. The probability that expert r would
    still be selected under fresh noise ``delta ~ N(0, noise_std^2)`` is
    ``P(logits[t, r] + delta > threshold_t) = 1 - Phi((threshold_t - logits[t, r]) / noise_std)``; the
    expert's load sums this over tokens, and the loss is the squared CV of the loads across experts.

    Choice [load-threshold]: token t's threshold is the value of its k-th largest noisy logit (ties among
    logits do not matter: only the value is used), compared with the clean logits, as eq. (12) writes.
    Choice [load-probability]: the noise's standard deviation is an argument, and ``P = 1 - Phi(z)`` with
    ``z = (threshold - logit) / noise_std`` is computed as ``Phi(-z)``, the same number without cancellation.
    Eq. (14) writes the CDF of N(0, 1/E); V-MoE's code (and ``optimized``) uses the standard deviation
    ``1/E``, that is ``noise_std = 1/E``.

    Args:
      logits: (T, E) clean logits ``X W``.
      noisy_logits: (T, E) the logits with the noise used for routing, ``X W + eps``.
      noise_std: standard deviation of the noise, > 0 (1/E in V-MoE's code; see above).
      k: experts per token, an integer in [1, E].

    Returns:
      The loss, a float >= 0.

    Example:
      >>> round(load_loss([[0.0, 0.0]], [[1.0, 0.0]], 1.0, 1), 6)  # equal loads Phi(-1) each: CV = 0
      0.0
    """
    logits = real_array("logits", logits, "(T, E)")
    noisy_logits = real_array("noisy_logits", noisy_logits, "(T, E)")
    same_shape("noisy_logits", noisy_logits, logits.shape, "(T, E) of logits")
    noise_std = positive_real("noise_std", noise_std)
    num_experts = logits.shape[1]
    k = integer("k", k, minimum=1, maximum=num_experts, what=" (experts per token, at most E)")
    # Choice [load-threshold]: the k-th largest noisy logit of each token, eq. (12).
    threshold = np.sort(noisy_logits, axis=1)[:, num_experts - k]
    z = (threshold[:, None] - logits) / noise_std  # noise needed to beat the threshold, in std units, eq. (13)
    # eq. (14): 1 - Phi(z); Choice [load-probability]: computed as Phi(-z), the same number without cancellation.
    probability = ndtr(-z)
    load = probability.sum(axis=0)  # eq. (15): expected number of tokens each expert receives
    return cv_squared(load, "the expert loads")
