"""The device mesh and how a batch lies on it.

The devices form a (``data``, ``expert``) mesh (``config.mesh``, ``jax.sharding``): the batch is sharded over
every device, expert weights over ``expert`` along their E axis (the MoE layers move tokens to them with two
all-to-alls, ``optimized.moe_over_groups``), everything else is replicated. Each process reads its share of
every batch (``train.data`` loader) and ``jax.make_array_from_process_local_data`` assembles the global batch.
Imports ``train.config`` only.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optimized
from optimized import DATA, EXPERT

from .config import Config


def make_mesh(config: Config, devices=None) -> Mesh:
    """The (``data``, ``expert``) mesh of ``config.mesh`` over ``devices`` (default: every device), checked
    against the batch and the model before anything compiles."""
    devices = jax.devices() if devices is None else devices
    mesh = optimized.make_mesh(config.mesh.data, config.mesh.expert, devices)
    data, expert = mesh.shape[DATA], mesh.shape[EXPERT]
    per_device, rest = divmod(config.batch_size, mesh.size)
    if rest:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the {data} x {expert} = {mesh.size} devices "
            "of the mesh"
        )
    groups = 1 if config.model.router == "soft_moe" or config.model.dense else config.model.group_images
    if per_device % groups:
        raise ValueError(
            f"each of the {mesh.size} devices gets {per_device} images, not a multiple of model.group_images "
            f"= {groups}: routing groups would straddle devices"
        )
    if per_device % (groups * config.accumulate_steps):
        raise ValueError(
            f"each of the {mesh.size} devices gets {per_device} images, which accumulate_steps = "
            f"{config.accumulate_steps} micro-batches cannot share in whole routing groups of {groups} images: "
            f"batch_size must be a multiple of devices x accumulate_steps x group_images = "
            f"{mesh.size * config.accumulate_steps * groups}"
        )
    if not config.model.dense:
        optimized.check_expert_parallel(config.model.num_experts, config.batch_size // groups, data, expert)
    return mesh


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Images and labels: the batch axis split over every device of the mesh."""
    return NamedSharding(mesh, P((DATA, EXPERT)))


def global_batch(local: np.ndarray, sharding, global_size: int):
    """This process's rows of a batch -> the global ``jax.Array`` of ``global_size`` rows on ``sharding``
    (``jax.make_array_from_process_local_data``); with no sharding (tests) the rows as they are."""
    if sharding is None:
        return local
    return jax.make_array_from_process_local_data(sharding, local, (global_size, *local.shape[1:]))


def check_process_rows(sharding, global_size: int) -> None:
    """Stop unless this process's devices hold rows [p b, (p + 1) b) of a batch under ``sharding``: the rows
    ``train.data.process_share`` gives it to read."""
    p, count = jax.process_index(), jax.process_count()
    share = global_size // count
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_size,)).values():
        rows.update(range(global_size)[index[0]])
    if rows != set(range(p * share, (p + 1) * share)):
        raise ValueError(f"process {p} of {count} holds batch rows {sorted(rows)[:4]}..., not the contiguous block "
                         f"[{p * share}, {(p + 1) * share}) its share of the input is: order the mesh's devices "
                         "by process")  # fmt: skip


def gathered(output) -> np.ndarray:
    """A batch's output on this host, all rows (gathered from the other processes when there are several)."""
    if isinstance(output, jax.Array) and not output.is_fully_addressable:
        from jax.experimental import multihost_utils

        output = multihost_utils.process_allgather(output, tiled=True)
    return np.asarray(output)


def replicated(value) -> np.ndarray:
    """A replicated array's value on this host (every process holds all of it: no gathering)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = value.addressable_data(0)
    return np.asarray(value)
