"""Expert parallelism: experts sharded over an ``expert`` mesh axis, tokens moved with two all-to-alls.

    mesh (data, expert); the batch of routing groups is sharded over both axes, G_l groups per device
    per device: route its G_l groups -> slots (G_l, E, C, D)
        all_to_all over ``expert``: send expert block j to device j -> (n, G_l, E/n, C, D), its own experts
        run E/n experts on the n * G_l * C slots they received
        all_to_all back -> (G_l, E, C, D) -> combine into the device's tokens

Routing is computed per group, on the device that holds the group, with the replicated router weights: a
group is routed identically on 1 device or on 8, and only where its experts run changes. Expert weights
(every leaf under an ``MLPExperts``) are sharded along their E axis over ``expert``; everything else is
replicated, and the batch is sharded over (``data``, ``expert``). Without a mesh, or with an ``expert`` axis
of size 1, the layer is the plain ``jax.vmap`` over groups and XLA's partitioner does data parallelism.

This is JAX's own SPMD machinery (``jax.sharding.Mesh``, ``jax.shard_map``, ``jax.lax.all_to_all``): the
same program runs on CPU devices, a GPU node or a TPU slice.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._layer import MLPExperts

DATA = "data"
EXPERT = "expert"


def make_mesh(data: int, expert: int, devices=None) -> Mesh:
    """A (``data``, ``expert``) mesh on the first ``data * expert`` of ``devices`` (default: every device).

    ``data = 0`` takes every device not on the expert axis: ``len(devices) // expert``. The mesh's size must
    divide the number of devices (a 1 x 1 mesh is one device: the single-device run).
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    for name, value in (("data", data), ("expert", expert)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise TypeError(f"mesh.{name} must be an integer, got {value!r}")
    if expert < 1 or data < 0:
        raise ValueError(f"mesh.expert must be >= 1 and mesh.data >= 0 (0: the rest), got {data} x {expert}")
    if count % expert:
        raise ValueError(f"mesh.expert = {expert} does not divide the {count} devices")
    data = count // expert if data == 0 else data
    if count % (data * expert):
        raise ValueError(
            f"a mesh of data {data} x expert {expert} = {data * expert} devices does not divide the {count} "
            f"devices; choose data x expert dividing {count} (mesh.data=0 takes {count // expert})"
        )
    return Mesh(np.array(devices[: data * expert]).reshape(data, expert), (DATA, EXPERT))


def check_expert_parallel(num_experts: int, num_groups: int, data: int, expert: int) -> None:
    """The layer's shapes must split over the mesh: E over ``expert``, the groups over every device."""
    if num_experts % expert:
        raise ValueError(
            f"mesh.expert = {expert} does not divide the {num_experts} experts: each device must hold E / expert "
            "whole experts"
        )
    if num_groups % (data * expert):
        raise ValueError(
            f"{num_groups} routing groups cannot be split evenly over the {data} x {expert} = {data * expert} "
            "devices of the mesh: the batch must hold a multiple of that many groups"
        )


def is_expert_leaf(path) -> bool:
    """True for the arrays of an ``MLPExperts`` (a path through a field named ``experts``)."""
    return any(isinstance(k, jax.tree_util.GetAttrKey) and k.name == "experts" for k in path)


def shardings(tree, mesh: Mesh):
    """NamedShardings for a model or an optimizer state holding one: expert arrays split along E, the rest
    replicated.

    The E axis of an expert array is its first axis in an ``MLPExperts`` and its second in the ViT, whose
    pairs of blocks are stacked along a leading axis; in general it is the axis of size E after any
    leading stack axes, found here as ``ndim - (2 for w1, w2; 1 for b1, b2)``.
    """

    def one(path, leaf):
        shaped = hasattr(leaf, "shape") and hasattr(leaf, "dtype")  # arrays, and jax.ShapeDtypeStruct for planning
        if not (shaped and is_expert_leaf(path)) or EXPERT not in mesh.axis_names:
            return NamedSharding(mesh, P())
        name = next(k.name for k in reversed(path) if isinstance(k, jax.tree_util.GetAttrKey))
        axis = leaf.ndim - (2 if name in ("w1", "w2") else 1) - 1
        return NamedSharding(mesh, P(*([None] * axis), EXPERT))

    return jax.tree_util.tree_map_with_path(one, tree)


def _expert_axis_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or EXPERT not in mesh.axis_names:
        return 1
    return mesh.shape[EXPERT]


def moe_over_groups(layer, groups, keys, inference: bool):
    """Apply an ``MoELayer`` to every group: ``groups`` (G, T, D), ``keys`` (G,) -> (y (G, T, D), aux of (G, ...)).

    Under a mesh with an ``expert`` axis of size n > 1 (``jax.set_mesh``), the experts run sharded with two
    all-to-alls; otherwise this is ``jax.vmap`` of the layer over the groups. Both give the same numbers.
    """
    n = _expert_axis_size()
    if n == 1:
        # Choice: the experts run once on all the groups' slots, (E, G * C, D), between a vmapped dispatch and
        # a vmapped combine, rather than inside a vmap of the whole layer: each expert then multiplies one
        # (G * C, D) matrix, its weight gradient is one plain product (see ``MLPExperts.batched``), and no
        # per-group gradient of the expert weights is formed and summed.
        slots, state, aux = jax.vmap(lambda g, k: layer.dispatch(g, key=k, inference=inference))(groups, keys)
        g, e, c, d = slots.shape
        outputs = layer.experts.batched(slots.transpose(1, 0, 2, 3).reshape(e, g * c, d))
        return jax.vmap(layer.combine)(outputs.reshape(e, g, c, d).transpose(1, 0, 2, 3), state), aux
    mesh = jax.sharding.get_abstract_mesh()
    data = mesh.shape.get(DATA, 1)
    check_expert_parallel(layer.num_experts, groups.shape[0], data, n)
    batch = P((DATA, EXPERT) if DATA in mesh.axis_names else EXPERT)
    params, static = eqx.partition(layer, eqx.is_array)
    specs = jax.tree_util.tree_map_with_path(lambda path, _: P(EXPERT) if is_expert_leaf(path) else P(), params)

    def local(groups, keys, params):
        layer = eqx.combine(params, static)
        slots, state, aux = jax.vmap(lambda g, k: layer.dispatch(g, key=k, inference=inference))(groups, keys)
        outputs = _exchange_and_run(slots, layer.experts, n)
        return jax.vmap(layer.combine)(outputs, state), aux

    return jax.shard_map(local, in_specs=(batch, batch, specs), out_specs=(batch, batch))(groups, keys, params)


def _exchange_and_run(slots, experts: MLPExperts, n: int):
    """slots (G_l, E, C, D) of this device's groups -> the experts' outputs for them, same shape.

    ``experts`` holds this device's E / n experts: block j of the expert axis lives on device j of ``expert``.
    """
    g, e, c, d = slots.shape
    local = e // n
    send = slots.reshape(g, n, local, c, d).transpose(1, 0, 2, 3, 4)  # (n, G_l, E/n, C, D): block j -> device j
    received = jax.lax.all_to_all(send, EXPERT, 0, 0, tiled=True)  # (n, G_l, E/n, C, D): from device j, its groups
    mine = received.transpose(2, 0, 1, 3, 4).reshape(local, n * g * c, d)
    outputs = experts.batched(mine, written_out_backward=False).reshape(local, n, g, c, d).transpose(1, 2, 0, 3, 4)
    returned = jax.lax.all_to_all(outputs, EXPERT, 0, 0, tiled=True)  # (n, G_l, E/n, C, D): from expert block j
    return returned.transpose(1, 0, 2, 3, 4).reshape(g, e, c, d)
