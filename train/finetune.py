"""Fine-tuning: a run that starts from trained weights (``python -m train --init-from DIR_OR_CHECKPOINT``).

The source is a trained workdir (``train.load_model`` reads it: our own runs and the workdirs ``python -m
train.import_vmoe`` writes) or a vmoe checkpoint itself (``PREFIX``, ``PREFIX.index`` or a shard: read into memory
with ``train.vmoe_model``, no workdir written).

``from_source(config, explicit)`` is the command line's rule for the run's model. Choice: every ``model.`` field comes
from the source (its ``config.json``; for a vmoe checkpoint, what ``train.vmoe_model.infer`` reads from the arrays
over the run's ``--preset``/``--set``, the importer's rule), except ``image_size`` and ``num_classes``, which follow
the run's data, and the fields the user names with ``--set model.FIELD=...`` (or ``--router``/``--factor``). Those may
change what fine-tuning legitimately changes (the router among the sparse routers, k or c, the capacity rule, group
size, noise, loss weights, dtype, dropping the pre-logits layer); one that contradicts the source's architecture
(``ARCHITECTURE``, the MoE placement, Soft MoE vs a sparse router, a pre-logits layer the source lacks) is refused,
naming both values. The data's channels follow the model's (gray repeated, RGB to luma: ``train.data``) unless
``--set data.channels`` is given. A Soft MoE source keeps its slots per expert S (a parameter's shape) when the image
size changes: c becomes S E / T for the new T, as vmoe's fine-tunes keep ``num_slots``.

``check_source(config)`` refuses, before anything is read or written, a source whose architecture the run's model
cannot take (naming the field); ``initialize_from(model, config)`` puts the source's weights into a freshly built
model: every array copied, except

- the head (``head_w``, ``head_b``), new (the config's zero kernel and ``head_bias_init``) when the number of
  classes differs;
- the position embedding, resized when the image size differs (``resize_posemb``: the patch grid interpolated in
  2-D, the class token's row kept), as vmoe and vit_jax do for their 384 px fine-tunes;
- a source's pre-logits layer, dropped when the run has none (``representation_size=None``), as vmoe's and
  vit_jax's fine-tunes drop it.

The optimizer state is the trainer's fresh one and the run starts at step 0. Imports ``train.config``,
``train.trained``, ``train.vmoe_checkpoint``, ``train.vmoe_model`` and ``train.workdir``; never the trainer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from optimized import capacity

from .config import Config
from .trained import load_model
from .vmoe_checkpoint import params_of, read_arrays, resolve_prefix
from .vmoe_model import infer, to_model
from .workdir import CONFIG, saved_config

# Fields of optimized.ViTMoEConfig that set the shapes or the meaning of the arrays: they must match the source's.
# image_size (the position embedding is resized) and num_classes (a new head) may differ; so may everything that
# only changes how the arrays are used (router noise, capacity, group size, loss weights, dtype, ...).
ARCHITECTURE = (
    "patch_size",
    "channels",
    "width",
    "depth",
    "num_heads",
    "mlp_dim",
    "num_experts",
    "pool",
    "dense",
    "soft_moe_normalize",
)
# The model fields a fine-tune takes from its data, not from the source (a new head, a resized position embedding).
FROM_DATA = ("image_size", "num_classes")


def _vmoe_prefix(source: Path) -> Path | None:
    """The vmoe checkpoint's prefix when ``source`` names one (and is not a workdir), else None."""
    if (source / CONFIG).exists():
        return None
    prefix = resolve_prefix(source)
    return prefix if prefix.with_name(prefix.name + ".index").is_file() else None


@functools.lru_cache(maxsize=1)
def _vmoe_arrays(prefix: str, stamp: tuple) -> tuple[dict, dict]:
    """``(fields, arrays)`` of ``train.vmoe_model.infer`` for the checkpoint at ``prefix``. Cached (``stamp``: the
    index's size and time) so that the checks and ``initialize_from`` read the shards once; ``initialize_from``
    empties the cache."""
    return infer(params_of(read_arrays(prefix)), prefix)


def _read_vmoe(prefix: Path) -> tuple[dict, dict]:
    stat = prefix.with_name(prefix.name + ".index").stat()
    return _vmoe_arrays(str(prefix), (stat.st_size, stat.st_mtime_ns))


def source_config(config: Config) -> Config:
    """The config of ``config.init_from``: a workdir's ``config.json``; for a vmoe checkpoint, ``config`` with the
    model fields its arrays fix (what they cannot say, the router, k or c, group size, ..., is ``config``'s).

    Raises ValueError naming ``--init-from`` when the path is neither a workdir nor a vmoe checkpoint, or when the
    checkpoint cannot be read or represented (``VmoeCheckpointError``, ``UnsupportedCheckpointError``).
    """
    source = Path(config.init_from)
    prefix = _vmoe_prefix(source)
    if prefix is not None:
        fields, _ = _read_vmoe(prefix)
        if not fields["dense"] and "router" not in fields and config.model.router == "soft_moe":
            raise ValueError(
                f"--init-from {source}: model.router is 'soft_moe' here, and the checkpoint's MoE layers hold a sparse "
                "router's kernel W (D, E) there, not Soft MoE's phi (D, E, S)"
            )
        return config.replace(model=config.model.replace(**fields))
    if not (source / CONFIG).exists():
        what = "no such directory" if not source.exists() else f"not a training workdir (no {CONFIG})"
        raise ValueError(f"--init-from {source}: {what}, nor a vmoe checkpoint (PREFIX.index and its shards)")
    return saved_config(source)


def from_source(config: Config, explicit: Iterable[str] = ()) -> Config:
    """``config`` (the preset and ``--set``, with ``init_from``) with its model taken from the source (the module's
    rule). ``explicit``: the keys the command line set (``model.width``, ``data.channels``, ...): those keep the
    user's value, and one that contradicts the source's architecture is refused by ``check_source``, naming both
    values. Returns the validated config; nothing is written.
    """
    explicit = {key.strip() for key in explicit}
    named = {key.split(".", 1)[1] for key in explicit if key.startswith("model.")}
    source = source_config(config).model
    keep = set(FROM_DATA) | named
    model = config.model.replace(
        **{f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.name not in keep})
    if source.router == model.router == "soft_moe" and "factor" not in named and model.num_tokens != source.num_tokens:
        # Choice: S (Soft MoE's phi is (D, E, S)) is kept, as vmoe's fine-tunes keep num_slots: c = S E / T
        slots = capacity(source.num_tokens, source.num_experts, source.factor)
        factor = slots * model.num_experts / model.num_tokens
        model = model.replace(factor=int(factor) if float(factor).is_integer() else factor)
    data = config.data
    if "data.channels" not in explicit:
        data = dataclasses.replace(data, channels=model.channels)
    config = config.replace(model=model, data=data)
    config.validate()
    check_source(config)
    return config


def check_source(config: Config) -> Config:
    """The config of ``config.init_from``'s source (``source_config``), after refusing a source the run's model
    cannot start from.

    Raises ValueError naming ``--init-from`` and the first field that does not match (``ARCHITECTURE``, the MoE
    placement, the router family, the pre-logits layer), or saying why the path is not a source.
    """
    source = config.init_from
    source_cfg = source_config(config)
    theirs, ours = source_cfg.model, config.model
    for name in ARCHITECTURE:
        if getattr(theirs, name) != getattr(ours, name):
            raise ValueError(
                f"--init-from {source}: model.{name} is {getattr(theirs, name)!r} there and {getattr(ours, name)!r} "
                f"here; fine-tuning keeps the architecture (only image_size and num_classes may change)"
            )
    if theirs.moe_block_indices != ours.moe_block_indices:
        raise ValueError(
            f"--init-from {source}: model.moe_layers puts MoE on blocks {list(theirs.moe_block_indices)} there and "
            f"{list(ours.moe_block_indices)} here"
        )
    # Choice: the router may change among the sparse routers (they share W, (D, E)); Soft MoE's phi is another array
    if not ours.dense and (theirs.router == "soft_moe") != (ours.router == "soft_moe"):
        raise ValueError(
            f"--init-from {source}: model.router is {theirs.router!r} there and {ours.router!r} here; Soft MoE's "
            "phi (D, E, S) and a sparse router's W (D, E) are different arrays"
        )
    if ours.representation_size is not None and theirs.representation_size != ours.representation_size:
        raise ValueError(
            f"--init-from {source}: model.representation_size is {theirs.representation_size!r} there and "
            f"{ours.representation_size!r} here; a pre-logits layer can be dropped (None here) but not made up"
        )
    return source_cfg


def resize_posemb(posemb, old_side: int, new_side: int, class_token: bool) -> np.ndarray:
    """The position embedding (N, D) of an ``old_side`` x ``old_side`` patch grid resized to ``new_side`` x
    ``new_side``: linear interpolation along rows, then columns, the class token's row (first, if any) kept.

    Choice: the interpolation of vmoe (``vmoe/initialization/rules.py``, ``VitZoomTransformation``) and vit_jax
    (``interpolate_posembed``), ``scipy.ndimage.zoom(grid, zoom, order=1)``: the grid's corner points map onto
    the corners, so output index i reads the input at ``i * (old - 1) / (new - 1)``; big_vision's
    ``jax.image.resize`` (half-pixel centres) differs by a fraction of a cell at the edges.

    >>> resize_posemb(np.array([[0.0], [2.0], [4.0], [6.0]]), 2, 3, False)[:, 0].tolist()  # 2x2 grid [[0, 2], [4, 6]]
    [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0]
    """
    posemb = np.asarray(posemb, np.float64)
    head, grid = (posemb[:1], posemb[1:]) if class_token else (posemb[:0], posemb)
    if grid.shape[0] != old_side * old_side:
        raise ValueError(f"posemb has {grid.shape[0]} grid rows, expected old_side^2 = {old_side}^2")
    grid = grid.reshape(old_side, old_side, -1)
    for axis in (0, 1):
        grid = _linear(grid, new_side, axis)
    return np.concatenate([head, grid.reshape(new_side * new_side, -1)]).astype(np.float32)


def _linear(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``x`` resampled to ``size`` points along ``axis``, corners aligned (scipy.ndimage.zoom, order 1)."""
    old = x.shape[axis]
    where = np.zeros(size) if size == 1 or old == 1 else np.arange(size) * (old - 1) / (size - 1)
    low = np.clip(np.floor(where).astype(int), 0, old - 1)
    high = np.minimum(low + 1, old - 1)
    frac = (where - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


def initialize_from(model, config: Config):
    """``model`` (built from ``config``) with the weights of ``config.init_from``'s last checkpoint, fitted to it.

    Every array of ``model`` takes the source's array at the same place in the model; the head is kept new when the
    number of classes differs and the position embedding resized when the image size does (see the module). An
    array whose shape still differs (Soft MoE's slots per expert S depend on the tokens per image) is an error
    naming it.
    """
    source_cfg = check_source(config)
    prefix = _vmoe_prefix(Path(config.init_from))
    if prefix is not None:  # a vmoe checkpoint: its arrays in a model of the source's config, in memory
        source = to_model(_read_vmoe(prefix)[1], source_cfg)
        _vmoe_arrays.cache_clear()
    else:
        try:
            source, _ = load_model(config.init_from)
        except FileNotFoundError as err:
            raise ValueError(f"--init-from {config.init_from}: {err}") from None
    theirs, ours = source_cfg.model, config.model
    new_head = theirs.num_classes != ours.num_classes
    by_path = {jax.tree_util.keystr(path): leaf for path, leaf in _arrays_with_path(source)}
    arrays, static = eqx.partition(model, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    filled = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if name in (".head_w", ".head_b") and new_head:
            filled.append(leaf)
            continue
        value = by_path.get(name)
        if value is None:
            raise ValueError(f"--init-from {config.init_from}: the source has no array {name}")
        if name == ".pos_embed" and theirs.image_size != ours.image_size:
            side = theirs.image_size // theirs.patch_size
            value = resize_posemb(value, side, ours.image_size // ours.patch_size, ours.pool == "cls")
        if tuple(value.shape) != tuple(leaf.shape):
            raise ValueError(
                f"--init-from {config.init_from}: array {name} has shape {tuple(value.shape)} there and "
                f"{tuple(leaf.shape)} here"
                + (" (Soft MoE's slots per expert follow the tokens per image)" if "router_weight" in name else "")
            )
        filled.append(jnp.asarray(value, leaf.dtype))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, filled), static)


def _arrays_with_path(model):
    return jax.tree_util.tree_flatten_with_path(eqx.filter(model, eqx.is_array))[0]
