"""Expert parallelism on 8 simulated CPU devices: every mesh gives the single-device numbers.

Run by ``tests/test_expert_parallel.py`` in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import train
from optimized import DATA, EXPERT, ROUTERS, MoELayer, ViTMoE, make_mesh, moe_over_groups, shardings
from train import checkpoint
from train.config import override
from train.input_pipeline import load_data
from train.presets import resolve
from train.sharding import batch_sharding
from train.state import init_state
from train.trainer import make_step

MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
SINGLE = (1, 1)
# Adam moves a parameter by about the learning rate (3e-3 in the tiny preset) whatever its gradient's size, so
# a gradient of ~1e-9 whose last bits differ between meshes (a different summation order) can move its
# parameter a few 1e-6 differently: parameters are compared to 1e-5, 0.3% of one step.
ADAM_ATOL = 1e-5
jax.config.update("jax_default_matmul_precision", "highest")


def _layer(router):
    factor = 2 if router != "softmax_token_choice" else 1
    return MoELayer(router, width=8, hidden=16, num_experts=8, group_size=16, factor=factor, key=jax.random.key(1))


def _layer_loss(layer_and_groups, keys):
    layer, groups = layer_and_groups
    y, aux = moe_over_groups(layer, groups, keys, inference=False)
    weights = jnp.linspace(-1.0, 1.0, y.size).reshape(y.shape)
    return jnp.sum(y * weights) + jnp.sum(aux["loss"]), (y, aux)


def _run_layer(layer, groups, keys, mesh_shape):
    """Output, metrics and gradients (with respect to the layer and the tokens) under a (data, expert) mesh."""
    mesh = make_mesh(*mesh_shape)
    fn = eqx.filter_jit(eqx.filter_value_and_grad(_layer_loss, has_aux=True))
    with jax.set_mesh(mesh):
        layer = jax.device_put(layer, shardings(layer, mesh))
        groups = jax.device_put(groups, NamedSharding(mesh, P((DATA, EXPERT))))
        keys = jax.device_put(keys, NamedSharding(mesh, P((DATA, EXPERT))))
        (_, (y, aux)), (grads, grad_x) = fn((layer, groups), keys)
    return jax.device_get((y, aux, grads, grad_x))


@pytest.mark.parametrize("router", ROUTERS)
def test_layer_output_and_gradients_match_one_device(router):
    layer = _layer(router)
    groups = jax.random.normal(jax.random.key(2), (8, 16, 8))
    keys = jax.random.split(jax.random.key(3), 8)
    y0, aux0, grads0, gx0 = _run_layer(layer, groups, keys, SINGLE)
    assert np.abs(y0).max() > 0.1  # the experts did something
    for mesh_shape in MESHES:
        y, aux, grads, gx = _run_layer(layer, groups, keys, mesh_shape)
        where = f"{router} on mesh {mesh_shape}"
        # the routing is decided per group on the device holding it: its statistics are identical
        for name in ("dropped_fraction", "experts_per_token_mean", "slot_fill", "expert_load"):
            np.testing.assert_array_equal(aux[name], aux0[name], err_msg=where)
        np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-6, err_msg=where)
        np.testing.assert_allclose(aux["loss"], aux0["loss"], rtol=1e-5, atol=1e-7, err_msg=where)
        for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads0), strict=True):
            np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-6, err_msg=where)
        np.testing.assert_allclose(gx, gx0, rtol=1e-4, atol=1e-6, err_msg=where)


def _ops(hlo: str) -> list[str]:
    """The collective instructions of a compiled HLO module (an op name follows its result type)."""
    names = "all-to-all|all-gather|all-reduce|collective-permute|reduce-scatter"
    return re.findall(rf"[\s)}}]((?:{names})(?:-start)?)\(", hlo)


@pytest.mark.parametrize("mesh_shape", [(4, 2), (2, 4), (1, 8)])
@pytest.mark.parametrize("router", ["sinkhorn_expert_choice", "soft_moe"])
def test_forward_exchanges_exactly_two_all_to_alls_per_moe_layer(router, mesh_shape):
    mesh = make_mesh(*mesh_shape)
    for depth in (2, 4):  # 1 and 2 MoE layers; the scan over pairs runs one body per MoE layer
        # 8 groups of T = 16 tokens (sparse: 4 images of 4 patches; Soft MoE: one image each, S = 1 slot)
        config = train.resolve("tiny").model.replace(router=router, num_experts=8, depth=depth, group_images=4,
                                                     factor=2)  # fmt: skip
        images = jax.random.normal(jax.random.key(1), (32 if router != "soft_moe" else 8, 8, 8, 1))
        # the sequence of blocks (the default): two all-to-alls per MoE layer in the program
        unrolled = ViTMoE(config, key=jax.random.key(0))
        with jax.set_mesh(mesh):
            unrolled = jax.device_put(unrolled, shardings(unrolled, mesh))
            sharded = jax.device_put(images, NamedSharding(mesh, P((DATA, EXPERT))))
            hlo = jax.jit(lambda m, x: m(x, inference=True)[0]).lower(unrolled, sharded).compile().as_text()
        assert _ops(hlo).count("all-to-all") == 2 * (depth // 2), (depth, mesh_shape, _ops(hlo))
        model = ViTMoE(config.replace(scan_layers=True), key=jax.random.key(0))  # the rolled scan: one body
        with jax.set_mesh(mesh):
            model = jax.device_put(model, shardings(model, mesh))
            images = jax.device_put(images, NamedSharding(mesh, P((DATA, EXPERT))))
            hlo = jax.jit(lambda m, x: m(x, inference=True)[0]).lower(model, images).compile().as_text()
        ops = _ops(hlo)
        assert ops.count("all-to-all") == 2, (depth, mesh_shape, ops)
        assert not any(op.startswith("all-gather") for op in ops), f"the forward pass gathers something: {ops}"
        if depth == 4:  # the two all-to-alls sit in the scan over the 2 pairs, a loop that runs twice
            trips = re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', hlo)
            assert "2" in trips, f"no loop over the 2 pairs of blocks; loops run {trips} times"


def _train_steps(config, mesh_shape, steps=3):
    dataset = load_data(config)
    mesh = make_mesh(*mesh_shape)
    model, opt_state, optimizer, _ = init_state(config)
    step_fn = make_step(optimizer, 0.0, config.model.num_classes)
    losses = []
    with jax.set_mesh(mesh):
        model, opt_state = jax.device_put((model, opt_state), shardings((model, opt_state), mesh))
        for step in range(steps):
            images = jax.device_put(dataset.train_images[step * 16 : (step + 1) * 16], batch_sharding(mesh))
            labels = jax.device_put(dataset.train_labels[step * 16 : (step + 1) * 16], batch_sharding(mesh))
            model, opt_state, metrics = step_fn((images, labels, jax.random.key(step)), model, opt_state)
            losses.append(float(metrics["loss"]))
    # expert weights stay sharded over the expert axis through the optimizer update
    w1 = model.blocks[1].moe.experts.w1
    if mesh_shape[1] > 1:
        assert w1.sharding.spec == P(EXPERT), w1.sharding
    return losses, jax.device_get(eqx.filter(model, eqx.is_array))


def _small(router):
    """The tiny preset with E = 8: 16 images of 4 patches; sparse groups of 2 images (C = 1 at k = c = 1), Soft
    MoE per image with c = 2 (S = 1 slot per expert)."""
    factor = 2 if router == "soft_moe" else 1
    return resolve("tiny", overrides=(f"model.router={router}", "model.num_experts=8", "model.group_images=2",
                                      f"model.factor={factor}", "batch_size=16"))  # fmt: skip


@pytest.mark.parametrize(
    ("router", "meshes"),
    [("softmax_token_choice", MESHES), ("soft_moe", [(2, 4)])],  # the layer test covers Soft MoE on every mesh
)
def test_training_steps_match_one_device(router, meshes):
    config = _small(router)
    losses0, params0 = _train_steps(config, SINGLE)
    for mesh_shape in meshes:
        losses, params = _train_steps(config, mesh_shape)
        np.testing.assert_allclose(losses, losses0, rtol=1e-5, err_msg=str(mesh_shape))
        for p, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(params0), strict=True):
            np.testing.assert_allclose(p, p0, rtol=1e-4, atol=ADAM_ATOL, err_msg=str(mesh_shape))


def test_checkpoints_load_under_another_mesh(tmp_path):
    config = _small("sinkhorn_token_choice").replace(steps=4, checkpoint_every=2, eval_every=4)
    single = override(override(config, "mesh.data=1"), "mesh.expert=1")
    done = train.train_and_evaluate(single, tmp_path / "one", progress=False)
    # 2 steps on a 4 x 2 mesh, then resume the same workdir on 1 x 8 and on 8 x 1 after that
    moved = override(config, "mesh.expert=2")
    train.train_and_evaluate(moved, tmp_path / "moved", stop_after=2, progress=False)
    train.train_and_evaluate(override(config, "mesh.expert=8"), tmp_path / "moved", stop_after=3, progress=False)
    resumed = train.train_and_evaluate(config, tmp_path / "moved", progress=False)
    assert resumed["test_accuracy"] == pytest.approx(done["test_accuracy"], abs=1 / 450 + 1e-9)

    def params(workdir):
        return jax.tree.leaves(eqx.filter(checkpoint.restore(checkpoint.latest(workdir), tuple(init_state(config)[:2])),
                                          eqx.is_array))  # fmt: skip

    for p, p0 in zip(params(tmp_path / "moved"), params(tmp_path / "one"), strict=True):
        np.testing.assert_allclose(p, p0, rtol=1e-4, atol=ADAM_ATOL)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.num_experts=6", "mesh.expert=3"), "mesh.expert = 3 does not divide the 8 devices"),
        (("mesh.data=3", "mesh.expert=2"), r"data 3 x expert 2 = 6 devices does not divide the 8 devices"),
        (("mesh.expert=8", "model.num_experts=4"), "mesh.expert = 8 does not divide model.num_experts = 4"),
        (("mesh.expert=2", "batch_size=8", "model.group_images=2"),
         r"each of the 8 devices gets 1 images, not a multiple of model.group_images = 2"),
    ],
)  # fmt: skip
def test_bad_meshes_are_errors_before_compilation(tmp_path, overrides, message):
    config = _small("softmax_expert_choice")
    with pytest.raises(ValueError, match=message):
        for assignment in overrides:
            config = override(config, assignment)
        train.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written


def test_groups_that_do_not_split_over_the_mesh_are_an_error():
    layer = _layer("softmax_expert_choice")
    with jax.set_mesh(make_mesh(4, 2)):
        with pytest.raises(ValueError, match=r"12 routing groups cannot be split evenly over the 4 x 2 = 8 devices"):
            moe_over_groups(layer, jnp.zeros((12, 16, 8)), jax.random.split(jax.random.key(0), 12), True)
