"""Every bad input is rejected before any work, with a message naming the argument, the value and the expectation."""

import numpy as np
import pytest

import reference as R

GOOD = np.zeros((4, 2))
X = np.ones((4, 3))
W = np.ones((3, 2))

CASES = [
    # (call, exception, pattern the message must contain)
    (lambda: R.softmax_affinity([[0.0, np.nan]]), ValueError, r"logits must be finite.*nan at index \(0, 1\)"),
    (lambda: R.softmax_affinity([0.0, 1.0]), ValueError, r"logits must have shape \(T, E\).*got shape \(2,\)"),
    (lambda: R.softmax_affinity(np.zeros((0, 2))), ValueError, r"logits must not be empty"),
    (lambda: R.softmax_affinity([["a", "b"]]), TypeError, r"logits must hold real numbers"),
    (lambda: R.sinkhorn_affinity([[np.inf, 0.0]]), ValueError, r"logits must be finite"),
    (lambda: R.sinkhorn_affinity(GOOD, num_iters=0), ValueError, r"num_iters must be >= 1, got 0"),
    (lambda: R.sinkhorn_affinity(GOOD, tol=-1.0), ValueError, r"tol must be a finite number > 0, got -1.0"),
    (lambda: R.sparse_ot_affinity(GOOD, 0), ValueError, r"capacity must be >= 1, got 0"),
    (lambda: R.sparse_ot_affinity(GOOD, 2.0), TypeError, r"capacity must be an integer, got 2.0"),
    (lambda: R.sparse_ot_affinity(GOOD, 2, learning_rate=0.0), ValueError, r"learning_rate must be .*> 0"),
    (lambda: R.token_choice_allocation(GOOD, 0, 1), ValueError, r"capacity must be >= 1, got 0"),
    (lambda: R.token_choice_allocation(GOOD, 2, 0), ValueError, r"k must be between 1 and 2.*got 0"),
    (lambda: R.token_choice_allocation(GOOD, 2, 3), ValueError, r"k must be between 1 and 2.*got 3"),
    (lambda: R.token_choice_allocation(GOOD, 2, 1.5), TypeError, r"k must be an integer.*got 1.5"),
    (lambda: R.token_choice_allocation(GOOD, 2, True), TypeError, r"k must be an integer.*got True"),
    (lambda: R.token_choice_allocation(GOOD, 2, 1, np.zeros((4, 3))), ValueError, r"weights must have shape"),
    (lambda: R.expert_choice_allocation(GOOD, 5), ValueError, r"capacity must be at most .* T = 4.*got 5"),
    (lambda: R.capacity(0, 2, 1), ValueError, r"num_tokens must be >= 1, got 0"),
    (lambda: R.capacity(4, 2, -1), ValueError, r"factor must be a finite number > 0, got -1"),
    (lambda: R.capacity(4, 2, float("nan")), ValueError, r"factor must be a finite number > 0, got nan"),
    (lambda: R.soft_moe_routing(X, np.ones((2, 2, 1))), ValueError, r"phi must have shape \(D, E, S\) with D = 3"),
    (lambda: R.route("top2", X, W), ValueError, r"router must be one of softmax_token_choice, .*soft_moe; got 'top2'"),
    (lambda: R.route("softmax_token_choice", X, np.ones((4, 2))), ValueError, r"weight \(W\).*D = 3"),
    (lambda: R.route("softmax_token_choice", X, W, factor=1.5), TypeError, r"factor must be an integer \(k"),
    (lambda: R.route("softmax_token_choice", X, W, factor=3), ValueError, r"factor must be between 1 and 2"),
    (lambda: R.route("softmax_expert_choice", X, W, factor=4), ValueError, r"capacity 8 > T = 4"),
    (lambda: R.route("softmax_expert_choice", X, np.ones((3, 16))), ValueError, r"= 0 is below 1"),
    (lambda: R.route("softmax_expert_choice", X, W, noise=np.ones((4, 3))), ValueError, r"noise must have shape"),
    (lambda: R.route("softmax_expert_choice", [[np.nan] * 3] * 4, W), ValueError, r"x must be finite"),
    (lambda: R.route("soft_moe", X, np.ones((3, 2, 1)), noise=np.ones((4, 2))), ValueError, r"noise must be None"),
    (
        lambda: R.route("soft_moe", X, np.ones((3, 2, 1)), factor=2),
        ValueError,
        r"factor c = 2.0 asks for round\(c \* T / E\) = round\(2.0 \* 4 / 2\) = 4 slots per expert, "
        r"but weight \(phi\) has S = weight.shape\[2\] = 1",
    ),
    (lambda: R.route("soft_moe", X, np.ones((3, 2, 1)), factor=0.0), ValueError, r"factor must be .*> 0, got 0.0"),
    (
        lambda: R.mlp_experts(np.ones((2, 3, 4)), np.ones((2, 5)), np.ones((2, 4, 3)), np.ones((2, 3))),
        ValueError,
        r"b1 must have shape \(E, H\) = \(2, 4\), got \(2, 5\)",
    ),
    (lambda: R.moe_layer(X, np.ones((5, 2, 1)), np.ones((5, 2, 1)), print), ValueError, r"T = 4"),
    (lambda: R.moe_layer(X, np.ones((4, 2, 1)), np.ones((4, 2, 2)), print), ValueError, r"combine must have shape"),
    (lambda: R.moe_layer(X, np.ones((4, 2, 1)), np.ones((4, 2, 1)), None), TypeError, r"experts must be callable"),
    (lambda: R.importance_loss(np.zeros((2, 2))), ValueError, r"row 0 sums to 0.0: it looks like logits"),
    (lambda: R.importance_loss([[2.0, -1.0]]), ValueError, r"entry \(0, 1\) is -1.0 < 0: it looks like logits"),
    (lambda: R.load_loss(GOOD, np.zeros((4, 3)), 1.0, 1), ValueError, r"noisy_logits must have shape"),
    (lambda: R.load_loss(GOOD, GOOD, 0.0, 1), ValueError, r"noise_std must be a finite number > 0"),
    (lambda: R.load_loss(GOOD, GOOD, 1.0, 3), ValueError, r"k must be between 1 and 2"),
]


@pytest.mark.parametrize(("call", "exception", "pattern"), CASES)
def test_bad_input_is_rejected_with_a_clear_message(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_expert_index_is_checked():
    experts = R.mlp_experts(np.ones((2, 3, 4)), np.ones((2, 4)), np.ones((2, 4, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"r must be between 0 and 1 \(an expert index\), got 2"):
        experts(2, np.ones((1, 3)))
