"""Tiny V-MoE checkpoints written by the authors' own code, for tests/test_import_vmoe.py (not run in CI).

Each fixture is a ``VisionTransformerMoe`` of vmoe/nn/vit_moe.py with random weights (the head is not zero-initialized,
so the logits say something), saved with vmoe/checkpoints/partitioned.py, plus ``NAME.npz`` holding fixed images
``x`` and vmoe's logits ``logits`` on them (deterministic mode), and ``NAME.json`` saying how it was built.

Run with the vmoe venv (it has flax, jax, tensorflow), from the repository root:

    PYTHONPATH=/work/vmoe-src:/work/vit-src /work/venv-vmoe/bin/python tools/make_vmoe_fixtures.py \
        --vmoe /work/vmoe-src --vit-jax /work/vit-src --out tests/data/vmoe

Layouts: vmoe's ``save_checkpoint`` writes only the version "20220622" (V1) index. The older layout (no "version" key,
arrays numbered in the flatten order of the tree) is made from a V1 write by re-saving the index without its
"version" key through vmoe's own ``base.save_checkpoint``: ``_create_map_filepath_to_data`` differs between the two
versions only by that key, and for a tree of nested dicts (a params tree) the flatten order of the tree and of its state
dict agree, so the data shards are byte-for-byte those the old code wrote.

An old-layout training state cannot be made that way (the old writer numbered the TrainState object's leaves: step,
params, opt_state, rngs; V1 numbers its state dict's, sorted: opt_state, params, rngs, step). ``_save_old_layout`` runs
the body of vmoe's current ``partitioned.save_checkpoint`` through its own helpers, without the ``to_state_dict`` that
commit 219e5bd (2022-06-24, "Version.V1") put first and with ``Version.UNKNOWN``: the writer as it was before that
commit. The result is checked with vmoe's own reader of the old layout (``restore_checkpoint`` with the TrainState as
template), which must give back every array.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

FIXTURES = {
    # name: (model kwargs, what to save, layout)
    "tc_k1_token_every2": dict(
        classifier="token", depth=4, moe_layers=(1, 3), router="tc", k=1, representation_size=None,
        save="params", layout="v1"),
    "tc_k2_gap_prelogits_state": dict(
        classifier="gap", depth=2, moe_layers=(1,), router="tc", k=2, representation_size=6,
        save="state", layout="v1"),
    "ec_gap_last2_old": dict(
        classifier="gap", depth=4, moe_layers=(2, 3), router="ec", k=2, representation_size=None,
        save="params", layout="old"),
    "tc_k2_gap_prelogits_state_old": dict(
        classifier="gap", depth=2, moe_layers=(1,), router="tc", k=2, representation_size=6,
        save="state", layout="old"),
    "tc_k1_token_every2_old": dict(
        classifier="token", depth=4, moe_layers=(1, 3), router="tc", k=1, representation_size=6,
        save="params", layout="old"),
    # MapHead pooling: attention pooling that ViTMoE cannot represent (the refusal test)
    "refused_map_head": dict(
        classifier="map", depth=2, moe_layers=(1,), router="tc", k=1, representation_size=None,
        save="params", layout="v1"),
    # Soft MoE (vmoe.projects.soft_moe): vmoe's SoftRouter, dispatch in float32 (see build)
    "soft_gap_every2": dict(
        classifier="gap", depth=4, moe_layers=(1, 3), router="soft", k=2, representation_size=None,
        save="params", layout="v1"),
}
WIDTH, HEADS, MLP, PATCH, IMAGE, EXPERTS, CLASSES, BATCH = 8, 2, 16, 4, 8, 4, 5, 4


def build(spec: dict, vit_moe, jnp):
    tokens = (IMAGE // PATCH) ** 2 + (1 if spec["classifier"] == "token" else 0)
    if spec["router"] == "tc":
        router = dict(name="NoisyTopExpertsPerItemRouter", num_selected_experts=spec["k"], noise_std=1.0,
                      importance_loss_weight=0.005, load_loss_weight=0.005,
                      dispatcher=dict(name="einsum", bfloat16=False, capacity_factor=1.05, batch_priority=False))
    elif spec["router"] == "soft":  # k: slots per expert; one image per group, as vmoe's soft_moe configs
        router = dict(name="vmoe.projects.soft_moe.router.SoftRouter", num_slots=spec["k"])
        moe = dict(layers=spec["moe_layers"], num_experts=EXPERTS, group_size=tokens, router=router, split_rngs=False)
    else:
        router = dict(name="NoisyTopItemsPerExpertRouter", noise_std=1.0,
                      dispatcher=dict(name="einsum", bfloat16=False, capacity_factor=float(spec["k"])))
    if spec["router"] != "soft":
        moe = dict(layers=spec["moe_layers"], num_experts=EXPERTS, group_size=2 * tokens, router=router,
                   split_rngs=True)
    model = vit_moe.VisionTransformerMoe(
        num_classes=CLASSES, patch_size=(PATCH, PATCH), hidden_size=WIDTH, classifier=spec["classifier"],
        representation_size=spec["representation_size"], deterministic=True, head_kernel_zero_init=False,
        head_bias_init=0.0,
        encoder=dict(num_layers=spec["depth"], mlp_dim=MLP, num_heads=HEADS, dropout_rate=0.0,
                     attention_dropout_rate=0.0, moe=moe))
    return model, dict(group_size=moe["group_size"], tokens=tokens)


def _save_old_layout(partitioned, prefix: str, tree, num_shards: int) -> None:
    """``tree`` saved as vmoe's writer did before the version "20220622": its leaves numbered in the tree object's own
    flatten order, the index its state dict without a "version" key (vmoe's helpers, see the module)."""
    import jax

    leaves, struct = jax.tree_util.tree_flatten(tree)  # the object's order; V1 flattens to_state_dict(tree) instead
    bytes_per_shard = [0] * num_shards
    index_leaves = []
    chunks = {i: partitioned.LazyArrayChunks() for i in range(num_shards)}
    for i, arr in enumerate(leaves):
        to_arrays = partitioned._create_map_slicend_to_array_shards(arr, partitioned.MAX_CHUNK_BYTES)
        to_shards = partitioned._create_map_slicend_to_checkpoint_shard(to_arrays, arr.dtype.itemsize, bytes_per_shard)
        index_leaves.append(partitioned._make_index_info(to_shards, arr))
        partitioned._update_lazy_array_chunks_with_leaf(i, to_arrays, to_shards, chunks)
    partitioned._replace_jax_with_numpy_in_lazy_array_chunks(chunks)
    files = partitioned._create_map_filepath_to_data(prefix, struct, index_leaves, chunks, num_shards,
                                                      partitioned.Version.UNKNOWN)
    partitioned.base.save_multiple_checkpoints_async(files, overwrite=True, makedirs=False).wait()
    restored = partitioned.restore_checkpoint(prefix, tree)  # vmoe's reader of the old layout, the tree as template
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(restored), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all()), "vmoe does not read it back"


def _float32_soft_dispatch() -> None:
    """vmoe's SoftRouter wraps its dispatcher in a bfloat16 one; the fixture compares logits at 1e-5, so the
    dispatcher is left in float32 (the only change to vmoe's code path: its routing weights are unchanged)."""
    from vmoe.projects.soft_moe import router

    router.Bfloat16Dispatcher = lambda dispatcher: dispatcher


def _local_gfile() -> None:
    """vmoe's checkpoint code reads and writes through ``tensorflow.io.gfile``; the vmoe venv has no tensorflow, so a
    stand-in module maps the few calls it makes (GFile, exists, makedirs, glob, remove, rename, stat) onto the local
    file system."""
    import glob
    import os
    import shutil
    import types

    if "tensorflow" in sys.modules:
        return
    gfile = types.ModuleType("tensorflow.io.gfile")
    gfile.GFile = open
    gfile.exists = os.path.exists
    gfile.makedirs = lambda path: os.makedirs(path, exist_ok=True)
    gfile.glob = glob.glob
    gfile.remove = os.remove
    gfile.rename = lambda src, dst, overwrite=False: (os.replace if overwrite else shutil.move)(src, dst)
    gfile.stat = lambda path: types.SimpleNamespace(length=os.stat(path).st_size)
    io = types.ModuleType("tensorflow.io")
    io.gfile = gfile
    tf = types.ModuleType("tensorflow")
    tf.io = io
    sys.modules.update({"tensorflow": tf, "tensorflow.io": io, "tensorflow.io.gfile": gfile})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vmoe", required=True, help="checkout of google-research/vmoe")
    parser.add_argument("--vit-jax", required=True, help="checkout of google-research/vision_transformer")
    parser.add_argument("--out", default="tests/data/vmoe")
    parser.add_argument("--only", nargs="*", help="write only these fixtures (default: all)")
    args = parser.parse_args(argv)
    sys.path[:0] = [args.vmoe, args.vit_jax]
    _local_gfile()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from vmoe.checkpoints import base, partitioned
    from vmoe.nn import vit_moe
    from vmoe.train import train_state as vmoe_train_state

    _float32_soft_dispatch()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, spec) in enumerate(FIXTURES.items()):
        if args.only and name not in args.only:
            continue
        model, extra = build(spec, vit_moe, jnp)
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(100 + i), (BATCH, IMAGE, IMAGE, 3)), np.float32)
        variables = model.init({"params": jax.random.PRNGKey(i), "gating": jax.random.PRNGKey(7)}, x)
        # random (not initial) values everywhere: biases, layer norms, class token and position embeddings too
        leaves, tree = jax.tree_util.tree_flatten(variables["params"])
        keys = jax.random.split(jax.random.PRNGKey(1000 + i), len(leaves))
        leaves = [v + 0.3 * jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves, strict=True)]
        params = jax.tree_util.tree_unflatten(tree, leaves)
        logits, _ = model.apply({"params": params}, x, rngs={"gating": jax.random.PRNGKey(7)})
        if spec["save"] == "state":
            tx = optax.adam(1e-3)
            tree_to_save = vmoe_train_state.TrainState.create(
                apply_fn=model.apply, params=params, tx=tx, rngs={"gating": jax.random.PRNGKey(3)})
            # one step with a constant gradient so the optimizer state is not all zeros
            grads = jax.tree_util.tree_map(jnp.ones_like, params)
            tree_to_save = tree_to_save.apply_gradients(grads=grads)
            tree_to_save = jax.tree_util.tree_map(jnp.asarray, tree_to_save.replace(params=params))
        else:
            tree_to_save = params
        prefix = str(out / name)
        if spec["layout"] == "old" and spec["save"] == "state":
            _save_old_layout(partitioned, prefix, tree_to_save, num_shards=2)
        else:
            partitioned.save_checkpoint(prefix, tree_to_save, num_shards=2, makedirs=False).wait()
        if spec["layout"] == "old" and spec["save"] == "params":
            index = base.restore_checkpoint(prefix + ".index")
            del index["version"]
            base.save_checkpoint(prefix + ".index", index, overwrite=True)
        np.savez(out / f"{name}.npz", x=x, logits=np.asarray(logits, np.float32))
        record = dict(spec, width=WIDTH, num_heads=HEADS, mlp_dim=MLP, patch_size=PATCH, image_size=IMAGE,
                      num_experts=EXPERTS, num_classes=CLASSES, batch=BATCH, **extra)
        (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(name, "written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
