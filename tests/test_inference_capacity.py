"""Running a trained MoELayer / ViTMoE at another capacity: ``with_capacity`` and ``python -m train.evaluate
--capacity-factor``."""

import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimized as O

SPARSE = [r for r in O.ROUTERS if r != "soft_moe"]
TOKEN_CHOICE = ["softmax_token_choice", "sinkhorn_token_choice"]
EXPERT_CHOICE = ["softmax_expert_choice", "sinkhorn_expert_choice", "sparsity_constrained_expert_choice"]


def make_layer(router, factor=1, group_size=32, **kwargs):
    # E = 4 experts; T = 32 tokens: C = round(factor * 32 / 4) = 8 * factor (Soft MoE: T = 16, S = 4 * factor)
    return O.MoELayer(
        router, width=8, hidden=16, num_experts=4, group_size=group_size, factor=factor, key=jax.random.key(0),
        **kwargs,
    )  # fmt: skip


def tokens(num_tokens=32, seed=1):
    return jax.random.normal(jax.random.key(seed), (num_tokens, 8))


def unbalanced(layer):
    # A router weight that sends most tokens to the same experts, so that C = T / E drops tokens.
    w = jax.random.normal(jax.random.key(9), layer.router_weight.shape) + jnp.array([2.0, 1.0, 0.0, -1.0])
    return eqx.tree_at(lambda m: m.router_weight, layer, w)


def same_weights(template, donor):
    """``template``'s static fields (its capacity) with ``donor``'s arrays."""
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), jax.tree_util.tree_leaves(donor))


@pytest.mark.parametrize("router", O.ROUTERS)
def test_the_trained_factor_gives_the_same_layer_bit_for_bit(router):
    layer = make_layer(router, group_size=16 if router == "soft_moe" else 32)
    x = tokens(layer.group_size)
    for factor in (layer.factor, layer.capacity_factor):
        again = layer.with_capacity(factor)
        assert again.capacity == layer.capacity
        for kwargs in ({"inference": True}, {"key": jax.random.key(3)}):  # inference, and training noise
            (y, aux), (y2, aux2) = layer(x, **kwargs), again(x, **kwargs)
            np.testing.assert_array_equal(y2, y)
            for name in aux:
                np.testing.assert_array_equal(aux2[name], aux[name], err_msg=name)


@pytest.mark.parametrize("router", SPARSE)
def test_the_copy_shares_the_arrays_and_the_original_is_unchanged(router):
    layer = make_layer(router)
    wider = layer.with_capacity(2)
    assert (layer.capacity, wider.capacity) == (8, 16)  # round(1 * 32 / 4), round(2 * 32 / 4)
    assert (layer.capacity_factor, wider.capacity_factor) == (1.0, 2.0)
    assert wider.factor == layer.factor and wider.k == layer.k  # Token Choice keeps its k
    old, new = jax.tree_util.tree_leaves(layer), jax.tree_util.tree_leaves(wider)
    assert len(old) == len(new) == 5  # W, w1, b1, w2, b2
    assert all(a is b for a, b in zip(old, new, strict=True))  # the same arrays, not copies


@pytest.mark.parametrize("router", ["softmax_token_choice", "sinkhorn_token_choice", "softmax_expert_choice",
                                    "sinkhorn_expert_choice"])  # fmt: skip
def test_a_larger_capacity_drops_fewer_tokens(router):
    # Token Choice: a request accepted at C is accepted at any C' > C (its queue position is below C); Expert
    # Choice (softmax or Sinkhorn scores, which do not depend on C): each expert's C best tokens are among its
    # C' best. So the dropped fraction cannot grow with C, and at C = T (factor E = 4) nothing is dropped.
    layer = unbalanced(make_layer(router))
    x = tokens()
    dropped = [float(layer.with_capacity(f)(x, inference=True)[1]["dropped_fraction"]) for f in (1, 2, 4)]
    assert dropped[0] > dropped[1] >= dropped[2] == 0.0, dropped


def test_sparsity_constrained_expert_choice_at_capacity_t_drops_nothing():
    # Its plan depends on C (at most C tokens per expert), so only the end point is certain: C = T takes all.
    layer = unbalanced(make_layer("sparsity_constrained_expert_choice"))
    _, aux = layer.with_capacity(4)(tokens(), inference=True)
    assert float(aux["dropped_fraction"]) == 0.0 and float(aux["experts_per_token_mean"]) == 4.0


@pytest.mark.parametrize("k", [1, 2])
def test_softmax_token_choice_without_drops_is_the_top_k_mixture(k):
    # At C = T (capacity_factor E = 4) no token is dropped, so eq. (2) is y[t] = sum over t's top-k experts r of
    # softmax(x W)[t, r] * MLP_r(x[t]): computed here by hand in float64. A layer built from scratch with
    # capacity_factor=4 and the same weights is the same layer.
    layer = unbalanced(make_layer("softmax_token_choice", factor=k))
    trained = layer(tokens(), inference=True)[1]
    assert float(trained["experts_per_token_mean"]) < k  # at its trained C = 8k, some requests are dropped
    wide = layer.with_capacity(4)
    y, aux = wide(tokens(), inference=True)
    assert float(aux["dropped_fraction"]) == 0.0 and float(aux["experts_per_token_min"]) == k

    scratch = same_weights(make_layer("softmax_token_choice", factor=k, capacity_factor=4), layer)
    assert scratch.capacity == wide.capacity == 32
    np.testing.assert_array_equal(scratch(tokens(), inference=True)[0], y)

    x = np.asarray(tokens(), np.float64)
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(layer.experts))
    logits = x @ np.asarray(layer.router_weight, np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected = np.zeros_like(x)
    for t in range(32):
        for r in np.argsort(-probs[t], kind="stable")[:k]:
            h = x[t] @ w1[r] + b1[r]
            gelu = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
            expected[t] += probs[t, r] * (gelu @ w2[r] + b2[r])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("router", EXPERT_CHOICE)
def test_expert_choice_at_a_new_capacity_is_the_layer_built_with_that_factor(router):
    layer = make_layer(router)
    scratch = same_weights(make_layer(router, factor=2), layer)  # c = 2: C = 16
    wide = layer.with_capacity(2)
    assert scratch.capacity == wide.capacity == 16
    x = tokens()
    np.testing.assert_array_equal(wide(x, inference=True)[0], scratch(x, inference=True)[0])
    # Expert Choice fills every slot: E C / T = 4 * 16 / 32 = 2 experts per token on average.
    assert float(wide(x, inference=True)[1]["experts_per_token_mean"]) == 2.0


def test_bad_capacity_factors_are_refused_naming_the_value():
    layer = make_layer("softmax_expert_choice")
    for bad, shown in ((0, "0.0"), (-1.5, "-1.5"), (float("nan"), "nan"), (float("inf"), "inf")):
        with pytest.raises(ValueError, match=rf"capacity_factor must be a finite number > 0, got {shown}"):
            layer.with_capacity(bad)
        with pytest.raises(ValueError, match=rf"capacity_factor must be a finite number > 0, got {shown}"):
            make_layer("softmax_expert_choice", capacity_factor=bad)
    for router in ("softmax_token_choice", "softmax_expert_choice"):
        # round(5 * 32 / 4) = 40 > T = 32: an expert holds each token at most once
        with pytest.raises(ValueError, match=r"capacity_factor = 5.0 gives capacity C = 40 > T = 32"):
            make_layer(router).with_capacity(5)
    with pytest.raises(ValueError, match=r"round\(0.05 \* 32 / 4\) = 0 is below 1"):
        layer.with_capacity(0.05)
    with pytest.raises(TypeError, match="capacity_factor must be a real number, got '2'"):
        layer.with_capacity("2")
    with pytest.raises(TypeError, match="capacity_factor must be a real number, got True"):
        layer.with_capacity(True)


def test_soft_moe_keeps_its_trained_slots():
    # T = 16, E = 4: S = round(factor * 16 / 4) = 4 slots per expert, the columns of phi (D, E, S).
    layer = make_layer("soft_moe", group_size=16)
    assert layer.router_weight.shape == (8, 4, 4)
    with pytest.raises(ValueError, match=r"capacity_factor = 2.0 gives S = .* = 8 slots per expert, but this Soft "
                                         r"MoE layer has S = 4: its slots are trained parameters"):  # fmt: skip
        layer.with_capacity(2)
    with pytest.raises(ValueError, match="its slots are trained parameters"):
        make_layer("soft_moe", group_size=16, capacity_factor=0.5)
    same = layer.with_capacity(1.1)  # round(1.1 * 16 / 4) = round(4.4) = 4: the same slots, the same layer
    assert same.capacity == 4 and same.capacity_factor == 1.1
    np.testing.assert_array_equal(same(tokens(16), inference=True)[0], layer(tokens(16), inference=True)[0])


def tiny_vit(router, **changes):
    # micro ViT on 8 x 8 images, patches 4 x 4: N = 4 tokens per image, E = 4; depth 4: MoE blocks 1 and 3.
    # Sparse routers group 2 images: T = 8, C = round(factor * 8 / 4) = 2 factor.
    config = O.ViTMoEConfig(
        **O.VARIANTS["micro"], image_size=8, channels=1, num_classes=4, group_images=2, router=router
    ).replace(depth=4, **changes)
    return O.ViTMoE(config, key=jax.random.key(0))


def images():
    return jax.random.normal(jax.random.key(1), (4, 8, 8, 1))


@eqx.filter_jit
def predict(model, images):
    return model(images, inference=True)


def test_vit_with_capacity_changes_every_moe_layer_and_runs_under_jit():
    model = tiny_vit("softmax_expert_choice")
    wide = model.with_capacity(2)
    assert (model.capacity_factor, wide.capacity_factor) == (1.0, 2.0)
    assert [(model.blocks[i].moe.capacity, wide.blocks[i].moe.capacity) for i in (1, 3)] == [(2, 4)] * 2
    assert wide.config == model.config  # the config stays the one the weights were trained with
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(wide), strict=True))
    # with_capacity only changes static fields, so it also runs on traced arrays inside jit. Expert Choice fills
    # all E C slots: E C / T = 4 * 4 / 8 = 2 experts per token (1 at the trained c = 1), in both MoE layers.
    _, aux = eqx.filter_jit(lambda m, x: m.with_capacity(2)(x, inference=True))(model, images())
    np.testing.assert_array_equal(aux["moe"]["experts_per_token_mean"], [2.0, 2.0])


def test_vit_token_choice_at_the_trained_and_at_full_capacity():
    model = tiny_vit("softmax_token_choice")
    np.testing.assert_array_equal(predict(model.with_capacity(1), images())[0], predict(model, images())[0])
    _, aux = predict(model.with_capacity(4), images())  # C = T = 8
    np.testing.assert_array_equal(aux["moe"]["dropped_fraction"], [0.0, 0.0])


def test_vit_with_capacity_refusals():
    with pytest.raises(ValueError, match="capacity_factor must be a finite number > 0, got nan"):
        tiny_vit("softmax_expert_choice").with_capacity(float("nan"))
    with pytest.raises(ValueError, match=r"capacity_factor = 5\.0 gives capacity C = 10 > T = 8"):
        tiny_vit("softmax_expert_choice").with_capacity(5)
    with pytest.raises(ValueError, match="its slots are trained parameters"):
        tiny_vit("soft_moe").with_capacity(2)
    dense = tiny_vit("softmax_expert_choice", dense=True)
    assert dense.capacity_factor is None
    with pytest.raises(ValueError, match=r"with_capacity\(2\): a dense model .* has no MoE layers"):
        dense.with_capacity(2)


def test_fewshot_cli_evaluates_at_another_capacity(tmp_path, capsys):
    import train
    from train import checkpoint
    from train.evaluate import main
    from train.presets import resolve
    from train.trained import load_trained

    # Softmax Expert Choice at c = 1 (T = 2 images x 4 patches = 8, C = 2); two steps (the first has learning rate
    # 0: warmup), checkpointed, no evaluation.
    config = resolve("tiny", steps=3, overrides=("eval_every=100",))
    train.train_and_evaluate(config, tmp_path, stop_after=2, progress=False)
    model, _, step = load_trained(tmp_path, capacity_factor=2)
    assert step == 2 and model.blocks[1].moe.capacity == 4
    assert float(jnp.abs(model.head_w).max()) > 0  # the trained weights were restored (the head starts at zero)
    assert main(["--workdir", str(tmp_path), "--capacity-factor", "2", "--probe-only"]) == 0
    assert "step 2 at capacity factor 2: 5-shot linear probe" in capsys.readouterr().out
    # A bad factor is refused before the weights are read: with the checkpoint file gone, the factor's error
    # still comes first.
    shutil.rmtree(checkpoint.latest(tmp_path)["path"])
    assert main(["--workdir", str(tmp_path), "--capacity-factor", "nan", "--probe-only"]) == 1
    assert "error: capacity_factor must be a finite number > 0, got nan" in capsys.readouterr().err
