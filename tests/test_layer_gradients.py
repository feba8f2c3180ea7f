"""``optimized.MoELayer`` against the reference where the conformance suite cannot reach: gradients, dropped
tokens, inference.

These live here rather than in ``conformance``: they need a trainable layer and automatic differentiation
(``MoELayer``, ``jax.grad``), which the spec's API does not have, so they are checks of this backend, not of
any port. Gradients are compared in float64 with central finite differences of the *reference* composition
``reference.moe_layer(x, *reference.route(router, x, W), reference.mlp_experts(...))``: along random
directions in the router weights, the experts' parameters and the tokens, for all six routers. The routing
decision is piecewise constant, so the finite difference sees exactly what sec. 3.4 says trains the router:
the softmax combine weights at the chosen slots (no gradient through Sinkhorn, sparse OT or top-k); for Soft MoE,
both the dispatch and the combine softmax. Each difference is taken where the routing decision does not move
(asserted), so no tie can decide a verdict.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimized as O
import optimized._layer
import reference as R

T, D, H, E = 12, 4, 5, 3
SLOTS = 2  # Soft MoE slots per expert
FACTOR = {"softmax_token_choice": 2, "sinkhorn_token_choice": 1, "soft_moe": SLOTS * E / T}
LEAVES = lambda m: (m.router_weight, m.experts.w1, m.experts.b1, m.experts.w2, m.experts.b2)  # noqa: E731
GROUPS = {"router weights": (0,), "experts": (1, 2, 3, 4), "tokens": (5,)}


def problem(router, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(D, E, SLOTS) if router == "soft_moe" else (D, E))
    params = [rng.normal(size=s) / 2 for s in ((E, D, H), (E, H), (E, H, D), (E, D))]
    x = rng.normal(size=(T, D))
    cotangent = rng.normal(size=(T, D))
    return [weight, *params, x], cotangent


def layer_gradient(router, arrays, cotangent):
    """d/d(arrays) of sum(MoELayer(x) * cotangent), by jax.grad through the layer (inference: no noise)."""
    with jax.enable_x64(True):
        layer = O.MoELayer(router, width=D, hidden=H, num_experts=E, group_size=T,
                           factor=FACTOR.get(router, 1), key=jax.random.key(0))  # fmt: skip

        def loss(values):
            *leaves, x = values
            y, _ = eqx.tree_at(LEAVES, layer, tuple(leaves))(x, inference=True)
            return jnp.sum(y * cotangent)

        return [np.asarray(g) for g in jax.grad(loss)([jnp.asarray(a, jnp.float64) for a in arrays])]


def reference_loss(router, arrays, cotangent):
    weight, w1, b1, w2, b2, x = arrays
    dispatch, combine = R.route(router, x, weight, factor=FACTOR.get(router, 1))
    return float(np.sum(R.moe_layer(x, dispatch, combine, R.mlp_experts(w1, b1, w2, b2)) * cotangent)), dispatch


def gradient_mismatches(router, seed=0, eps=1e-6, directions=3):
    """Where the layer's gradient and the reference's finite differences disagree (empty: they agree)."""
    arrays, cotangent = problem(router, seed)
    grads = layer_gradient(router, arrays, cotangent)
    _, dispatch = reference_loss(router, arrays, cotangent)
    rng = np.random.default_rng(seed + 1)
    problems = []
    for group, indices in GROUPS.items():
        for _ in range(directions):
            step = [rng.normal(size=a.shape) if i in indices else np.zeros_like(a) for i, a in enumerate(arrays)]
            up, d_up = reference_loss(router, [a + eps * s for a, s in zip(arrays, step, strict=True)], cotangent)
            down, d_down = reference_loss(router, [a - eps * s for a, s in zip(arrays, step, strict=True)], cotangent)
            if router != "soft_moe":  # Soft MoE's dispatch is a smooth function, differentiated like the rest
                assert np.array_equal(d_up, dispatch) and np.array_equal(d_down, dispatch), "a step moved the routing"
            finite = (up - down) / (2 * eps)
            analytic = sum(float(np.sum(g * s)) for g, s in zip(grads, step, strict=True))
            if not np.isclose(analytic, finite, rtol=1e-6, atol=1e-7):
                problems.append(f"{router}, {group}: layer gradient {analytic!r}, finite differences {finite!r}")
    return problems


@pytest.mark.parametrize("router", R.ROUTERS)
def test_layer_gradients_equal_finite_differences_of_the_reference(router):
    assert gradient_mismatches(router) == []


def test_gradients_catch_a_stop_gradient_on_soft_moe_dispatch(monkeypatch):
    # A mutant layer: Soft MoE's dispatch weights are treated as constants. The router gradient loses the part
    # that flows through the dispatch softmax, which the finite differences of the reference still see.
    tensors = optimized._layer.soft_moe_tensors

    def stopped(logits):
        dispatch, combine = tensors(logits)
        return jax.lax.stop_gradient(dispatch), combine

    monkeypatch.setattr(optimized._layer, "soft_moe_tensors", stopped)
    problems = gradient_mismatches("soft_moe")
    assert any("router weights" in p for p in problems), problems


@pytest.mark.parametrize("router", R.ROUTERS[:5])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_token_no_expert_processed_gets_exactly_zero(router, dtype):
    # Every token prefers expert 0 (a large first column of W), C = round(T / E) = 4: Token Choice with k = 1
    # drops the 8 tokens expert 0 has no room for; Expert Choice leaves out the tokens no expert chose. Their
    # output from the MoE branch must be exactly 0, not a small number.
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(T, D))) + 0.1
    weight = np.zeros((D, E))
    weight[:, 0] = 1.0
    weight += 0.1 * rng.normal(size=(D, E))
    dispatch, _ = R.route(router, x, weight, factor=1)
    dropped = dispatch.sum(axis=(1, 2)) == 0
    assert dropped.any(), "the case must drop tokens"
    with jax.enable_x64(dtype == jnp.float64):
        layer = O.MoELayer(router, width=D, hidden=H, num_experts=E, group_size=T, key=jax.random.key(1))
        layer = eqx.tree_at(lambda m: (m.router_weight, m.experts.b2), layer,
                            (jnp.asarray(weight, dtype), jnp.ones((E, D), dtype)))  # fmt: skip
        y, _ = layer(jnp.asarray(x, dtype), inference=True)
        y = np.asarray(y)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[dropped], 0.0)
    assert (np.abs(y[~dropped]).sum(axis=1) > 0).all()  # the experts' bias b2 = 1 reaches every routed token


@pytest.mark.parametrize("router", ["softmax_token_choice", "sinkhorn_token_choice", "sinkhorn_expert_choice"])
def test_inference_is_noise_free_and_key_independent(router):
    # sinkhorn_style="vmoe" puts noise on the Sinkhorn routers' logits in training, as Softmax Token Choice has.
    layer = O.MoELayer(router, width=D, hidden=H, num_experts=E, group_size=T, sinkhorn_style="vmoe",
                       noise_std=1.0, key=jax.random.key(2))  # fmt: skip
    x = jax.random.normal(jax.random.key(3), (T, D))
    y = layer(x, inference=True)[0]
    for key in (None, jax.random.key(0), jax.random.key(1)):
        np.testing.assert_array_equal(layer(x, key=key, inference=True)[0], y)
    # ... and equal to the noise-free reference composition.
    w = np.asarray(layer.router_weight, np.float64)
    params = [np.asarray(a, np.float64) for a in LEAVES(layer)[1:]]
    xs = np.asarray(x, np.float64)
    expected = R.moe_layer(xs, *R.route(router, xs, w, factor=1), R.mlp_experts(*params))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    # The noise is real in training (so the checks above can fail): two keys, two outputs.
    assert not np.array_equal(layer(x, key=jax.random.key(0))[0], layer(x, key=jax.random.key(1))[0])


@pytest.mark.parametrize("router", R.ROUTERS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_tokens_route_like_the_reference_and_stay_finite(router, dtype):
    # Tokens in bfloat16 / float16 at the scale a ViT's residual stream reaches (|x| up to ~30) and router
    # weights large enough for logits of several tens: the router must not overflow (Sinkhorn's exp in low
    # precision is a known failure elsewhere) and must choose as the reference does on the same (rounded) tokens.
    rng = np.random.default_rng(5)
    x = jnp.asarray(8 * rng.normal(size=(T, D)), dtype)
    xs = np.asarray(x.astype(jnp.float32), np.float64)  # the tokens the layer sees, exactly
    shape = (D, E, SLOTS) if router == "soft_moe" else (D, E)
    weight = np.asarray(jnp.asarray(rng.normal(size=shape), jnp.float32), np.float64)
    layer = O.MoELayer(router, width=D, hidden=H, num_experts=E, group_size=T, factor=FACTOR.get(router, 1),
                       key=jax.random.key(4))  # fmt: skip
    layer = eqx.tree_at(lambda m: m.router_weight, layer, jnp.asarray(weight, jnp.float32))
    y, _ = layer(x, inference=True)
    assert y.dtype == dtype and bool(jnp.isfinite(y.astype(jnp.float32)).all())
    got = np.asarray(layer.token_expert_weights(x), np.float64)
    dispatch, combine = R.route(router, xs, weight, factor=FACTOR.get(router, 1))
    if router == "soft_moe":
        np.testing.assert_allclose(got, combine.sum(axis=2), rtol=1e-4, atol=1e-6)
    else:
        np.testing.assert_array_equal(got > 0, dispatch.sum(axis=2) > 0)  # the same decisions
        np.testing.assert_allclose(got, combine.sum(axis=2), rtol=1e-4, atol=1e-6)
