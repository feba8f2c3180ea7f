"""The adapters on hand-worked inputs, with their libraries: run by ``tox -e adapters``, which installs them.

Each case is small enough to work by hand; it pins down the adapter's mapping (layouts, which tensor is dispatch
and which combine, the slot order) independently of the conformance suite, and the findings that a case shows.
In the default test environment the libraries are absent and these tests are skipped, saying so.
"""

import numpy as np
import pytest

import reference


def _library(module: str):
    return pytest.importorskip(module, reason=f"{module} is installed only by `tox -e adapters`")


def _np(a):
    return np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# T = 4 tokens of width 1, E = 2 experts: logits x @ W = [[1, -1], [2, -2], [-1, 1], [0.5, -0.5]], so
# softmax(logits)[:, 0] = sigmoid(2 * x) = [0.8808, 0.9820, 0.1192, 0.7311]. Top-1 wishes: tokens 0, 1, 3 want
# expert 0, token 2 wants expert 1; with C = round(4 / 2) = 2 one of the three wishes for expert 0 is dropped.
X = np.array([[1.0], [2.0], [-1.0], [0.5]])
W = np.array([[1.0, -1.0]])


def _nonzeros(dispatch):
    return sorted(tuple(int(i) for i in idx) for idx in np.argwhere(_np(dispatch) != 0))


def test_huggingface_switch_routes_top_1_in_token_order():
    _library("transformers")
    from conformance.adapters import huggingface_switch as hf

    d, c = hf.route("softmax_token_choice", X, W, factor=1)
    # Algorithm 1: token 0 takes expert 0's slot 0, token 1 slot 1, token 3 finds it full; token 2 -> expert 1.
    assert _nonzeros(d) == [(0, 0, 0), (1, 0, 1), (2, 1, 0)]
    np.testing.assert_allclose(_np(c)[[0, 1, 2], [0, 0, 1], [0, 1, 0]], sigmoid(np.array([2.0, 4.0, 2.0])), rtol=1e-6)
    assert _np(c)[3].sum() == 0.0  # the dropped token gets no weight
    with pytest.raises(Exception, match="1 expert"):  # NotCovered: a top-1 router asked for k = 2
        hf.route("softmax_token_choice", X, W, factor=2)


def test_deepspeed_top1_capacity_rounds_up_and_top2_matches_algorithm_1_at_two_experts():
    _library("deepspeed")
    from conformance.adapters import deepspeed_gating as ds

    # k = 1: the library's C = ceil(4 / 2 * 1) = 2 here too; with use_rts=False it keeps, of expert 0's three
    # wishes, the ones torch.topk over the 0/1 mask returns (tokens 1 and 3), in token order.
    d, c = ds.route("softmax_token_choice", X, W, factor=1)
    assert _nonzeros(d) == [(1, 0, 0), (2, 1, 0), (3, 0, 1)]
    np.testing.assert_allclose(_np(c)[[1, 2, 3], [0, 1, 0], [0, 0, 1]], sigmoid(np.array([4.0, 2.0, 1.0])), rtol=1e-6)
    # k = 2, C = 4: every request fits; with E = 2 the top-2 renormalization p_i / (p_1 + p_2) is the identity.
    d, c = ds.route("softmax_token_choice", X, W, factor=2)
    rd, rc = reference.route("softmax_token_choice", X, W, factor=2)
    np.testing.assert_array_equal(_np(d), rd)
    np.testing.assert_allclose(_np(c), rc, rtol=1e-6, atol=1e-7)
    # Its capacity function rounds up: T = 10, E = 4, factor 1 gives ceil(2.5) = 3 where the spec gives round(2.5) = 2.
    assert ds.capacity(10, 4, 1) == 3 and reference.capacity(10, 4, 1) == 2


def test_fairscale_top2_at_two_experts_is_deterministic_and_algorithm_1():
    _library("fairscale")
    from conformance.adapters import fairscale_top2 as fs

    # With E = 2 the Gumbel-sampled second expert can only be the other one: no randomness is left to decide.
    d, c = fs.route("softmax_token_choice", X, W, factor=2)
    rd, rc = reference.route("softmax_token_choice", X, W, factor=2)
    np.testing.assert_array_equal(_np(d), rd)
    np.testing.assert_allclose(_np(c), rc, rtol=1e-6, atol=1e-7)


def test_st_moe_top2_fills_slots_in_algorithm_1_order():
    _library("st_moe_pytorch")
    from conformance.adapters import st_moe_pytorch as st

    # First choices in token order, then second choices: expert 0 gets tokens 0, 1, 3 (first) then 2 (second);
    # expert 1 gets token 2 (first) then 0, 1, 3 (second). E = 2: renormalized top-2 gates are the softmax.
    d, c = st.route("softmax_token_choice", X, W, factor=2)
    rd, rc = reference.route("softmax_token_choice", X, W, factor=2)
    np.testing.assert_array_equal(_np(d).round(), rd)
    np.testing.assert_allclose(_np(c), rc, rtol=1e-6, atol=1e-7)


def test_soft_moe_pytorch_normalizes_tokens_and_slots():
    _library("soft_moe_pytorch")
    from conformance.adapters import soft_moe_pytorch as sm

    # D = 2, E = 2, S = 2 slots per expert: phi's slots (0, 0) = e0, (0, 1) = e1, (1, 0) = -e0, (1, 1) = -e1.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    phi = np.zeros((2, 2, 2))
    phi[:, 0, 0], phi[:, 0, 1], phi[:, 1, 0], phi[:, 1, 1] = [1, 0], [0, 1], [-1, 0], [0, -1]
    d, c = sm.soft_moe_routing(x, phi)
    # The library RMS-normalizes tokens and slot embeddings (scale sqrt(D), gain 1): its logits are D * cos.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = 2.0 * np.einsum("td,des->tes", unit, phi)  # phi's slots are unit vectors already
    combine = np.exp(logits.reshape(4, 4)) / np.exp(logits.reshape(4, 4)).sum(axis=1, keepdims=True)
    dispatch = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(_np(c), combine.reshape(4, 2, 2), rtol=1e-5)
    np.testing.assert_allclose(_np(d), dispatch, rtol=1e-5)
    np.testing.assert_allclose(_np(c)[0].ravel(), [0.7758, 0.1050, 0.0142, 0.1050], atol=1e-4)  # softmax([2, 0, -2, 0])
    # eq. (10)-(11) without the normalization (the spec) differ: the finding the matrix reports.
    assert not np.allclose(_np(c), reference.soft_moe_routing(x, phi)[1], atol=1e-3)


def test_praxis_gshard_top2_is_algorithm_1_and_expert_choice_fills_slots_in_reverse():
    _library("praxis")
    from conformance.adapters import praxis_gshard as px

    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.5, 0.25]])
    w = np.eye(2)
    # Top-2, E = 2, C = 4: every request fits, slots in Algorithm 1's order, renormalization the identity.
    d, c = px.route("softmax_token_choice", x, w, factor=2)
    rd, rc = reference.route("softmax_token_choice", x, w, factor=2)
    np.testing.assert_array_equal(_np(d), rd)
    np.testing.assert_allclose(_np(c), rc, rtol=1e-6, atol=1e-7)
    # Expert Choice, c = 1, C = 2: softmax[:, 0] = [.7311, .8808, .2689, .5622], so expert 0's best tokens are 1
    # then 0, expert 1's are 2 (.7311) then 3 (.4378). praxis puts the best in the last slot.
    d, c = px.route("softmax_expert_choice", x, w, factor=1)
    assert _nonzeros(d) == [(0, 0, 0), (1, 0, 1), (2, 1, 1), (3, 1, 0)]
    rd, _ = reference.route("softmax_expert_choice", x, w, factor=1)
    np.testing.assert_array_equal(_np(d)[:, :, ::-1], rd)
