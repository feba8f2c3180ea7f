"""The MoE layer (eq. 2), its experts, Soft MoE (eqs. 10-11), the auxiliary losses and ``route``."""

import numpy as np
import pytest
from scipy.special import ndtr

import reference as R


def random_experts(rng, experts, width, hidden):
    return R.mlp_experts(
        rng.normal(size=(experts, width, hidden)),
        rng.normal(size=(experts, hidden)),
        rng.normal(size=(experts, hidden, width)),
        rng.normal(size=(experts, width)),
    )


def test_mlp_expert_by_hand():
    # Expert 1: u -> gelu(2u + 1) * 3 - 1. At u = 0: gelu(1) * 3 - 1, gelu(1) = 0.8411919906 (tanh form).
    w1 = np.array([[[1.0]], [[2.0]]])
    b1 = np.array([[0.0], [1.0]])
    w2 = np.array([[[1.0]], [[3.0]]])
    b2 = np.array([[0.0], [-1.0]])
    experts = R.mlp_experts(w1, b1, w2, b2)
    np.testing.assert_allclose(experts(1, [[0.0]]), [[3 * 0.8411919906082768 - 1]], rtol=1e-14)


@pytest.mark.parametrize("k", [1, 2])
def test_eq2_with_c_equal_t_recovers_eq1(k):
    # Eq. (3): C[t, r, c] = Gate_r(x_t) if c = t, D = 1(C > 0); eq. (4) says eq. (2) then equals eq. (1):
    # MoE(x_t) = sum_r Gate_r(x_t) MLP_r(x_t), with Gate = top_k(softmax(x W)).
    rng = np.random.default_rng(k)
    tokens, width, experts_n, hidden = 6, 3, 4, 5
    x, w = rng.normal(size=(tokens, width)), rng.normal(size=(width, experts_n))
    experts = random_experts(rng, experts_n, width, hidden)
    probs = R.softmax_affinity(x @ w)
    gate = np.where(probs >= np.sort(probs, axis=1)[:, [-k]], probs, 0.0)  # top_k
    eq1 = np.stack([sum(gate[t, r] * experts(r, x[t : t + 1])[0] for r in range(experts_n)) for t in range(tokens)])

    combine = np.zeros((tokens, experts_n, tokens))
    for t in range(tokens):
        combine[t, :, t] = gate[t]
    dispatch = (combine > 0).astype(float)
    np.testing.assert_allclose(R.moe_layer(x, dispatch, combine, experts), eq1, rtol=1e-12, atol=1e-12)
    # Algorithm 1 with C = T never drops a token, so it gives eq. (1) too (slots in another order).
    dispatch, combine = R.token_choice_allocation(probs, capacity=tokens, k=k)
    np.testing.assert_allclose(R.moe_layer(x, dispatch, combine, experts), eq1, rtol=1e-12, atol=1e-12)


def test_moe_layer_mixes_tokens_through_soft_dispatch():
    # One expert u -> 2u, one slot receiving 0.25 x0 + 0.75 x1 = 0.25 * 4 + 0.75 * 8 = 7, output 14;
    # token 0 takes half of it (7), token 1 all of it (14).
    x = np.array([[4.0], [8.0]])
    dispatch = np.array([[[0.25]], [[0.75]]])
    combine = np.array([[[0.5]], [[1.0]]])
    np.testing.assert_allclose(R.moe_layer(x, dispatch, combine, lambda r, u: 2 * u), [[7.0], [14.0]])


def test_soft_moe_by_hand_and_normalizations():
    # Z = x phi with x = [[1], [0]] and phi[0] = [[log 3, 0]] (E = 1, S = 2): Z[:, 0, :] = [[log 3, 0], [0, 0]].
    # Dispatch, softmax over tokens: slot 0 -> [3/4, 1/4], slot 1 -> [1/2, 1/2].
    # Combine, softmax over slots: token 0 -> [3/4, 1/4], token 1 -> [1/2, 1/2].
    dispatch, combine = R.soft_moe_routing([[1.0], [0.0]], [[[np.log(3.0), 0.0]]])
    np.testing.assert_allclose(dispatch[:, 0, :], [[0.75, 0.5], [0.25, 0.5]], rtol=1e-14)
    np.testing.assert_allclose(combine[:, 0, :], [[0.75, 0.25], [0.5, 0.5]], rtol=1e-14)

    rng = np.random.default_rng(0)
    dispatch, combine = R.soft_moe_routing(rng.normal(size=(7, 4)), rng.normal(size=(4, 3, 2)))
    np.testing.assert_allclose(dispatch.sum(axis=0), 1.0, rtol=1e-13)
    np.testing.assert_allclose(combine.sum(axis=(1, 2)), 1.0, rtol=1e-13)


def test_importance_loss_by_hand():
    # Importances (column sums) 1.5 and 0.5: mean 1, population variance 0.25, CV^2 = 0.25.
    assert R.importance_loss([[0.75, 0.25], [0.75, 0.25]]) == pytest.approx(0.25, rel=1e-14)
    assert R.importance_loss([[0.5, 0.5], [0.2, 0.8]]) == pytest.approx(((1.3 - 0.7) / 2) ** 2, rel=1e-12)


def test_load_loss_by_hand():
    # k = 1, noise_std = 1, logits = noisy logits = [[1, 0], [0, 0]]: thresholds t0 = 1, t1 = 0.
    # P(select) = 1 - Phi(threshold - logit): t0: [1 - Phi(0), 1 - Phi(1)] = [0.5, 0.158655];
    # t1: [0.5, 0.5]. Loads [1.0, 0.658655]; CV^2 = var / mean^2 = 0.042352.
    logits = [[1.0, 0.0], [0.0, 0.0]]
    loads = np.array([1.0, 0.5 + (1 - ndtr(1.0))])
    expected = loads.var() / loads.mean() ** 2
    assert expected == pytest.approx(0.042352, abs=1e-6)
    assert R.load_loss(logits, logits, 1.0, 1) == pytest.approx(expected, rel=1e-12)


def test_load_loss_threshold_is_kth_largest_noisy_logit():
    # k = 2 of E = 3, one token: noisy logits [3, 1, 2] -> threshold 2 (the 2nd largest). With clean logits
    # [2, 2, 0] and noise_std 0.5: P = 1 - Phi((2 - [2, 2, 0]) / 0.5) = [0.5, 0.5, 1 - Phi(4)].
    loads = np.array([0.5, 0.5, 1 - ndtr(4.0)])
    expected = loads.var() / loads.mean() ** 2
    assert R.load_loss([[2.0, 2.0, 0.0]], [[3.0, 1.0, 2.0]], 0.5, 2) == pytest.approx(expected, rel=1e-12)


def test_route_matches_the_boxed_summaries():
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(16, 3)), rng.normal(size=(3, 4))
    noise = 0.1 * rng.normal(size=(16, 4))
    logits = x @ w + noise
    softmax = R.softmax_affinity(logits)
    cases = {
        "softmax_token_choice": R.token_choice_allocation(softmax, 8, 2),
        "sinkhorn_token_choice": R.token_choice_allocation(R.sinkhorn_affinity(logits), 8, 2, weights=softmax),
        "softmax_expert_choice": R.expert_choice_allocation(softmax, 8),
        "sinkhorn_expert_choice": R.expert_choice_allocation(R.sinkhorn_affinity(logits), 8, weights=softmax),
        "sparsity_constrained_expert_choice": R.expert_choice_allocation(
            R.sparse_ot_affinity(logits, 8), 8, weights=softmax
        ),
    }
    for router, (dispatch, combine) in cases.items():
        got_dispatch, got_combine = R.route(router, x, w, factor=2, noise=noise)  # C = round(2 * 16 / 4) = 8
        np.testing.assert_array_equal(got_dispatch, dispatch, err_msg=router)
        np.testing.assert_array_equal(got_combine, combine, err_msg=router)
    phi = rng.normal(size=(3, 4, 2))
    for got, expected in zip(R.route("soft_moe", x, phi), R.soft_moe_routing(x, phi), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_importance_loss_takes_probabilities_not_logits():
    logits = np.random.default_rng(9).normal(size=(6, 4))
    probs = R.softmax_affinity(logits)
    with pytest.raises(ValueError, match=r"entry \(0, \d\) is -?[0-9.]+ < 0: it looks like logits"):
        R.importance_loss(logits - 5)  # some entries negative
    with pytest.raises(ValueError, match=r"row 0 sums to .*: it looks like logits"):
        R.importance_loss(np.exp(logits))  # positive, unnormalized
    assert R.importance_loss([[1, 0], [0, 1], [1, 0]]) == pytest.approx(1 / 9)  # one-hot integers: 2, 1
    # The tolerance follows the caller's dtype: rows 1e-6 off pass as float32 (1e-5), not as float64 (1e-9).
    off = probs.copy()
    off[:, 0] += 1e-6
    assert R.importance_loss(off.astype(np.float32)) == pytest.approx(R.importance_loss(probs), rel=1e-4)
    with pytest.raises(ValueError, match=r"within 1e-09 for float64\); row 0 sums to 1.000001"):
        R.importance_loss(off)
    # float16 rounds each entry by up to 2^-11 of itself, so its rows miss 1 by ~1e-3: within 1e-2.
    assert R.importance_loss(probs.astype(np.float16)) == pytest.approx(R.importance_loss(probs), rel=1e-2)
    with pytest.raises(ValueError, match=r"within 0.01 for float16\); row 0 sums to 1.0[34]"):
        R.importance_loss((probs + 0.01).astype(np.float16))  # rows sum to 1.04


def test_soft_moe_factor_must_agree_with_the_slots_of_phi():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(10, 3))
    expected = R.soft_moe_routing(x, phi := rng.normal(size=(3, 4, 2)))
    # T = 10, E = 4, S = 2. Accepted: c = 1 gives round(2.5) = 2 (halves to even, as capacity does), c = 0.9
    # round(2.25) = 2, c = 0.7 round(1.75) = 2. Refused: c = 1.1 gives round(2.75) = 3, c = 2 gives 5, c = 0.5
    # round(1.25) = 1, c = 0.1 round(0.25) = 0.
    for factor in (None, 1, 0.9, 0.7):
        for got, want in zip(R.route("soft_moe", x, phi, factor=factor), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert R.capacity(10, 4, 1) == 2
    for factor, slots in ((1.1, 3), (2, 5), (0.5, 1), (0.1, 0)):  # round(c * 10 / 4) for each c
        with pytest.raises(ValueError, match=rf"= {slots} slots per expert, but weight \(phi\) has S = .* = 2"):
            R.route("soft_moe", x, phi, factor=factor)
    # Any S is accepted when no factor is given, e.g. S = 7 for T = 10, E = 4.
    dispatch, _ = R.route("soft_moe", x, rng.normal(size=(3, 4, 7)))
    assert dispatch.shape == (10, 4, 7)


def test_sinkhorn_token_choice_combines_with_softmax_not_the_plan():
    rng = np.random.default_rng(6)
    x, w = rng.normal(size=(8, 2)), rng.normal(size=(2, 4))
    dispatch, combine = R.route("sinkhorn_token_choice", x, w)
    softmax = R.softmax_affinity(x @ w)
    t, r, c = np.nonzero(dispatch)
    np.testing.assert_array_equal(combine[t, r, c], softmax[t, r])
    assert not np.allclose(combine[t, r, c], R.sinkhorn_affinity(x @ w)[t, r])


def test_routers_tuple():
    assert R.ROUTERS == (
        "softmax_token_choice",
        "sinkhorn_token_choice",
        "softmax_expert_choice",
        "sinkhorn_expert_choice",
        "sparsity_constrained_expert_choice",
        "soft_moe",
    )
