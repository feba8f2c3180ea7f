"""The authors' V-MoE choices as switches (issue 25): each hand-checked against what vmoe's code does.

vmoe = google-research/vmoe (``vmoe/nn/routing.py``, ``vmoe/moe.py``, ``vmoe/nn/vit_moe.py``,
``vmoe/projects/sparsity_constrained_ot/kl_projection_routing.py``, ``vmoe/configs/vmoe_paper/common.py``).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimized import VARIANTS, MoELayer, ViTMoE, ViTMoEConfig, with_layout
from optimized._route import sparse_capacity, sparse_routing, vmoe_capacity
from optimized._routing import expert_choice_routing
from train.config import override
from train.presets import resolve

MICRO = ViTMoEConfig(**VARIANTS["micro"], image_size=8, channels=1, num_classes=10, group_images=2)
IMAGES = jax.random.uniform(jax.random.key(7), (4, 8, 8, 1))


def _layer(router="softmax_expert_choice", **kwargs):
    kwargs = dict(width=16, hidden=8, num_experts=4, group_size=16, key=jax.random.key(0)) | kwargs
    return MoELayer(router, **kwargs)


# ----------------------------------------------------------------------------------------------- initialization


def test_shared_expert_init_gives_every_expert_the_same_weights():
    shared, independent = _layer(expert_init="shared"), _layer(expert_init="independent")
    for name in ("w1", "w2"):
        w = getattr(shared.experts, name)
        for r in range(1, 4):
            np.testing.assert_array_equal(w[r], w[0])
        assert not np.array_equal(getattr(independent.experts, name)[1], getattr(independent.experts, name)[0])
    # the shared draw is one expert's draw of the same initializer: same scale as an independent expert
    assert abs(float(jnp.std(shared.experts.w1[0])) / float(jnp.std(independent.experts.w1)) - 1) < 0.35
    # in the ViT: experts equal within each layer, the layers drawn apart
    model = ViTMoE(MICRO.replace(depth=4, expert_init="shared"), key=jax.random.key(1))
    w1 = jnp.stack([model.blocks[i].moe.experts.w1 for i in (1, 3)])  # (layers, E, D, H)
    np.testing.assert_array_equal(w1[:, 1:], jnp.broadcast_to(w1[:, :1], w1[:, 1:].shape))
    assert not np.array_equal(w1[0, 0], w1[1, 0])


def test_router_init_lecun_has_std_one_over_sqrt_width():
    width, experts = 512, 64
    sized = dict(width=width, num_experts=experts, group_size=64)
    lecun = _layer("softmax_token_choice", router_init="lecun", **sized).router_weight
    normal = _layer("softmax_token_choice", **sized).router_weight
    # lecun-normal: a normal truncated at 2 sigma, rescaled so that its std is 1/sqrt(fan_in) = 1/sqrt(512) = 0.0442;
    # 32768 draws: the sample std is within 2% of it
    assert abs(float(jnp.std(lecun)) * math.sqrt(width) - 1) < 0.02
    assert float(jnp.max(jnp.abs(lecun))) <= 2 / 0.87962566 / math.sqrt(width) + 1e-6  # truncated at 2 sigma
    assert abs(float(jnp.std(normal)) / 0.02 - 1) < 0.02  # the default: N(0, 0.02^2)
    with pytest.raises(ValueError, match="router_init must be one of normal, lecun; got 'xavier'"):
        _layer(router_init="xavier")
    with pytest.raises(ValueError, match="expert_init must be one of independent, shared; got 'same'"):
        _layer(expert_init="same")


# ----------------------------------------------------------------------------------------- Expert Choice noise


def test_expert_choice_noise_only_in_training_and_keyed():
    x = jax.random.normal(jax.random.key(3), (16, 16))
    std = 0.5
    layer = _layer(expert_choice_noise_std=std)
    clean = _layer()  # the same weights (same key), no noise
    np.testing.assert_array_equal(layer.router_weight, clean.router_weight)
    # inference: no noise
    np.testing.assert_array_equal(
        layer.token_expert_weights(x, inference=True), clean.token_expert_weights(x, inference=True)
    )
    # training: logits + std * normal(key, (T, E)), dispatch and combine both from the noisy softmax (vmoe's
    # NoisyTopItemsPerExpertRouter), worked here with the routing function itself
    key = jax.random.key(11)
    noisy_logits = x @ layer.router_weight + std * jax.random.normal(key, (16, 4))
    probs = jax.nn.softmax(noisy_logits, axis=-1)
    expected = expert_choice_routing(probs, layer.capacity, probs)
    got = layer.token_expert_weights(x, key=key, inference=False)
    dense = np.zeros((16, 4))
    for r in range(4):
        for c in range(layer.capacity):
            dense[int(expected.token_index[r, c]), r] += float(expected.weight[r, c])
    np.testing.assert_allclose(got, dense, atol=1e-6)
    assert not np.allclose(got, clean.token_expert_weights(x, key=key, inference=False))
    # keyed: the same key gives the same routing, another key another one (the trainer passes fold_in(key, step))
    np.testing.assert_array_equal(got, layer.token_expert_weights(x, key=key, inference=False))
    assert not np.array_equal(got, layer.token_expert_weights(x, key=jax.random.key(12), inference=False))
    with pytest.raises(ValueError, match="needs a key in training"):
        layer(x)


def test_expert_choice_noise_none_means_one_over_e_and_bad_values_refused():
    assert _layer(expert_choice_noise_std=None).expert_choice_noise_std == 0.25  # 1/E, vmoe's 1.0 * (1/E)
    assert _layer().expert_choice_noise_std == 0.0  # the paper's default: no noise
    with pytest.raises(ValueError, match="expert_choice_noise_std must be a finite number >= 0 or None"):
        _layer(expert_choice_noise_std=-0.1)
    with pytest.raises(ValueError, match="expert_choice_noise_std must be a finite number in"):
        ViTMoEConfig(expert_choice_noise_std=float("nan")).validate()
    model = ViTMoE(MICRO.replace(router="softmax_expert_choice", expert_choice_noise_std=None), key=jax.random.key(0))
    with pytest.raises(ValueError, match="training softmax_expert_choice needs a key"):
        model(IMAGES)


# ------------------------------------------------------------------------------------------------- pre-logits


def test_pre_logits_dense_tanh_and_the_probe_reads_them():
    from train.evaluators.fewshot import features as probe_features

    model = ViTMoE(MICRO.replace(representation_size=6, head_bias_init=-2.0), key=jax.random.key(0))
    assert model.pre_logits_w.shape == (32, 6) and model.head_w.shape == (6, 10)
    np.testing.assert_array_equal(model.head_b, np.full(10, -2.0))
    feats, _ = model.features(IMAGES)
    assert feats.shape == (4, 6)
    plain = eqx.tree_at(lambda m: (m.pre_logits_w, m.pre_logits_b), model, (None, None), is_leaf=lambda v: v is None)
    pooled, _ = plain.features(IMAGES)  # the pooled (B, D) representation under the same weights
    np.testing.assert_allclose(feats, jnp.tanh(pooled @ model.pre_logits_w + model.pre_logits_b), atol=1e-6)
    np.testing.assert_allclose(probe_features(model, IMAGES), feats, atol=1e-6)  # jitted: same up to fusion
    logits, _ = model(IMAGES, key=jax.random.key(1))
    np.testing.assert_allclose(logits, np.full((4, 10), -2.0), atol=1e-6)  # zero head kernel: logits = bias
    with pytest.raises(ValueError, match="representation_size must be >= 1, got 0"):
        MICRO.replace(representation_size=0).validate()


# ---------------------------------------------------------------------------------------------- MoE placement


def test_moe_layers_place_the_routers():
    config = MICRO.replace(depth=6, moe_layers=(4, 5))  # vmoe's "Last 2" on 6 blocks would be (3, 5)
    model = ViTMoE(config, key=jax.random.key(0))
    assert model.pairs is None and len(model.blocks) == 6
    assert [i for i, b in enumerate(model.blocks) if b.moe is not None] == [4, 5]
    assert [i for i, b in enumerate(model.blocks) if b.mlp is not None] == [0, 1, 2, 3]
    logits, aux = model(IMAGES, key=jax.random.key(1))
    assert logits.shape == (4, 10) and aux["moe"]["dropped_fraction"].shape == (2,)
    assert aux["moe"]["expert_load"].shape == (2, 4)
    assert model.expert_weights(IMAGES).shape == (2, 4, 4, 4)
    wide = model.with_capacity(2)
    # T = 2 images * 4 patches = 8, E = 4: C = round(c * 8 / 4) = 2 at c = 1, 4 at c = 2
    assert [wide.blocks[i].moe.capacity for i in (4, 5)] == [4, 4] and model.blocks[4].moe.capacity == 2
    # an odd depth is fine outside the pairs
    assert len(ViTMoE(MICRO.replace(depth=3, moe_layers=(2,)), key=jax.random.key(0)).blocks) == 3


def test_moe_layers_every_2_written_out_is_the_default_layout():
    default = ViTMoE(MICRO.replace(depth=4), key=jax.random.key(0))
    explicit = ViTMoE(MICRO.replace(depth=4, moe_layers=(1, 3)), key=jax.random.key(0))
    assert default.layout == explicit.layout == "sequence"
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(explicit), strict=True):
        np.testing.assert_array_equal(a, b)
    # stacked, the default model's arrays are those of the layout before moe_layers existed: no new leaves
    names = {str(path[0]) for path, _ in jax.tree_util.tree_leaves_with_path(with_layout(default, "stacked"))}
    assert names == {".patch_w", ".patch_b", ".pos_embed", ".pairs", ".final_ln", ".head_w", ".head_b"}
    rolled = ViTMoE(MICRO.replace(depth=4, scan_layers=True), key=jax.random.key(0))
    for a, b in zip(jax.tree.leaves(rolled), jax.tree.leaves(with_layout(default, "stacked")), strict=True):
        np.testing.assert_array_equal(a, b)  # the same initial weights in both layouts


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        ((), ValueError, "moe_layers must name at least one block"),
        ((3, 1), ValueError, r"strictly increasing 0-based block indices in \[0, depth - 1 = 3\], got \(3, 1\)"),
        ((1, 1), ValueError, "strictly increasing"),
        ((4,), ValueError, r"in \[0, depth - 1 = 3\], got \(4,\)"),
        ((-1,), ValueError, "strictly increasing"),
        ((1.0,), TypeError, "moe_layers must be a tuple of block indices"),
    ],
)
def test_moe_layers_bad_values(layers, error, message):
    with pytest.raises(error, match=message):
        MICRO.replace(depth=4, moe_layers=layers).validate()


def test_moe_layers_outside_every_2_refuse_the_rolled_scan():
    with pytest.raises(ValueError, match="scan_layers = True scans the stacked pairs of Every-2"):
        MICRO.replace(depth=4, moe_layers=(3,), scan_layers=True).validate()


def test_moe_layers_from_the_command_line():
    config = resolve("tiny")
    assert override(config, "model.moe_layers=1").model.moe_layers == (1,)
    assert override(config, "model.moe_layers= 0, 1 ").model.moe_layers == (0, 1)
    assert override(override(config, "model.moe_layers=1"), "model.moe_layers=none").model.moe_layers is None
    with pytest.raises(ValueError, match=r"--set model.moe_layers=9;11: expected comma-separated integers"):
        override(config, "model.moe_layers=9;11")
    with pytest.raises(ValueError, match=r"in \[0, depth - 1 = 1\], got \(9, 11\)"):
        resolve("tiny", overrides=("model.moe_layers=9,11",))
    assert resolve("tiny", overrides=("model.dense=true", "model.moe_layers=1")).model.moe_block_indices == ()


def test_a_dense_model_with_moe_layers_is_that_moe_models_paired_control():
    # From one key, the dense control of an MoE model on blocks 0 and 1 starts from the MoE model's embeddings,
    # attention and layer norms; every block is an MLP. Keyed as the dense default (Every-2 pairs) it would not.
    config = MICRO.replace(depth=2, moe_layers=(0, 1))
    key = jax.random.key(3)
    moe, paired = ViTMoE(config, key=key), ViTMoE(config.replace(dense=True), key=key)
    unpaired = ViTMoE(config.replace(dense=True, moe_layers=None), key=key)
    assert paired.config.moe_block_indices == () and all(b.moe is None and b.mlp is not None for b in paired.blocks)
    shared = lambda m: [m.patch_w, m.pos_embed] + [getattr(b, f) for b in m.blocks for f in ("qkv_w", "out_w")]  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(shared(moe), shared(paired), strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(shared(moe)[2:], shared(unpaired)[2:], strict=True))
    logits, aux = paired(jnp.zeros((2, config.image_size, config.image_size, config.channels)), key=key)
    assert logits.shape == (2, config.num_classes) and float(aux["loss"]) == 0.0


def test_moe_layers_survive_config_json():
    from train.config import Config

    config = resolve("tiny", overrides=("model.depth=4", "model.moe_layers=2,3"))
    again = Config.from_dict(__import__("json").loads(config.to_json()))
    assert again == config and again.model.moe_layers == (2, 3)
    hash(again.model)  # a static field of the model: hashable


# ----------------------------------------------------------------------------------------------- capacity rule


def test_vmoe_capacity_rule_worked_by_hand():
    # vmoe/moe.py compute_capacity: ceil(num_tokens * capacity_factor / E), then up to a multiple of 4; Token
    # Choice passes num_tokens = T k, Expert Choice num_tokens = T (vmoe/moe.py get_top_*_dispatcher).
    # B/32 at 224 px: 7 * 7 + 1 = 50 tokens, 8 images per group: T = 400; E = 32, k = 2, capacity_factor 1.05:
    # 800 * 1.05 / 32 = 26.25 -> 27 -> 28. (round rule: round(2 * 400 / 32) = 25.)
    assert sparse_capacity("softmax_token_choice", 400, 32, 2, rule="vmoe") == (28, 2)
    assert sparse_capacity("softmax_token_choice", 400, 32, 2) == (25, 2)
    # B/16: 14 * 14 + 1 = 197 tokens, T = 1576, E = 8, k = 2: 3152 * 1.05 / 8 = 413.7 -> 414 -> 416
    assert sparse_capacity("softmax_token_choice", 1576, 8, 2, rule="vmoe") == (416, 2)
    # k = 1, E = 32, T = 400: 400 * 1.05 / 32 = 13.125 -> 14 -> 16; a fine-tune's 1.5: 18.75 -> 19 -> 20
    assert sparse_capacity("softmax_token_choice", 400, 32, 1, rule="vmoe") == (16, 1)
    assert sparse_capacity("softmax_token_choice", 400, 32, 1, rule="vmoe", vmoe_factor=1.5) == (20, 1)
    # Expert Choice: c is vmoe's capacity_factor: T = 1576, E = 8, c = 1: 197 -> 200
    assert sparse_capacity("softmax_expert_choice", 1576, 8, 1, rule="vmoe") == (200, 0)
    assert vmoe_capacity(16, 4, 1.0) == 4 and vmoe_capacity(17, 4, 1.0) == 8  # 4.25 -> 5 -> 8
    with pytest.raises(ValueError, match="capacity_rule must be one of round, vmoe; got 'ceil'"):
        sparse_capacity("softmax_token_choice", 400, 32, 2, rule="ceil")
    with pytest.raises(ValueError, match="rounds C up to a multiple of 4"):
        sparse_capacity("softmax_expert_choice", 6, 4, 3, rule="vmoe")  # ceil(4.5) = 5 -> 8 > T = 6


def test_vmoe_capacity_rule_in_the_layer_and_the_model():
    layer = _layer("softmax_token_choice", group_size=400, num_experts=32, factor=2, capacity_rule="vmoe")
    assert layer.capacity == 28
    assert layer.with_capacity(1).capacity == 16  # with_capacity keeps the rule: k = 1 -> 14 -> 16
    model = ViTMoE(MICRO.replace(capacity_rule="vmoe", router="softmax_token_choice"), key=jax.random.key(0))
    # T = 2 images * 4 patches = 8, E = 4, k = 1: ceil(8 * 1.05 / 4) = ceil(2.1) = 3 -> 4 (round rule: 2)
    assert model.blocks[1].moe.capacity == 4
    with pytest.raises(ValueError, match="capacity_rule must be one of round, vmoe; got 'x'"):
        MICRO.replace(capacity_rule="x").validate()
    with pytest.raises(ValueError, match="capacity_rule='vmoe' is for the sparse routers"):
        MICRO.replace(capacity_rule="vmoe", router="soft_moe").validate()


# ------------------------------------------------------------------------------------ sinkhorn_style = "vmoe"


def test_sinkhorn_token_choice_vmoe_style_is_vmoes():
    """vmoe's KLProjectionNoisyTopExpertsPerItemRouter: aux loss weights 0 by default (kl_projection_routing.py
    :53-54), the plan from the noisy logits, the combine weights from the softmax of the clean ones (:108)."""
    x = jax.random.normal(jax.random.key(3), (16, 16))
    layer = _layer("sinkhorn_token_choice", factor=1, sinkhorn_style="vmoe", noise_std=0.5)
    assert (layer.importance_weight, layer.load_weight) == (0.0, 0.0)
    key = jax.random.key(5)
    _, aux = layer(x, key=key)
    assert float(aux["loss"]) == 0.0 and float(aux["importance_loss"]) > 0  # computed, weighed 0
    clean = jax.nn.softmax(x @ layer.router_weight, axis=-1)
    noisy_logits = x @ layer.router_weight + 0.5 * jax.random.normal(key, (16, 4))
    routing, _ = sparse_routing("sinkhorn_token_choice", noisy_logits, layer.capacity, 1)  # the noisy plan
    weights = layer.token_expert_weights(x, key=key, inference=False)
    chosen = np.zeros((16, 4), bool)
    chosen[np.asarray(routing.token_index)[np.asarray(routing.valid)], np.nonzero(np.asarray(routing.valid))[0]] = 1
    np.testing.assert_array_equal(weights > 0, chosen)  # dispatched where the noisy plan says
    np.testing.assert_allclose(weights[chosen], clean[chosen], atol=1e-6)  # weighed by the clean softmax
    # explicit weights are still honoured
    weighed = _layer("sinkhorn_token_choice", sinkhorn_style="vmoe", noise_std=0.5, importance_weight=0.01)
    assert weighed.importance_weight == 0.01 and weighed.load_weight == 0.0
    # the paper's style keeps 0.005 each
    assert (_layer("sinkhorn_token_choice").importance_weight, _layer("sinkhorn_token_choice").load_weight) == (
        0.005,
        0.005,
    )


def test_sinkhorn_expert_choice_vmoe_style_combines_with_the_noisy_softmax():
    """vmoe's KLProjectionNoisyTopItemsPerExpertRouter combines with softmax(noisy logits) (:221), no loss."""
    x = jax.random.normal(jax.random.key(3), (16, 16))
    layer = _layer("sinkhorn_expert_choice", sinkhorn_style="vmoe", noise_std=0.5)
    key = jax.random.key(5)
    noisy = jax.nn.softmax(x @ layer.router_weight + 0.5 * jax.random.normal(key, (16, 4)), axis=-1)
    weights = layer.token_expert_weights(x, key=key, inference=False)
    used = np.asarray(weights) > 0
    np.testing.assert_allclose(weights[used], noisy[used], atol=1e-6)
    assert float(layer(x, key=key)[1]["loss"]) == 0.0


# ------------------------------------------------------------------------------------------------------ presets


def test_authors_presets_are_vmoes_models():
    b16, b32 = resolve("vmoe-b16-authors").model, resolve("vmoe-b32-authors").model
    for model in (b16, b32):
        assert (model.pool, model.router, model.factor, model.group_images) == ("cls", "softmax_token_choice", 2, 8)
        assert (model.expert_init, model.router_init, model.capacity_rule) == ("shared", "lecun", "vmoe")
        assert (model.noise_std, model.vmoe_capacity_factor) == (None, 1.05)
        assert model.moe_block_indices == (1, 3, 5, 7, 9, 11)
    assert (b16.num_experts, b16.num_classes, b16.representation_size, b16.head_bias_init) == (8, 21843, None, -10.0)
    assert (b32.num_experts, b32.representation_size) == (32, 768)
    # vmoe's B/32 with a 1000-class head and a class token has 966,744,040 parameters (issue 25); the pre-logits
    # Dense(768) adds 768 * 768 + 768 = 590,592
    shapes = jax.eval_shape(lambda: ViTMoE(b32, key=jax.random.key(0)))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == 966_744_040 + 590_592
    # T = 8 * (7 * 7 + 1) = 400 tokens, E = 32, k = 2: ceil(800 * 1.05 / 32) = 27 -> 28
    assert shapes.blocks[1].moe.capacity == 28


def test_a_run_saved_before_the_switches_resumes_with_the_same_command():
    """config.json written before issue 25: no new fields, loss weights 0.005 (now None, the router's default)."""
    import json

    from train.workdir import ConfigMismatchError, check_config

    config = resolve("digits")
    saved = json.loads(config.to_json())
    saved.pop("init_from")
    for name in ("expert_init", "router_init", "expert_choice_noise_std", "representation_size", "moe_layers",
                 "capacity_rule", "vmoe_capacity_factor", "head_bias_init"):  # fmt: skip
        saved["model"].pop(name)
    saved["model"]["importance_weight"] = saved["model"]["load_weight"] = 0.005
    check_config(config, saved, "old workdir")  # accepted: None is 0.005 for this router
    saved["model"]["load_weight"] = 0.01
    with pytest.raises(ConfigMismatchError, match=r"model\.load_weight: 0\.01 -> 0\.005"):
        check_config(config, saved, "old workdir")


def test_the_summary_names_the_moe_blocks_of_moe_layers(tmp_path):
    import json

    from train.summary import summarize

    record = {"step": 1, "loss": 1.0, "moe/dropped_fraction": [0.1, 0.2], "moe/experts_per_token_mean": [1.0, 1.0],
              "moe/load_cv": [0.0, 0.0], "moe/expert_load": [[1.0] * 4, [1.0] * 4]}  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    probe = {"accuracy": 0.5}
    last2 = resolve("tiny", overrides=("model.depth=6", "model.moe_layers=3,5"))
    assert [layer["block"] for layer in summarize(last2, tmp_path, 0.5, probe, 1.0)["moe_layers"]] == [3, 5]
    every2 = resolve("tiny", overrides=("model.depth=4",))
    assert [layer["block"] for layer in summarize(every2, tmp_path, 0.5, probe, 1.0)["moe_layers"]] == [1, 3]


# ------------------------------------------------------------------------------------------------ batch chunks


@pytest.mark.parametrize("router", ["softmax_token_choice", "soft_moe"])
def test_batch_chunks_give_the_whole_batchs_numbers_and_gradients(router):
    """The attention and MLPs on slices of the batch (a speed switch): each image's logits, the auxiliary loss
    and the gradient of every parameter are those of the whole batch, up to float32 summation order."""
    config = MICRO.replace(depth=4, router=router, batch_chunks=1)
    whole = ViTMoE(config, key=jax.random.key(0))
    chunked = ViTMoE(config.replace(batch_chunks=4), key=jax.random.key(0))  # the same weights
    assert [b.batch_chunks for b in chunked.blocks] == [4] * 4

    def loss(model):  # the head starts at zero: the features carry the gradient to every block
        features, aux = model.features(IMAGES, key=jax.random.key(3), inference=False)
        return jnp.sum(features**2) + aux["loss"], (features, aux["moe"])

    (value_w, (logits_w, moe_w)), grads_w = eqx.filter_value_and_grad(loss, has_aux=True)(whole)
    (value_c, (logits_c, moe_c)), grads_c = eqx.filter_value_and_grad(loss, has_aux=True)(chunked)
    np.testing.assert_allclose(logits_c, logits_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value_c, value_w, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(moe_c), jax.tree.leaves(moe_w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # routing unchanged: same metrics
    leaves_c = jax.tree.leaves(eqx.filter(grads_c, eqx.is_array))
    leaves_w = jax.tree.leaves(eqx.filter(grads_w, eqx.is_array))
    assert len(leaves_c) == len(leaves_w) > 0
    for a, b in zip(leaves_c, leaves_w, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(np.any(np.asarray(a) != 0) for a in leaves_w)


def test_batch_chunks_default_and_bad_values():
    block = ViTMoE(MICRO, key=jax.random.key(0)).blocks[0]
    assert block.batch_chunks is None
    cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    assert block._chunks(32, 65) == (4 if cpu else 1)  # slices of 8 images, 520 tokens
    assert block._chunks(8, 50) == 1 and block._chunks(7, 65) == 1  # B/32's batch of 8: slices would be 100 tokens
    assert block._chunks(6, 100) == (2 if cpu else 1)  # 3 images, 300 tokens
    with pytest.raises(ValueError, match="batch_chunks must be"):
        MICRO.replace(batch_chunks=0).validate()
    model = ViTMoE(MICRO.replace(batch_chunks=3), key=jax.random.key(0))
    with pytest.raises(ValueError, match="the batch of 4 images must be a multiple of batch_chunks = 3"):
        model(IMAGES, key=jax.random.key(1))
