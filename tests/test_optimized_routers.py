"""The JAX backend's functional API: spot checks against the reference, jit, grad, shapes, dtypes, bad input.

The full property-based comparison is the conformance suite; these are fixed inputs with known answers. Every
value here is compared with the reference or a hand-worked answer, jitted code included (never with the same
code run another way, which would share its bugs). The shape, dtype and error-message tests are smoke tests of
this backend's surface: what they check has no reference value to compare with.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimized as O
import reference as R

RNG = np.random.default_rng(1234)
T, D, E = 24, 6, 4
X = RNG.normal(size=(T, D))
W = RNG.normal(size=(D, E))
PHI = RNG.normal(size=(D, E, 3))
LOGITS = 2 * RNG.normal(size=(T, E))


def weight_for(router):
    return PHI if router == "soft_moe" else W


def test_token_choice_hand_case_matches_algorithm_1():
    # Same hand-worked case as the reference's test: C = 2, k = 2; first choices t0->e0, t1->e1, t2->e1;
    # second choices: t0->e1 dropped (full), t1->e0 slot 1, t2->e0 dropped (full).
    scores = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    routing = O.token_choice_routing(scores, 2, 2)
    np.testing.assert_array_equal(routing.token_index, [[0, 1], [1, 2]])
    np.testing.assert_array_equal(routing.valid, [[True, True], [True, True]])
    np.testing.assert_allclose(routing.weight, [[0.9, 0.2], [0.8, 0.7]])
    # With C = 1 expert e1 holds only t1; t2's slot request is dropped, leaving index T = 3 nowhere.
    routing = O.token_choice_routing(scores, 1, 1)
    np.testing.assert_array_equal(routing.token_index, [[0], [1]])


def test_empty_slots_are_marked_invalid():
    # Everybody wants e0 with k = 1, C = 2: e1 stays empty; its slots hold the sentinel T and weight 0.
    routing = O.token_choice_routing(jnp.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]]), 2, 1)
    np.testing.assert_array_equal(routing.token_index, [[0, 1], [3, 3]])
    np.testing.assert_array_equal(routing.valid, [[True, True], [False, False]])
    np.testing.assert_array_equal(routing.weight[1], [0.0, 0.0])


# Soft MoE's slot count is phi's last axis: no factor, or the c with round(c * T / E) = S (0.5 for S = 3, T = 24,
# E = 4).
ROUTE_FACTORS = [(r, f) for r in R.ROUTERS for f in ((None, 0.5) if r == "soft_moe" else (1, 2))]


@pytest.mark.parametrize(("router", "factor"), ROUTE_FACTORS)
def test_route_matches_reference(router, factor):
    expected = R.route(router, X, weight_for(router), factor=factor)
    got = O.route(router, X, weight_for(router), factor=factor)
    for e, g, name in zip(expected, got, ("dispatch", "combine"), strict=True):
        assert g.dtype == jnp.float32 and g.shape == e.shape
        np.testing.assert_allclose(np.asarray(g), e, atol=2e-6, err_msg=f"{router} {name}")


def test_affinities_match_reference():
    np.testing.assert_allclose(O.softmax_affinity(LOGITS), R.softmax_affinity(LOGITS), atol=1e-6)
    for tol in (None, 1e-3):
        np.testing.assert_allclose(
            O.sinkhorn_affinity(LOGITS, num_iters=30, tol=tol),
            R.sinkhorn_affinity(LOGITS, num_iters=30, tol=tol),
            atol=2e-6,
        )
    for slots in (3, 6, 24):
        np.testing.assert_allclose(O.sparse_ot_affinity(LOGITS, slots), R.sparse_ot_affinity(LOGITS, slots), atol=2e-5)


def test_allocations_losses_and_layer_match_reference():
    weights = RNG.random((T, E))
    for got, expected in (
        (O.token_choice_allocation(LOGITS, 5, 2, weights), R.token_choice_allocation(LOGITS, 5, 2, weights)),
        (O.expert_choice_allocation(LOGITS, 7, weights), R.expert_choice_allocation(LOGITS, 7, weights)),
        (O.soft_moe_routing(X, PHI), R.soft_moe_routing(X, PHI)),
    ):
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(np.asarray(g), e, atol=1e-6)
    probs = R.softmax_affinity(LOGITS)
    assert float(O.importance_loss(probs)) == pytest.approx(R.importance_loss(probs), rel=1e-5)
    noisy = LOGITS + 0.3 * RNG.normal(size=LOGITS.shape)
    assert float(O.load_loss(LOGITS, noisy, 0.25, 2)) == pytest.approx(R.load_loss(LOGITS, noisy, 0.25, 2), rel=1e-5)
    params = [RNG.normal(size=s) for s in ((E, D, 5), (E, 5), (E, 5, D), (E, D))]
    dispatch, combine = R.route("sinkhorn_expert_choice", X, W)
    np.testing.assert_allclose(
        O.moe_layer(X, dispatch, combine, O.mlp_experts(*params)),
        R.moe_layer(X, dispatch, combine, R.mlp_experts(*params)),
        rtol=1e-5,
        atol=1e-5,
    )
    assert O.capacity(5, 2, 1) == R.capacity(5, 2, 1) == 2


@pytest.mark.parametrize("router", R.ROUTERS)
def test_route_jits_with_static_router_and_factor(router):
    # Under jit, against the reference (not against the same code run eagerly, which would share its bugs).
    factor = 0.5 if router == "soft_moe" else 1
    fn = jax.jit(lambda x, w: O.route(router, x, w, factor=factor))
    dispatch, combine = fn(jnp.asarray(X, jnp.float32), jnp.asarray(weight_for(router), jnp.float32))
    expected = R.route(router, X, weight_for(router), factor=factor)
    np.testing.assert_allclose(dispatch, expected[0], atol=2e-6)
    np.testing.assert_allclose(combine, expected[1], atol=2e-6)


def test_sinkhorn_and_sparse_ot_jit_with_static_iterations():
    # Jitted with the iteration counts static, against the reference (tol=1e-3 stops early: iterations matter).
    sink = jax.jit(O.sinkhorn_affinity, static_argnames=("num_iters", "tol"))
    np.testing.assert_allclose(
        sink(LOGITS, num_iters=7, tol=1e-3), R.sinkhorn_affinity(LOGITS, num_iters=7, tol=1e-3), atol=2e-6
    )
    sparse = jax.jit(O.sparse_ot_affinity, static_argnames=("capacity", "num_iters", "learning_rate"))
    np.testing.assert_allclose(sparse(LOGITS, 5, num_iters=3), R.sparse_ot_affinity(LOGITS, 5, num_iters=3), atol=2e-5)


def test_bad_input_mirrors_the_reference():
    cases = [
        (lambda m: m.softmax_affinity([[0.0, np.nan]]), ValueError, r"logits must be finite"),
        (lambda m: m.sinkhorn_affinity(LOGITS, num_iters=0), ValueError, r"num_iters must be >= 1"),
        (lambda m: m.token_choice_allocation(LOGITS, 2, 5), ValueError, r"k must be between 1 and 4"),
        (lambda m: m.token_choice_allocation(LOGITS, 2, 1.0), TypeError, r"k must be an integer"),
        (lambda m: m.expert_choice_allocation(LOGITS, 25), ValueError, r"at most the number of tokens T = 24"),
        (lambda m: m.route("top1", X, W), ValueError, r"router must be one of softmax_token_choice"),
        (lambda m: m.route("softmax_expert_choice", X, W, factor=0.01), ValueError, r"is below 1"),
        (lambda m: m.capacity(4, 2, True), TypeError, r"factor must be a real number"),
        # T = 24, E = 4, S = 3: c = 1 asks for round(6) = 6 slots; c = 0.4 for round(2.4) = 2.
        (lambda m: m.route("soft_moe", X, PHI, factor=1), ValueError, r"= 6 slots per expert, .* S = .* = 3"),
        (lambda m: m.route("soft_moe", X, PHI, factor=0.4), ValueError, r"= 2 slots per expert, .* S = .* = 3"),
        (lambda m: m.route("soft_moe", X, PHI, factor=-1.0), ValueError, r"factor must be .*> 0"),
        (lambda m: m.importance_loss(LOGITS), ValueError, r"< 0: it looks like logits"),
        (lambda m: m.importance_loss(np.exp(LOGITS)), ValueError, r"row 0 sums to .*: it looks like logits"),
    ]
    for call, exception, pattern in cases:
        for module in (R, O):
            with pytest.raises(exception, match=pattern):
                call(module)


def test_soft_moe_factor_accepts_the_slots_of_phi():
    # T = 24, E = 4, S = 3: round(c * 6) = 3 for c in [0.42, 0.58], e.g. c = 0.5, and c = 0.45 (2.7 -> 3).
    expected = O.soft_moe_routing(X, PHI)
    for factor in (None, 0.5, 0.45):
        for got, want in zip(O.route("soft_moe", X, PHI, factor=factor), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_importance_loss_checks_concrete_gates_by_their_dtype():
    probs = R.softmax_affinity(LOGITS)
    off = probs.copy()
    off[:, 0] += 1e-6  # rows 1e-6 off: within 1e-5 for 32-bit floats, not within 1e-9 for 64-bit ones
    expected = R.importance_loss(probs)
    assert float(O.importance_loss(jnp.asarray(off, jnp.float32))) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match=r"within 1e-09 for float64\); row 0 sums to 1.000001"):
        O.importance_loss(off)  # judged as the float64 it is, even where JAX computes in float32
    half = jnp.asarray(probs, jnp.float16)  # float16 keeps 11 bits: rows miss 1 by ~1e-3, within 1e-2
    assert float(O.importance_loss(half)) == pytest.approx(expected, rel=1e-2)
    with pytest.raises(ValueError, match=r"within 0.01 for float16\); row 0 sums to 1.0[34]"):
        O.importance_loss(jnp.asarray(probs + 0.01, jnp.float16))
    # Under jit the gates are tracers: their values are unknown, so nothing is checked (as for finiteness).
    unnormalized = np.exp(LOGITS)
    importance = unnormalized.sum(axis=0)
    traced = jax.jit(O.importance_loss)(jnp.asarray(unnormalized, jnp.float32))
    assert float(traced) == pytest.approx(importance.var() / importance.mean() ** 2, rel=1e-5)
