"""Pictures of what routers do: token-expert weights (hand-worked), ViTMoE.expert_weights, train.visualize."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

import optimized as O
import train
from optimized._backward import _layer_norm
from train import routing_plots, visualize
from train.presets import resolve

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def layer_with_weight(router, weight, *, group_size, num_experts, factor=1):
    layer = O.MoELayer(router, width=weight.shape[0], hidden=3, num_experts=num_experts, group_size=group_size,
                       factor=factor, key=jax.random.key(0))  # fmt: skip
    return eqx.tree_at(lambda m: m.router_weight, layer, jnp.asarray(weight, jnp.float32))


@eqx.filter_jit  # one compilation instead of many small eager ones: keeps the file fast
def token_expert_weights(layer, x):
    return layer.token_expert_weights(x)


# --------------------------------------------------------------------------------- MoELayer.token_expert_weights


def test_token_choice_weights_by_hand():
    # T = 4 tokens, E = 2 experts, k = 1, C = round(1 * 4 / 2) = 2. W = I, so the logits are x itself:
    #   t0 [ln 3, 0] -> softmax [3/4, 1/4] -> expert 0 (slot 0)
    #   t1 [0, ln 3] -> softmax [1/4, 3/4] -> expert 1 (slot 0)
    #   t2 [ln 3, 0] -> expert 0 (slot 1)
    #   t3 [ln 3, 0] -> expert 0, which is full (t0, t2 came first): dropped, an all-zero row
    layer = layer_with_weight("softmax_token_choice", np.eye(2), group_size=4, num_experts=2)
    x = jnp.array([[LN3, 0], [0, LN3], [LN3, 0], [LN3, 0]])
    expected = [[0.75, 0], [0, 0.75], [0.75, 0], [0, 0]]
    np.testing.assert_allclose(token_expert_weights(layer, x), expected, rtol=1e-6)


def test_expert_choice_weights_by_hand():
    # T = 4 tokens, E = 4 experts, c = 1, C = round(1 * 4 / 4) = 1: each expert takes its single best token.
    # W = I, logits = x; softmax rows (exp, then divide by the sum):
    #   t0 [ln 2, ln 2, 0, 0] -> [2, 2, 1, 1] / 6 = [1/3, 1/3, 1/6, 1/6]
    #   t1 [0, 0, ln 4, 0]    -> [1, 1, 4, 1] / 7 = [1/7, 1/7, 4/7, 1/7]
    #   t2 [0, 0, 0, ln 4]    -> [1/7, 1/7, 1/7, 4/7]
    #   t3 [0, 0, 0, 0]       -> [1/4, 1/4, 1/4, 1/4]
    # Expert 0 column [1/3, 1/7, 1/7, 1/4]: t0. Expert 1: t0 (1/3). Expert 2 [1/6, 4/7, 1/7, 1/4]: t1.
    # Expert 3: t2. So t0 is processed by two experts (its row holds both weights) and t3 by none (dropped).
    layer = layer_with_weight("softmax_expert_choice", np.eye(4), group_size=4, num_experts=4)
    x = jnp.array([[LN2, LN2, 0, 0], [0, 0, LN4, 0], [0, 0, 0, LN4], [0, 0, 0, 0]])
    expected = [[1 / 3, 1 / 3, 0, 0], [0, 0, 4 / 7, 0], [0, 0, 0, 4 / 7], [0, 0, 0, 0]]
    np.testing.assert_allclose(token_expert_weights(layer, x), expected, rtol=1e-6)


def test_soft_moe_weights_by_hand():
    # T = 4 tokens, E = 2 experts, S = round(1 * 4 / 2) = 2 slots each. phi[:, r, s] is the unit vector 2r + s,
    # so the slot logits of token t are x[t] = [Z(r0 s0), Z(r0 s1), Z(r1 s0), Z(r1 s1)]. Combine is a softmax
    # over a token's 4 slots; the token's weight for expert r sums its expert's 2 slots:
    #   t0 [ln 2, 0, ln 3, ln 2] -> [2, 1, 3, 2] / 8 -> [3/8, 5/8]
    #   t1 [0, 0, 0, 0]          -> [1, 1, 1, 1] / 4 -> [1/2, 1/2]
    #   t2 [0, 0, 0, ln 6]       -> [1, 1, 1, 6] / 9 -> [2/9, 7/9]
    #   t3 [ln 3, ln 3, 0, 0]    -> [3, 3, 1, 1] / 8 -> [3/4, 1/4]
    phi = np.eye(4).reshape(4, 2, 2)
    layer = layer_with_weight("soft_moe", phi, group_size=4, num_experts=2)
    x = jnp.array([[LN2, 0, LN3, LN2], [0, 0, 0, 0], [0, 0, 0, math.log(6)], [LN3, LN3, 0, 0]])
    expected = [[3 / 8, 5 / 8], [1 / 2, 1 / 2], [2 / 9, 7 / 9], [3 / 4, 1 / 4]]
    np.testing.assert_allclose(token_expert_weights(layer, x), expected, rtol=1e-6)


def test_token_expert_weights_checks_the_group_size():
    layer = layer_with_weight("softmax_token_choice", np.eye(2), group_size=4, num_experts=2)
    with pytest.raises(ValueError, match="must have 4 tokens"):
        layer.token_expert_weights(jnp.zeros((3, 2)))


# -------------------------------------------------------------------------------------- ViTMoE.expert_weights


def micro_config(router, **changes):
    # The tiny preset's model (depth 2: one MoE layer); a deeper one would cost seconds more to build.
    return O.ViTMoEConfig(**O.VARIANTS["micro"], image_size=8, channels=1, num_classes=10, group_images=2,
                          router=router).replace(**changes)  # fmt: skip


def micro(router, **changes):
    return O.ViTMoE(micro_config(router, **changes), key=jax.random.key(1))


IMAGES = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))  # B = 4 images of N = 4 patches of 4x4


def first_layer_by_hand(model, images):
    # The tokens entering block 1: patch embedding (+ class token) + position, then block 0 (an MLP block);
    # block 1 routes LN2(Attention(x)) in groups of group_images consecutive images (one image for Soft MoE).
    first, second = model.blocks[:2]
    x, _ = first(model._tokens(images), jax.random.key(0), True)
    h = _layer_norm(second._attention(x), *second.ln2)
    b, n, d = h.shape
    per_group = 1 if model.config.router == "soft_moe" else model.config.group_images
    groups = h.reshape(b // per_group, per_group * n, d)
    weights = jax.vmap(lambda g: second.moe.token_expert_weights(g, inference=True))(groups)
    weights = weights.reshape(b, n, -1)
    return weights[:, 1:] if model.config.pool == "cls" else weights


@eqx.filter_jit  # one compilation for both: keeps the file fast
def weights_and_first_layer_by_hand(model, images):
    return model.expert_weights(images), first_layer_by_hand(model, images)


# Two of the six with a class token, whose row must be left out (N = 4 patches, not 5 tokens).
POOL = {"sinkhorn_expert_choice": "cls", "soft_moe": "cls"}


@pytest.mark.parametrize("router", O.ROUTERS)
def test_vit_expert_weights(router):
    model = micro(router, pool=POOL.get(router, "gap"))
    weights, by_hand = map(np.asarray, weights_and_first_layer_by_hand(model, IMAGES))
    assert weights.shape == (1, 4, 4, 4)  # (L, B, N, E): depth 2 has one MoE layer, B = 4, N = 4, E = 4
    assert np.all(weights >= 0)
    rows = weights.sum(axis=-1)
    if router == "soft_moe":
        np.testing.assert_allclose(rows, 1, rtol=1e-5)
    else:  # a subset of a softmax row (all six routers combine with softmax weights by default)
        assert np.all(rows <= 1 + 1e-6)
        assert np.any(rows > 0)
    if router == "softmax_token_choice":  # k = 1
        assert np.all((weights > 0).sum(axis=-1) <= 1)
    np.testing.assert_allclose(weights[0], by_hand, rtol=1e-5, atol=1e-6)


def test_vit_expert_weights_refuse_a_dense_model():
    config = micro_config("softmax_expert_choice", dense=True)
    model = eqx.filter_eval_shape(O.ViTMoE, config, key=jax.random.key(0))  # shapes only: nothing to compute
    with pytest.raises(ValueError, match="dense model"):
        model.expert_weights(IMAGES)


# ------------------------------------------------------------------------------------------------ expert_usage


def test_expert_usage_by_hand():
    # B = 3 images, L = 1 layer, N = 2 patches, E = 2 experts; labels [0, 1, 0], 3 classes (class 2 has none).
    weights = np.zeros((3, 1, 2, 2))
    weights[0, 0] = [[0.5, 0.0], [0.3, 0.2]]  # class 0: expert 0 on both patches, expert 1 on one
    weights[1, 0] = [[0.0, 0.0], [0.0, 0.7]]  # class 1: a dropped patch; expert 1 on one patch
    weights[2, 0] = [[0.0, 0.6], [0.0, 0.0]]  # class 0: expert 1 on one patch, one dropped
    labels = np.array([0, 1, 0])
    usage = routing_plots.expert_usage(weights, labels, 3)
    # class 0 has 4 patches: expert 0 processed 2 of them (image 0), expert 1 processed 2 (one in each image)
    # class 1 has 2 patches: expert 0 none, expert 1 one
    np.testing.assert_allclose(usage[0, :2], [[2 / 4, 2 / 4], [0, 1 / 2]])
    assert np.all(np.isnan(usage[0, 2]))  # no image of class 2: undefined, not 0
    # Soft MoE: the mean weight. Class 0: expert 0 (0.5 + 0.3 + 0 + 0) / 4 = 0.2, expert 1 (0 + 0.2 + 0.6 + 0) / 4
    # = 0.2; class 1: expert 0 0, expert 1 0.7 / 2 = 0.35.
    soft = routing_plots.expert_usage(weights, labels, 3, soft=True)
    np.testing.assert_allclose(soft[0, :2], [[0.2, 0.2], [0, 0.35]])


def test_expert_usage_refuses_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got values from 0 to 2"):
        routing_plots.expert_usage(np.zeros((2, 1, 1, 2)), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match=r"weights must have shape \(B, L, N, E\)"):
        routing_plots.expert_usage(np.zeros((2, 1, 2)), np.array([0, 1]), 2)


def test_pick_images_by_hand():
    # labels [1, 1, 0, 2, 0]: the first image of class 0 (index 2), of class 1 (0), of class 2 (3), then the
    # second image of class 0 (4) and of class 1 (1).
    assert routing_plots.pick_images(np.array([1, 1, 0, 2, 0]), 5).tolist() == [2, 0, 3, 4, 1]
    with pytest.raises(ValueError, match="num_images = 6 is more than the 5 images"):
        routing_plots.pick_images(np.array([1, 1, 0, 2, 0]), 6)


# ---------------------------------------------------------------------------------------------- end to end


def test_visualize_a_tiny_run(tmp_path, capsys):
    config = resolve("tiny").replace(steps=2, eval_every=2, checkpoint_every=2)
    train.train_and_evaluate(config, tmp_path, progress=False)
    assert visualize.main(["--workdir", str(tmp_path)]) == 0
    for name in ("expert_usage.png", "routing_maps.png"):
        pixels = matplotlib.image.imread(tmp_path / "plots" / name)
        assert pixels.ndim == 3 and pixels[..., :3].std() > 0.05, name  # not blank
    assert visualize.main(["--workdir", str(tmp_path), "--images", "0"]) == 1
    assert "error: num_images must be an integer >= 1, got 0" in capsys.readouterr().err


def test_visualize_errors(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert visualize.main(["--workdir", str(missing)]) == 1
    assert f"error: {missing / 'config.json'} not found" in capsys.readouterr().err

    dense = resolve("tiny")
    dense = dense.replace(model=dense.model.replace(dense=True))
    (tmp_path / "config.json").write_text(dense.to_json())
    with pytest.raises(ValueError, match="a dense model has no routers"):
        visualize.visualize_run(tmp_path)

    (tmp_path / "config.json").write_text(resolve("tiny").to_json())
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        visualize.visualize_run(tmp_path)
