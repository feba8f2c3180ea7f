"""Memory per device of the paper's presets (B/32, B/16, L/16 with E = 32) under expert parallelism.

Computed, not measured on accelerators: the training step (forward, backward, AdamW update, donated state)
is compiled for a mesh of ``--devices`` simulated CPU devices (default 32, the paper's E) with ``mesh.expert``
= 1, 8 and 32 and ``--images-per-device`` images on every device, exactly as ``train`` shards it (batch over
every device, expert weights over ``expert``), and XLA's buffer assignment of that SPMD program gives the
bytes one device holds (``compiled.memory_analysis()``): its arguments (its shard of the parameters, of the
AdamW moments and of the batch; the updated state aliases them) plus its temporaries (activations, gradients,
slot buffers). Parameters are counted exactly from the model's shapes. GPU and TPU compilers fuse and
rematerialize differently: read the figures as estimates of the right size, not guarantees.

    python benchmarks/memory.py [--images-per-device 8] [--devices 32] [--presets vmoe-b32 ...] [--out DIR]

Writes ``memory.md`` and ``memory.json``. ``--quick`` runs the tiny preset on 4 devices (for the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from optimized import ViTMoE, is_expert_leaf, make_mesh, shardings
from train.presets import resolve
from train.sharding import batch_sharding
from train.state import make_optimizer

GIB = 2**30


def _is_shape(x) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def parameter_counts(model_config) -> dict[str, int]:
    """Exact parameter counts: ``total``, ``expert`` (every ``MLPExperts`` array) and ``other``."""
    shapes = jax.eval_shape(lambda key: ViTMoE(model_config, key=key), jax.random.key(0))
    expert = other = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes, is_leaf=_is_shape):
        if not _is_shape(leaf):
            continue
        size = 1
        for n in leaf.shape:
            size *= n
        if is_expert_leaf(path):
            expert += size
        else:
            other += size
    return {"total": expert + other, "expert": expert, "other": other}


def step_memory(config, mesh, images_per_device: int) -> dict[str, int]:
    """Bytes one device holds for one training step of ``config`` on ``mesh`` (XLA's buffer assignment)."""
    model_shape = jax.eval_shape(lambda key: ViTMoE(config.model, key=key), jax.random.key(0))
    params, static = eqx.partition(model_shape, _is_shape, is_leaf=_is_shape)
    optimizer, _ = make_optimizer(config)
    opt_state = jax.eval_shape(optimizer.init, params)
    state_shardings = shardings((params, opt_state), mesh)
    params, opt_state = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), (params, opt_state),
        state_shardings, is_leaf=_is_shape,
    )  # fmt: skip
    m = config.model

    def step(params, opt_state, images, labels, key):
        def loss_fn(params):
            logits, aux = eqx.combine(params, static)(images, key=key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean() + aux["loss"]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batch = images_per_device * mesh.size
    images = jax.ShapeDtypeStruct((batch, m.image_size, m.image_size, m.channels), jnp.float32,
                                  sharding=batch_sharding(mesh))  # fmt: skip
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sharding(mesh))
    key = jax.eval_shape(lambda: jax.random.key(0))
    with jax.set_mesh(mesh):
        lowered = jax.jit(step, donate_argnums=(0, 1), out_shardings=(*state_shardings, None)).lower(
            params, opt_state, images, labels, key
        )
        analysis = lowered.compile().memory_analysis()
    # With the state donated, the new state is written over the old (``alias``): without donation a device also
    # holds every output beside its arguments.
    return {"arguments": int(analysis.argument_size_in_bytes), "temporaries": int(analysis.temp_size_in_bytes),
            "outputs": int(analysis.output_size_in_bytes), "aliased": int(analysis.alias_size_in_bytes)}


def _millions(n) -> str:
    if n < 1e6:
        return f"{n / 1e3:.1f}k"
    return f"{n / 1e6:.1f}M" if n < 1e8 else f"{n / 1e6:.0f}M"


def _gib(n) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / 2**20:.2f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["vmoe-b32", "vmoe-b16", "vmoe-l16"])
    parser.add_argument("--images-per-device", type=int, default=8)
    parser.add_argument("--devices", type=int, default=32, help="simulated CPU devices in the mesh")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 8, 32], help="values of mesh.expert")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="the tiny preset on 4 devices (numbers without meaning)")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.images_per_device, args.devices, args.shards = ["tiny"], 2, 4, [1, 2, 4]
    if jax.device_count() != args.devices:  # XLA fixes its device count at start: run again with the flag set
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        if flag in os.environ.get("XLA_FLAGS", ""):
            raise SystemExit(f"asked for {args.devices} devices but JAX sees {jax.device_count()}")
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(), JAX_PLATFORMS="cpu")
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], env)
    rows = []
    for name in args.presets:
        config = resolve(name)
        counts = parameter_counts(config.model)
        for shards in args.shards:
            if config.model.num_experts % shards or args.devices % shards:
                continue
            print(f"{name}, mesh {args.devices // shards} x {shards}: compiling one training step ...",
                  file=sys.stderr, flush=True)  # fmt: skip
            mesh = make_mesh(0, shards)
            memory = step_memory(config, mesh, args.images_per_device)
            rows.append({"preset": name, "mesh_data": args.devices // shards, "mesh_expert": shards,
                         **{f"params_{k}": v for k, v in counts.items()},
                         "params_per_device": counts["other"] + counts["expert"] // shards, **memory,
                         "total_bytes": memory["arguments"] + memory["temporaries"],
                         "total_bytes_undonated": sum(memory[k] for k in ("arguments", "temporaries",
                                                                          "outputs"))})  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"images_per_device": args.images_per_device, "devices": args.devices, "jax": jax.__version__}
    (out / "memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Memory per device (computed): {args.images_per_device} images per device, {args.devices} devices, "
        "float32, AdamW",
        "",
        "`python benchmarks/memory.py`: the sharded training step compiled for the mesh on simulated CPU devices; "
        "XLA's buffer assignment gives what one device holds: its arguments (parameter and AdamW-moment shards, "
        "its images) and its temporaries (activations, gradients, slot buffers); the state is donated, so the new "
        "one overwrites the old; without donation the device holds the step's outputs (the new state) beside it. "
        f"jax {meta['jax']}. Estimates for "
        "accelerators, whose compilers fuse and rematerialize differently.",
        "",
        "| preset | parameters (expert / other) | mesh data x expert | parameters per device | arguments | "
        "temporaries | total per device | without donation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {_millions(r['params_total'])} ({_millions(r['params_expert'])} / "
            f"{_millions(r['params_other'])}) | {r['mesh_data']} x {r['mesh_expert']} | "
            f"{_millions(r['params_per_device'])} | {_gib(r['arguments'])} | {_gib(r['temporaries'])} | "
            f"{_gib(r['total_bytes'])} | {_gib(r['total_bytes_undonated'])} |"
        )
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
