"""Read a checkpoint of the authors' code (google-research/vmoe, its checkpoints/partitioned.py): msgpack and numpy.

A vmoe checkpoint is ``PREFIX.index`` and shards ``PREFIX.data-00000-of-0000N``, all msgpack. The index holds
``shard_count``, ``index`` (the saved tree as nested dicts, each leaf an ``IndexInfo`` extension: global shape and
dtype, the global slices of its chunks and the shard of each) and, since version "20220622", ``version``; without it
(the older layout) the index is the state dict of the saved tree. In both the shards number arrays in flatten order
(dict keys sorted), and hold under each number a list of chunks ``[subchunks, global_slice]``.

``read_arrays(prefix)`` returns the tree of numpy arrays, nested dicts; ``params_of(tree)`` the model's parameters of
a params-only file or of a training state (``{"step", "params", "opt_state", "rngs"}``).

Choice: the older layout is read as the newer one: arrays numbered in the sorted-key flatten order of the index's
nested dicts, which is the saved tree's order for a params tree and for vmoe's training state dict.

Imports nothing of ``train`` (ground floor).
"""

from __future__ import annotations

import pathlib
from typing import Any

import msgpack
import numpy as np

__all__ = ["VmoeCheckpointError", "params_of", "read_arrays", "resolve_prefix", "shard_paths"]

# vmoe/checkpoints/serialization.py's msgpack extension codes
_NDARRAY, _COMPLEX, _NPSCALAR, _SHAPED_ARRAY, _SLICE, _SLICE_ND, _SLICE_ND_ARRAY, _INDEX_INFO = range(1, 9)
_CHUNKS_KEY = "__msgpack_array_chunk_a87ca2__"
_SUPPORTED_VERSIONS = ("20220622",)


class VmoeCheckpointError(ValueError):
    """The file is not a readable vmoe checkpoint (the message names the file)."""


def _dtype(name: bytes | str) -> np.dtype:
    name = name.decode() if isinstance(name, bytes) else name
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _ndarray(data: bytes) -> np.ndarray:
    shape, dtype, buffer = msgpack.unpackb(data, raw=True)
    return np.frombuffer(buffer, dtype=_dtype(dtype)).reshape(shape)


def _slice(data: bytes) -> tuple:
    return tuple(msgpack.unpackb(data, raw=True))


def _slice_nd(data: bytes) -> tuple:
    return tuple(_slice(s) for s in msgpack.unpackb(data, raw=True))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _NDARRAY:
        return _ndarray(data)
    if code == _NPSCALAR:
        return _ndarray(data)[()]
    if code == _COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    if code == _SHAPED_ARRAY:
        shape, dtype, _weak, _ = msgpack.unpackb(data, raw=True)
        return {"shape": tuple(shape), "dtype": _dtype(dtype)}
    if code == _SLICE:
        return _slice(data)
    if code == _SLICE_ND:
        return _slice_nd(data)
    if code == _INDEX_INFO:
        shaped, slices, shards = msgpack.unpackb(data, raw=True)
        shape, dtype, _weak, _ = msgpack.unpackb(shaped, raw=True)
        return _IndexInfo(tuple(shape), _dtype(dtype), tuple(_slice_nd(s) for s in slices), tuple(shards))
    return msgpack.ExtType(code, data)


class _IndexInfo:
    __slots__ = ("dtype", "shape", "shards", "slices")

    def __init__(self, shape, dtype, slices, shards):
        self.shape, self.dtype, self.slices, self.shards = shape, dtype, slices, shards


def _unpack(path: pathlib.Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VmoeCheckpointError(f"{what} {str(path)!r} is missing") from None
    except IsADirectoryError:
        raise VmoeCheckpointError(f"{what} {str(path)!r} is a directory, expected a vmoe checkpoint file") from None
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as error:
        if isinstance(error, ValueError) and "incomplete" in str(error).lower():
            raise VmoeCheckpointError(f"{what} {str(path)!r} is truncated ({len(data)} bytes): {error}") from None
        raise VmoeCheckpointError(f"{what} {str(path)!r} is not a vmoe checkpoint file (msgpack: {error})") from None


def resolve_prefix(path: str | pathlib.Path) -> pathlib.Path:
    """The checkpoint's prefix from ``PREFIX``, ``PREFIX.index`` or one of its shards."""
    path = pathlib.Path(path)
    name = path.name
    if name.endswith(".index"):
        return path.with_name(name[: -len(".index")])
    if ".data-" in name:
        return path.with_name(name[: name.index(".data-")])
    return path


def shard_paths(prefix: pathlib.Path, shard_count: int) -> list[pathlib.Path]:
    return [prefix.with_name(f"{prefix.name}.data-{i:05d}-of-{shard_count:05d}") for i in range(shard_count)]


def _read_index(prefix: pathlib.Path) -> tuple[dict, int, pathlib.Path]:
    index_path = prefix.with_name(prefix.name + ".index")
    if not index_path.exists():
        raise VmoeCheckpointError(
            f"checkpoint {str(prefix)!r}: no index file {str(index_path)!r} (expected a vmoe checkpoint: PREFIX.index "
            "and PREFIX.data-NNNNN-of-NNNNN)")
    content = _unpack(index_path, "index file")
    if not isinstance(content, dict) or "index" not in content or "shard_count" not in content:
        raise VmoeCheckpointError(
            f"index file {str(index_path)!r} is not a vmoe checkpoint index (expected a map with 'index' and "
            f"'shard_count', got {type(content).__name__}"
            f"{' with keys ' + str(sorted(map(str, content))) if isinstance(content, dict) else ''})")
    version = content.get("version")
    if version is not None and version not in _SUPPORTED_VERSIONS:
        raise VmoeCheckpointError(
            f"index file {str(index_path)!r}: version {version!r} is not one this reader knows "
            f"(expected none or one of {_SUPPORTED_VERSIONS})")
    index = content["index"]
    if version is None and isinstance(index, dict) and "opt_state" in index:
        # Choice: refused, not guessed. The old writer numbered arrays in the flatten order of the saved object
        # (a TrainState dataclass: step, params, opt_state, rngs), not in the sorted order of its state dict, and
        # the optimizer's moments have the params' shapes: a wrong guess would load moments as weights unnoticed.
        raise VmoeCheckpointError(
            f"index file {str(index_path)!r}: a training state in the old layout (no version): its arrays are "
            "numbered in the flatten order of vmoe's TrainState object, which the file does not record; convert a "
            "params-only checkpoint, or re-save the state with vmoe's current save_checkpoint (version 20220622)")
    shard_count = content["shard_count"]
    if not isinstance(shard_count, int) or shard_count < 1:
        raise VmoeCheckpointError(f"index file {str(index_path)!r}: shard_count {shard_count!r} is not a positive int")
    return index, shard_count, index_path


def _flatten(tree: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(tree, dict):
        out = []
        for key in sorted(tree):  # jax flattens a dict in sorted-key order
            out += _flatten(tree[key], (*path, key))
        return out
    if isinstance(tree, list | tuple):
        out = []
        for i, item in enumerate(tree):
            out += _flatten(item, (*path, i))
        return out
    return [(path, tree)]


def _set(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def read_arrays(path: str | pathlib.Path) -> dict:
    """The arrays of the vmoe checkpoint at ``path`` (its prefix, its .index or a shard), as nested dicts of numpy
    arrays. Raises ``VmoeCheckpointError`` naming the file when the index or a shard is missing, truncated or not a
    vmoe checkpoint, or when a shard does not hold the chunks the index says."""
    prefix = resolve_prefix(path)
    index, shard_count, index_path = _read_index(prefix)
    leaves = _flatten(index)
    infos = [(p, leaf) for p, leaf in leaves if isinstance(leaf, _IndexInfo)]
    if not infos or len(infos) != len(leaves):
        raise VmoeCheckpointError(f"index file {str(index_path)!r} is not a vmoe checkpoint index (its leaves are not "
                                  "IndexInfo records)")
    shards = shard_paths(prefix, shard_count)
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise VmoeCheckpointError(f"checkpoint {str(prefix)!r}: shard file(s) {missing} are missing "
                                  f"(the index says {shard_count} shard(s))")
    buffers = [np.zeros(info.shape, info.dtype) for _, info in infos]
    filled = [np.zeros(info.shape, bool) for _, info in infos]
    for shard in shards:
        content = _unpack(shard, "shard file")
        if not isinstance(content, dict) or _CHUNKS_KEY not in content:
            raise VmoeCheckpointError(f"shard file {str(shard)!r} is not a vmoe checkpoint shard (no array chunks)")
        for key, chunks in content.items():
            if key == _CHUNKS_KEY:
                continue
            number = int(key)
            if not 0 <= number < len(infos):
                raise VmoeCheckpointError(f"shard file {str(shard)!r} holds array {number}; the index has "
                                          f"{len(infos)} arrays")
            for subchunks, global_slice in chunks:
                shape_ = infos[number][1].shape
                if len(global_slice) != len(shape_) or any(
                    not 0 <= start <= stop <= size for (start, stop, _), size in zip(global_slice, shape_, strict=False)
                ):
                    raise VmoeCheckpointError(
                        f"shard file {str(shard)!r}: a chunk of array {number} covers {global_slice}, outside its "
                        f"shape {shape_} in the index (the shards do not match the index)")
                region = tuple(slice(start, stop, step) for start, stop, step in global_slice)
                flat = np.concatenate([np.asarray(s).reshape(-1) for s in subchunks]) if subchunks else np.zeros(0)
                shape = tuple(stop - start for start, stop, _ in global_slice)
                if flat.size != int(np.prod(shape)):
                    raise VmoeCheckpointError(f"shard file {str(shard)!r}: a chunk of array {number} has {flat.size} "
                                              f"values for a slice of shape {shape}")
                buffers[number][region] = flat.reshape(shape)
                filled[number][region] = True
    tree: dict = {}
    for (path_, info), array, done in zip(infos, buffers, filled, strict=True):
        if not done.all():
            name = "/".join(map(str, path_))
            raise VmoeCheckpointError(f"checkpoint {str(prefix)!r}: array {name!r} {info.shape} is not complete in "
                                      "its shards (a shard is truncated or from another checkpoint)")
        _set(tree, path_, array)
    return tree


def params_of(tree: dict) -> dict:
    """The model parameters: the tree itself for a params-only file, its ``params`` for a training state."""
    if "params" in tree and isinstance(tree["params"], dict) and ("opt_state" in tree or "step" in tree):
        return tree["params"]
    return tree
