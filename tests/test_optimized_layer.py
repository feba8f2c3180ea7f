"""MoELayer and ViTMoE: gradients, metrics on hand-made routings, validation at build time, overfitting."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimized as O
import reference as R
from optimized._layer import routing_metrics


def make_layer(router, group_size=32, factor=1, **kwargs):
    return O.MoELayer(
        router,
        width=8,
        hidden=16,
        num_experts=4,
        group_size=group_size,
        factor=factor,
        key=jax.random.key(0),
        **kwargs,
    )


def test_metrics_mean_what_they_say():
    # T = 4 tokens, E = 2 experts, C = 2. Expert 0 holds t0 (w 0.5) and t1 (w 0.25); expert 1 holds t0 (w 0.75)
    # and one empty slot (index T = 4). Tokens per expert: t0 2, t1 1, t2 0, t3 0.
    routing = O.Routing(
        token_index=jnp.array([[0, 1], [0, 4]]),
        weight=jnp.array([[0.5, 0.25], [0.75, 0.0]]),
        valid=jnp.array([[True, True], [True, False]]),
    )
    m = routing_metrics(routing, 4)
    assert float(m["dropped_fraction"]) == 0.5  # t2, t3
    assert float(m["experts_per_token_mean"]) == 0.75  # (2 + 1 + 0 + 0) / 4
    assert (float(m["experts_per_token_min"]), float(m["experts_per_token_max"])) == (0.0, 2.0)
    assert float(m["slot_fill"]) == 0.75  # 3 of 4 slots
    assert float(m["load_cv"]) == pytest.approx(1 / 3)  # loads [2, 1]: std 0.5 / mean 1.5
    assert (float(m["combine_weight_min"]), float(m["combine_weight_max"])) == (0.25, 0.75)
    np.testing.assert_array_equal(m["expert_load"], [1.0, 0.5])  # slots filled: 2 of 2, 1 of 2


@pytest.mark.parametrize("router", R.ROUTERS)
def test_layer_matches_reference_moe_layer_on_reference_routing(router):
    # MoELayer (compact routing, gather/scatter) == reference.moe_layer on reference.route's dense tensors.
    group = 16 if router == "soft_moe" else 32
    layer = make_layer(router, group_size=group, factor=2 if router != "soft_moe" else 1)
    x = np.random.default_rng(3).normal(size=(group, 8))
    y, _ = layer(jnp.asarray(x, jnp.float32), inference=True)
    weight = np.asarray(layer.router_weight, np.float64)
    dispatch, combine = R.route(router, x, weight, factor=1 if router == "soft_moe" else 2)
    experts = R.mlp_experts(
        *(np.asarray(a, np.float64) for a in (layer.experts.w1, layer.experts.b1, layer.experts.w2, layer.experts.b2))
    )
    np.testing.assert_allclose(np.asarray(y), R.moe_layer(x, dispatch, combine, experts), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("router", R.ROUTERS)
def test_grad_is_finite_and_reaches_router_and_experts(router):
    layer = make_layer(router, group_size=16 if router == "soft_moe" else 32)
    x = jax.random.normal(jax.random.key(1), (layer.group_size, 8))

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(layer):
        y, aux = layer(x, key=jax.random.key(2))
        return jnp.sum(y**2) + aux["loss"]

    g = grad(layer)
    for name, leaf in (("router", g.router_weight), ("w1", g.experts.w1), ("w2", g.experts.w2)):
        assert jnp.all(jnp.isfinite(leaf)), (router, name)
        assert float(jnp.abs(leaf).max()) > 0, (router, name)


@pytest.mark.parametrize("router", [r for r in R.ROUTERS if r != "soft_moe"])
def test_router_gradient_flows_only_through_softmax_combine_weights(router):
    # With the routing decision held fixed (stop_gradient of Sinkhorn, sparse OT and top-k), the gradient with
    # respect to W is that of eq. (2) with combine weights softmax(x W) at the chosen slots, nothing more. The
    # decision is the reference's (reference.route in float64), and eq. (2) is written out densely here, so
    # nothing of optimized's routing code is on the expected side.
    layer = make_layer(router, noise_std=0.0)
    x = jax.random.normal(jax.random.key(4), (32, 8))
    x64, w64 = np.asarray(x, np.float64), np.asarray(layer.router_weight, np.float64)
    dispatch, _ = R.route(router, x64, w64, factor=1)
    np.testing.assert_array_equal(  # the same decisions: the comparison below is then about gradients alone
        np.asarray(layer.token_expert_weights(x) > 0), dispatch.sum(axis=2) > 0
    )
    dispatch = jnp.asarray(dispatch, jnp.float32)
    w1, b1, w2, b2 = layer.experts.w1, layer.experts.b1, layer.experts.w2, layer.experts.b2

    def through_layer(w):
        y, _ = eqx.tree_at(lambda m: m.router_weight, layer, w)(x, inference=True)
        return jnp.sum(jnp.sin(y))

    def fixed_decision(w):
        combine = dispatch * jax.nn.softmax(x @ w, axis=-1)[:, :, None]  # combine = softmax at the chosen slots
        slots = jnp.einsum("tec,td->ecd", dispatch, x)
        outputs = jnp.einsum("ech,ehd->ecd", jax.nn.gelu(jnp.einsum("ecd,edh->ech", slots, w1) + b1[:, None]), w2)
        y = jnp.einsum("tec,ecd->td", combine, outputs + b2[:, None])  # eq. (2)
        return jnp.sum(jnp.sin(y))

    np.testing.assert_allclose(
        jax.grad(through_layer)(layer.router_weight),
        jax.grad(fixed_decision)(layer.router_weight),
        rtol=1e-5,
        atol=1e-6,
    )


def test_softmax_token_choice_noise_only_in_training_and_aux_losses():
    layer = make_layer("softmax_token_choice")
    x = jax.random.normal(jax.random.key(5), (32, 8))
    y1, aux1 = layer(x, key=jax.random.key(1))
    y2, _ = layer(x, key=jax.random.key(2))
    y_inf, aux_inf = layer(x, inference=True)
    assert not jnp.allclose(y1, y2)  # different noise, different routing weights
    np.testing.assert_array_equal(y_inf, layer(x, key=jax.random.key(3), inference=True)[0])  # no noise
    assert float(aux1["load_loss"]) > 0 and float(aux1["importance_loss"]) > 0
    assert float(aux_inf["load_loss"]) == 0  # no noise, no load loss
    expected = 0.005 * (float(aux1["importance_loss"]) + float(aux1["load_loss"]))
    assert float(aux1["loss"]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="needs a key"):
        layer(x)


def test_importance_loss_is_taken_on_the_clean_logits_in_training():
    # Appendix A: Imp(X) = sum_t softmax(XW)_t, without the noise (the noise enters the load loss only). A large
    # noise (std 1) makes the noisy softmax's importance clearly different, so taking it there would fail.
    layer = make_layer("softmax_token_choice", noise_std=1.0)
    x = jax.random.normal(jax.random.key(5), (32, 8))
    _, aux = layer(x, key=jax.random.key(1))
    clean = np.asarray(x, np.float64) @ np.asarray(layer.router_weight, np.float64)
    expected = R.importance_loss(R.softmax_affinity(clean))
    assert float(aux["importance_loss"]) == pytest.approx(expected, rel=1e-4)
    assert float(aux["importance_loss"]) == pytest.approx(float(layer(x, inference=True)[1]["importance_loss"]))


@pytest.mark.parametrize("router", ["sinkhorn_token_choice", "sinkhorn_expert_choice"])
def test_sinkhorn_style_paper_has_no_noise_vmoe_has_noise_and_losses(router):
    x = jax.random.normal(jax.random.key(5), (32, 8))
    paper = make_layer(router)
    np.testing.assert_array_equal(paper(x, key=jax.random.key(1))[0], paper(x, key=jax.random.key(2))[0])
    vmoe = make_layer(router, sinkhorn_style="vmoe")
    y1, aux1 = vmoe(x, key=jax.random.key(1))
    assert not jnp.allclose(y1, vmoe(x, key=jax.random.key(2))[0])  # N(0, (1/E)^2) noise on the logits
    y_inf, aux_inf = vmoe(x, inference=True)
    np.testing.assert_array_equal(y_inf, vmoe(x, key=jax.random.key(3), inference=True)[0])  # none at inference
    np.testing.assert_array_equal(y_inf, paper(x, inference=True)[0])  # same weights: the same inference
    if router == "sinkhorn_token_choice":  # the authors' code gives Sinkhorn TC the load loss too
        assert float(aux1["load_loss"]) > 0 and float(aux_inf["load_loss"]) == 0
        assert float(paper(x, key=jax.random.key(1))[1]["load_loss"]) == 0
    else:  # Expert Choice has no auxiliary loss in either style
        assert float(aux1["loss"]) == 0
    with pytest.raises(ValueError, match="needs a key"):
        vmoe(x)
    with pytest.raises(ValueError, match="sinkhorn_style must be one of paper, vmoe; got 'authors'"):
        make_layer(router, sinkhorn_style="authors")


def test_layer_validates_at_build_time():
    with pytest.raises(ValueError, match=r"round\(1.0 \* 4 / 32\) = 0 is below 1"):
        O.MoELayer("softmax_expert_choice", width=8, hidden=8, num_experts=32, group_size=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="router must be one of"):
        make_layer("hash")
    with pytest.raises(ValueError, match=r"factor must be between 1 and 4"):
        make_layer("softmax_token_choice", factor=5)
    with pytest.raises(ValueError, match="combine_from='plan' needs a Sinkhorn router"):
        make_layer("softmax_expert_choice", combine_from="plan")
    with pytest.raises(ValueError, match="x must have 32 tokens"):
        make_layer("softmax_expert_choice")(jnp.zeros((31, 8)), inference=True)
    with pytest.raises(ValueError, match="depth must be even"):
        O.ViTMoE(O.ViTMoEConfig(depth=3), key=jax.random.key(0))
    with pytest.raises(ValueError, match="multiple of group_images = 2"):
        model = O.ViTMoE(tiny_config("softmax_expert_choice"), key=jax.random.key(0))
        model(jnp.zeros((3, 8, 8, 1)), inference=True)


def tiny_config(router, **changes):
    return O.ViTMoEConfig(
        **O.VARIANTS["micro"], image_size=8, channels=1, num_classes=4, group_images=2, router=router
    ).replace(**changes)


def test_random_routing_ignores_the_tokens_and_redraws_per_key():
    # The content-agnostic control: the assignment depends on the key only. Two different groups routed with
    # the same key go to the same experts; another key gives another assignment; gates are near 1 (logits x 10).
    layer = O.MoELayer("softmax_token_choice", width=8, hidden=16, num_experts=4, group_size=32, random_routing=True,
                       key=jax.random.key(0))  # fmt: skip
    x, y = jax.random.normal(jax.random.key(1), (2, 32, 8))
    k1, k2 = jax.random.key(5), jax.random.key(6)
    w = {name: layer.token_expert_weights(v, key=k) for name, v, k in (("x1", x, k1), ("y1", y, k1), ("x2", x, k2))}
    assert jnp.array_equal(w["x1"] > 0, w["y1"] > 0) and not jnp.array_equal(w["x1"] > 0, w["x2"] > 0)
    kept = w["x1"].sum(-1)
    assert float(jnp.median(kept[kept > 0])) > 0.99
    # the learned router's assignment does depend on the tokens
    learned = O.MoELayer("softmax_token_choice", width=8, hidden=16, num_experts=4, group_size=32, noise_std=0.0,
                         key=jax.random.key(0))  # fmt: skip
    wx, wy = (learned.token_expert_weights(v, key=k1) for v in (x, y))
    assert not jnp.array_equal(wx > 0, wy > 0)
    # no gradient reaches the router weights, and no auxiliary loss is added
    grad = jax.grad(lambda m: m(x, key=k1)[0].sum())(layer)
    assert float(jnp.abs(grad.router_weight).max()) == 0.0 and float(layer(x, key=k1)[1]["loss"]) == 0.0
    with pytest.raises(ValueError, match="random_routing=True needs a sparse router"):
        O.MoELayer("soft_moe", width=8, hidden=16, num_experts=4, group_size=32, random_routing=True,
                   key=jax.random.key(0))  # fmt: skip


def test_vit_capacity_factor_below_k_for_token_choice():
    # ViTMoEConfig.capacity_factor = 0.5 at k = 1: C = round(0.5 x T / E) = round(0.5 x 2 x 16 / 4) = 4 slots per
    # expert for a group of T = 32 tokens, so at least half of the tokens are dropped.
    config = O.ViTMoEConfig(**O.VARIANTS["micro"], image_size=16, channels=1, num_classes=3, group_images=2,
                            router="softmax_token_choice", capacity_factor=0.5)  # fmt: skip
    model = O.ViTMoE(config, key=jax.random.key(0))
    assert model.blocks[1].moe.capacity == 4 and model.capacity_factor == 0.5
    _, aux = model(jnp.ones((2, 16, 16, 1)), key=jax.random.key(1), inference=False)
    assert float(aux["moe"]["dropped_fraction"][0]) >= 0.5
    assert O.ViTMoE(config.replace(capacity_factor=None), key=jax.random.key(0)).blocks[1].moe.capacity == 8
    with pytest.raises(ValueError, match="capacity_factor"):
        config.replace(capacity_factor=0).validate()
    with pytest.raises(ValueError, match="random_routing=True needs a sparse router"):
        config.replace(router="soft_moe", random_routing=True).validate()


def test_vit_moe_layout_dtypes_and_metrics():
    config = tiny_config("softmax_expert_choice", depth=4, pool="cls")
    model = O.ViTMoE(config, key=jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    logits, aux = model(images, key=jax.random.key(2))
    assert logits.shape == (4, 4) and logits.dtype == jnp.float32
    assert set(aux["moe"]) == set(O.METRIC_NAMES) and aux["moe"]["slot_fill"].shape == (2,)  # blocks 1 and 3
    assert aux["moe"]["expert_load"].shape == (2, config.num_experts)
    features, _ = model.features(images)
    assert features.shape == (4, 32)
    bf16 = O.ViTMoE(config.replace(dtype="bfloat16"), key=jax.random.key(0))
    assert jnp.all(jnp.isfinite(bf16.features(images)[0]))
    dense = O.ViTMoE(config.replace(dense=True), key=jax.random.key(0))
    assert dense(images, inference=True)[1]["moe"]["slot_fill"].shape == (0,)


@pytest.mark.parametrize("router", R.ROUTERS)
def test_tiny_vit_moe_overfits_a_handful_of_images(router):
    images = jax.random.normal(jax.random.key(7), (8, 8, 8, 1))
    labels = jnp.arange(8) % 4
    model = O.ViTMoE(tiny_config(router), key=jax.random.key(0))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, key):
        def loss_fn(model):
            logits, aux = model(images, key=key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + aux["loss"]

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, state = optimizer.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    first = None
    for i in range(40):
        model, state, loss = step(model, state, jax.random.key(i))
        first = float(loss) if first is None else first
    logits, _ = model(images, inference=True)
    assert first > 1.0  # log(4) = 1.39 at the zero-initialized head
    assert float((logits.argmax(-1) == labels).mean()) == 1.0, router


@pytest.mark.parametrize("router", ["softmax_token_choice", "soft_moe"])
def test_vit_scan_layers_and_written_out_backward_match_autodiff(router):
    # The sequence of blocks (the default) and the rolled scan over stacked pairs are one function; the layer norm
    # and matmuls with written-out backward passes (optimized._vit) give autodiff's gradients; the experts run on
    # (E, G * C, D) give the per-group layer's outputs.
    from optimized._backward import _layer_norm_forward, _matmul

    config = tiny_config(router, depth=4, pool="cls", soft_moe_normalize=router == "soft_moe")
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    model = O.ViTMoE(config, key=jax.random.key(0))
    rolled = O.ViTMoE(config.replace(scan_layers=True), key=jax.random.key(0))

    def loss(model):
        logits, aux = model(images, key=jax.random.key(2))
        return (logits**2).sum() + aux["loss"]

    rolled_grads = O.with_layout(eqx.filter_grad(loss)(rolled), "sequence")
    for a, b in zip(jax.tree.leaves(eqx.filter_grad(loss)(model)), jax.tree.leaves(rolled_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    x = jax.random.normal(jax.random.key(3), (2, 5, 16)) * 3 + 1
    scale, bias = jax.random.normal(jax.random.key(4), (2, 16))
    w = jax.random.normal(jax.random.key(5), (16, 7))
    g = jax.random.normal(jax.random.key(6), (2, 5, 7))

    def autodiff_layer_norm(x, scale, bias):
        return _layer_norm_forward(x, scale, bias, 1e-6)[0]

    for ours, plain in (
        (lambda x, s, b: O._backward._layer_norm(x, s, b) @ w, lambda x, s, b: autodiff_layer_norm(x, s, b) @ w),
        (lambda x, s, b: _matmul(x * s + b, w), lambda x, s, b: (x * s + b) @ w),
    ):
        mine = jax.vjp(ours, x, scale, bias)[1](g)
        theirs = jax.vjp(plain, x, scale, bias)[1](g)
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # q, k, v from the fused weight with the written-out backward: autodiff's gradients, the same forward exactly
    from optimized._backward import _qkv

    h = jax.random.normal(jax.random.key(10), (2, 5, 8))
    w3, b3 = jax.random.normal(jax.random.key(11), (8, 24)), jax.random.normal(jax.random.key(12), (24,))
    cotangents = tuple(jax.random.normal(jax.random.key(13), (3, 2, 5, 2, 4)))
    plain = lambda h, w, b: tuple((h @ w[:, 8 * i : 8 * i + 8] + b[8 * i : 8 * i + 8]).reshape(2, 5, 2, 4)  # noqa: E731
                                  for i in range(3))  # fmt: skip
    np.testing.assert_array_equal(jnp.stack(_qkv(h, w3, b3, 2)), jnp.stack(plain(h, w3, b3)))
    ours = jax.vjp(lambda h, w, b: _qkv(h, w, b, 2), h, w3, b3)[1](cotangents)
    for a, b in zip(ours, jax.vjp(plain, h, w3, b3)[1](cotangents), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    layer = model.blocks[1].moe
    groups = jax.random.normal(jax.random.key(8), (2, config.group_size, config.width))
    keys = jax.random.split(jax.random.key(9), 2)
    y, _ = O.moe_over_groups(layer, groups, keys, False)
    y0 = jnp.stack([layer(g, key=k)[0] for g, k in zip(groups, keys, strict=True)])
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-6)
