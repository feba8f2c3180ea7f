"""A vmoe checkpoint's params as ``optimized.ViTMoE``: the architecture read from the arrays, the arrays mapped.

``infer(params, name)`` reads the ViTMoEConfig fields the arrays fix (width, depth, heads, MLP size, experts, patch
size, channels, image size, pooling, pre-logits, classes, MoE placement; for Soft MoE the router, c and the
normalization) and maps each array to ours, refusing an array ViTMoE has no place for, naming it;
``build_config`` puts those fields over a preset and the ``--set`` assignments (a contradicting ``--set`` refused);
``to_model`` fills a model of that config. ``python -m train.import_vmoe`` writes the result as a workdir and
``--init-from CHECKPOINT`` (``train.finetune``) starts a fine-tune from it.

Imports ``train.config``, ``train.presets``, ``train.state`` and ``train.vmoe_checkpoint``; never the trainer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .config import override
from .presets import preset

# the model fields read from the arrays; a --set may repeat them, not change them
INFERRED = ("width", "depth", "num_heads", "mlp_dim", "num_experts", "patch_size", "channels", "image_size", "pool",
            "representation_size", "num_classes", "moe_layers", "dense", "soft_moe_normalize", "router", "factor")


class UnsupportedCheckpointError(ValueError):
    """The checkpoint holds an architecture ViTMoE cannot represent (the message names the array)."""


def _take(arrays: dict, name: str, prefix: str, ndim: int | None = None) -> np.ndarray:
    if name not in arrays:
        raise UnsupportedCheckpointError(f"checkpoint {prefix}: no array {name!r} (expected a vmoe "
                                         "VisionTransformerMoe's params)")
    value = np.asarray(arrays.pop(name))
    if ndim is not None and value.ndim != ndim:
        raise UnsupportedCheckpointError(f"checkpoint {prefix}: array {name!r} has shape {value.shape}, expected "
                                         f"{ndim} dimensions")
    return value


def _flat(tree: dict, path: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{path}/{key}" if path else str(key)
        if isinstance(value, dict):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def infer(params: dict, prefix: str) -> tuple[dict, dict]:
    """``(fields, arrays)``: the ViTMoEConfig fields the vmoe params determine, and our arrays by name (per block
    ``blocks/i/NAME``). Refuses an array it has no place for, naming it."""
    arrays = _flat(params)
    out: dict[str, np.ndarray] = {}
    kernel = _take(arrays, "embedding/kernel", prefix, 4)
    patch, patch2, channels, width = kernel.shape
    if patch != patch2:
        raise UnsupportedCheckpointError(f"checkpoint {prefix}: array 'embedding/kernel' {kernel.shape}: a "
                                         "non-square patch; ViTMoE's patches are square")
    out["patch_w"] = kernel.reshape(patch * patch * channels, width)
    out["patch_b"] = _take(arrays, "embedding/bias", prefix, 1)
    pool = "gap"
    if "cls" in arrays:
        out["cls_token"] = _take(arrays, "cls", prefix, 3).reshape(width)
        pool = "cls"
    if "Encoder/posembed_input/pos_embedding" not in arrays:
        raise UnsupportedCheckpointError(
            f"checkpoint {prefix}: no array 'Encoder/posembed_input/pos_embedding' (vmoe's position_emb 'none' or "
            "'sincos2d'); ViTMoE has learned position embeddings only")
    posemb = _take(arrays, "Encoder/posembed_input/pos_embedding", prefix, 3)[0]
    patches = posemb.shape[0] - (1 if pool == "cls" else 0)
    side = math.isqrt(patches)
    if side * side != patches:
        raise UnsupportedCheckpointError(f"checkpoint {prefix}: array 'Encoder/posembed_input/pos_embedding' has "
                                         f"{posemb.shape[0]} rows: not a square grid of patches (non-square images)")
    out["pos_embed"] = posemb
    depth = 0
    while any(name.startswith(f"Encoder/encoderblock_{depth}/") for name in arrays):
        depth += 1
    if depth == 0:
        raise UnsupportedCheckpointError(f"checkpoint {prefix}: no array 'Encoder/encoderblock_0/...'")
    heads, mlp_dim, num_experts, moe_layers, slots = None, None, None, [], []
    for i in range(depth):
        b = f"Encoder/encoderblock_{i}"
        for ln, ours in (("LayerNorm_0", "ln1"), ("LayerNorm_1", "ln2")):
            out[f"blocks/{i}/{ours}"] = np.stack([_take(arrays, f"{b}/{ln}/scale", prefix, 1),
                                                  _take(arrays, f"{b}/{ln}/bias", prefix, 1)])
        qkv_w, qkv_b = [], []
        for part in ("query", "key", "value"):
            w = _take(arrays, f"{b}/SelfAttention/{part}/kernel", prefix, 3)
            if heads is None:
                heads = w.shape[1]
            qkv_w.append(w.reshape(width, -1))
            qkv_b.append(_take(arrays, f"{b}/SelfAttention/{part}/bias", prefix, 2).reshape(-1))
        out[f"blocks/{i}/qkv_w"], out[f"blocks/{i}/qkv_b"] = np.concatenate(qkv_w, 1), np.concatenate(qkv_b)
        out[f"blocks/{i}/out_w"] = _take(arrays, f"{b}/SelfAttention/out/kernel", prefix, 3).reshape(-1, width)
        out[f"blocks/{i}/out_b"] = _take(arrays, f"{b}/SelfAttention/out/bias", prefix, 1)
        if f"{b}/Moe/Router/dense/kernel" in arrays or any(n.startswith(f"{b}/Moe/") for n in arrays):
            moe_layers.append(i)
            if f"{b}/Moe/Router/mu" in arrays:  # vmoe's Soft MoE (projects/soft_moe/router.py: SoftRouter)
                out[f"blocks/{i}/router_weight"] = _take(arrays, f"{b}/Moe/Router/mu", prefix, 3)
                out[f"blocks/{i}/scale"] = np.asarray(_take(arrays, f"{b}/Moe/Router/scale", prefix, 0))
                slots.append(out[f"blocks/{i}/router_weight"].shape[2])
            kernel = f"{b}/Moe/Router/dense/kernel"
            other = sorted(n for n in arrays if n.startswith(f"{b}/Moe/Router/") and n != kernel)
            if other:  # a router bias, a router of another kind, ...
                raise UnsupportedCheckpointError(
                    f"checkpoint {prefix}: array {other[0]!r} {np.shape(arrays[other[0]])}: ViTMoE's sparse routers "
                    "have one bias-free (D, E) kernel, 'Moe/Router/dense/kernel', and its Soft MoE 'Moe/Router/mu' "
                    "(D, E, S) and 'Moe/Router/scale'")
            if f"blocks/{i}/scale" not in out:
                out[f"blocks/{i}/router_weight"] = _take(arrays, f"{b}/Moe/Router/dense/kernel", prefix, 2)
            w1 = _take(arrays, f"{b}/Moe/Mlp/Dense_0/kernel", prefix, 3)
            num_experts, mlp_dim = w1.shape[0], w1.shape[2]
            out[f"blocks/{i}/w1"] = w1
            out[f"blocks/{i}/b1"] = _take(arrays, f"{b}/Moe/Mlp/Dense_0/bias", prefix, 2)
            out[f"blocks/{i}/w2"] = _take(arrays, f"{b}/Moe/Mlp/Dense_1/kernel", prefix, 3)
            out[f"blocks/{i}/b2"] = _take(arrays, f"{b}/Moe/Mlp/Dense_1/bias", prefix, 2)
        else:
            w1 = _take(arrays, f"{b}/Mlp/Dense_0/kernel", prefix, 2)
            mlp_dim = w1.shape[1]
            out[f"blocks/{i}/mlp"] = (w1, _take(arrays, f"{b}/Mlp/Dense_0/bias", prefix, 1),
                                      _take(arrays, f"{b}/Mlp/Dense_1/kernel", prefix, 2),
                                      _take(arrays, f"{b}/Mlp/Dense_1/bias", prefix, 1))
    out["final_ln"] = np.stack([_take(arrays, "Encoder/encoder_norm/scale", prefix, 1),
                                _take(arrays, "Encoder/encoder_norm/bias", prefix, 1)])
    representation_size = None
    if "pre_logits/kernel" in arrays:
        out["pre_logits_w"] = _take(arrays, "pre_logits/kernel", prefix, 2)
        out["pre_logits_b"] = _take(arrays, "pre_logits/bias", prefix, 1)
        representation_size = out["pre_logits_w"].shape[1]
    out["head_w"] = _take(arrays, "head/kernel", prefix, 2)
    out["head_b"] = _take(arrays, "head/bias", prefix, 1)
    if arrays:  # an array ViTMoE has no place for
        name = sorted(arrays)[0]
        raise UnsupportedCheckpointError(
            f"checkpoint {prefix}: array {name!r} {np.shape(arrays[name])} has no counterpart in optimized.ViTMoE "
            f"(it represents: patch embedding, learned position embedding, class token or GAP pooling, pre-norm "
            f"blocks of attention + MLP or MoE of MLPs with a bias-free router, optional Dense+tanh pre-logits, a "
            f"linear head); {len(arrays)} such array(s): {sorted(arrays)[:5]}")
    every_2 = depth % 2 == 0 and moe_layers == list(range(1, depth, 2))
    fields = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, patch_size=patch, channels=channels,
                  image_size=side * patch, pool=pool, representation_size=representation_size,
                  num_classes=out["head_w"].shape[1], dense=not moe_layers,
                  moe_layers=None if every_2 or not moe_layers else tuple(moe_layers))
    if num_experts is not None:
        fields["num_experts"] = num_experts
    if slots:
        if len(slots) != len(moe_layers) or len(set(slots)) != 1:
            raise UnsupportedCheckpointError(
                f"checkpoint {prefix}: Soft MoE in some MoE blocks only, or with different slots per expert (S = "
                f"{slots}); ViTMoE's MoE layers share one router and one S")
        # Choice: vmoe's SoftRouter always normalizes (tokens and mu to unit norm, a learned scale), as our
        # soft_moe_normalize=True; each image is one routing group (vmoe's soft_moe configs: group_size = the
        # image's tokens). The factor is the one whose round(c T / E) is the arrays' S: c = S E / T.
        tokens = patches + (1 if pool == "cls" else 0)
        fields |= dict(router="soft_moe", soft_moe_normalize=True, factor=slots[0] * num_experts / tokens,
                      capacity_rule="round")
    return fields, out


def build_config(fields: dict, preset_name: str, sets: tuple[str, ...], prefix: str):
    """The run's Config: the preset, the inferred fields, then the --set assignments; a --set that changes an
    inferred field is refused, naming it and the array's value."""
    config = preset(preset_name)
    model = dataclasses.replace(config.model, **fields)
    config = config.replace(model=model, data=dataclasses.replace(config.data, image_size=model.image_size,
                                                                  channels=model.channels))
    for assignment in sets:
        config = override(config, assignment)
        for name in INFERRED:
            if name in fields and getattr(config.model, name) != fields[name]:
                raise ValueError(f"--set {assignment}: model.{name} = {getattr(config.model, name)!r} contradicts "
                                 f"the checkpoint's arrays ({prefix}: model.{name} = {fields[name]!r})")
    config.validate()
    return config


def _stack(arrays: dict, blocks: list[int], name: str) -> np.ndarray:
    return np.stack([arrays[f"blocks/{i}/{name}"] for i in blocks])


def _ours(arrays: dict, config) -> dict[str, np.ndarray]:
    """Our arrays by ``jax.tree_util.keystr`` path of ``optimized.ViTMoE`` (pairs or blocks layout)."""
    m = config.model
    by_path = {f".{k}": v for k, v in arrays.items() if not k.startswith("blocks/")}
    block_names = ("ln1", "qkv_w", "qkv_b", "out_w", "out_b", "ln2")
    moe_names = {"router_weight": "moe.router_weight", "scale": "moe.scale", "w1": "moe.experts.w1",
                 "b1": "moe.experts.b1", "w2": "moe.experts.w2", "b2": "moe.experts.b2"}

    def block(where: str, blocks: list[int], moe: bool, stack):
        for name in block_names:
            by_path[f"{where}.{name}"] = stack(name)
        if moe:
            for name, ours in moe_names.items():
                if name != "scale" or f"blocks/{blocks[0]}/scale" in arrays:  # Soft MoE's scale
                    by_path[f"{where}.{ours}"] = stack(name)
        else:
            for j in range(4):
                by_path[f"{where}.mlp[{j}]"] = stack(("mlp", j))

    def getter(blocks):
        def get(name):
            if isinstance(name, tuple):
                return np.stack([arrays[f"blocks/{i}/mlp"][name[1]] for i in blocks])
            return _stack(arrays, blocks, name)
        return get

    if m.every_2 and m.scan_layers:  # the stacked layout (optimized.ViTMoE)
        firsts, seconds = list(range(0, m.depth, 2)), list(range(1, m.depth, 2))
        block(".pairs.first", firsts, False, getter(firsts))
        block(".pairs.second", seconds, not m.dense, getter(seconds))
    else:
        moe = set(m.moe_block_indices)
        for i in range(m.depth):
            block(f".blocks[{i}]", [i], i in moe, lambda name, i=i: getter([i])(name)[0])
    return by_path


def to_model(arrays: dict, config):
    """``optimized.ViTMoE`` of ``config`` holding the vmoe arrays (every one of its arrays filled, shapes checked)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from .state import init_model

    model = init_model(config)
    by_path = _ours(arrays, config)
    params, static = eqx.partition(model, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    filled = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        value = by_path.pop(name, None)
        if value is None:
            raise UnsupportedCheckpointError(f"the model of this config has an array {name} {leaf.shape} that the "
                                             "checkpoint does not fill")
        if tuple(value.shape) != tuple(leaf.shape):
            raise UnsupportedCheckpointError(f"array {name}: the checkpoint gives shape {tuple(value.shape)}, the "
                                             f"model of this config has {tuple(leaf.shape)}")
        filled.append(jnp.asarray(value, leaf.dtype))
    if by_path:
        raise UnsupportedCheckpointError(f"arrays {sorted(by_path)} of the checkpoint have no place in the model")
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, filled), static)
