"""Read a checkpoint of the authors' code (google-research/vmoe, its checkpoints/partitioned.py): msgpack and numpy.

A vmoe checkpoint is ``PREFIX.index`` and shards ``PREFIX.data-00000-of-0000N``, all msgpack. The index holds
``shard_count``, ``index`` (the saved tree as nested dicts, each leaf an ``IndexInfo`` extension: global shape and
dtype, the global slices of its chunks and the shard of each) and, since version "20220622", ``version``; without it
(the older layout) the index is the state dict of the saved tree. In both the shards number arrays in flatten order
(dict keys sorted), and hold under each number a list of chunks ``[subchunks, global_slice]``.

``read_arrays(prefix)`` returns the tree of numpy arrays, nested dicts; ``params_of(tree)`` the model's parameters of
a params-only file or of a training state (``{"step", "params", "opt_state", "rngs"}``; an old-layout state without
its ``opt_state``, see below).

The older layout numbers arrays in the flatten order of the saved object. For a params tree (nested dicts) that is
the sorted-key order, as in the newer layout. For a training state it is the order of vmoe's ``TrainState`` object,
which the file does not record: flax's ``TrainState`` data fields ``step, params, opt_state`` then vmoe's ``rngs``
(vmoe/train/train_state.py from the first release, fc7b61a, to the version change, 219e5bd, 2022-06-24), so arrays
0 (step), 1 .. P (params, sorted keys), then the optimizer state's, then rngs'. Choice: such a state is read only as
that numbering, and only when the file agrees with it: the top-level keys are exactly those four, the step is an
integer scalar, and every array's chunks in the shards (slices, shard, dtype) are exactly the ones the index records
for the path the numbering gives it; the optimizer state's block is checked as a whole (its arrays, as a multiset)
and not returned, since its inner order (optax's named tuples) is not recorded either. A file that fails any check is
refused. What the file cannot rule out is a writer that put the optimizer state before the params with leaves of the
params' shapes (SGD momentum): no vmoe TrainState ever did; that is what the refusal of every other key set rests on.

Every array of every layout is checked the same way: its chunks in the shards are the ones its index entry records.

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
_STATE_FIELDS = ("step", "params", "opt_state", "rngs")  # vmoe's TrainState: flax's data fields, then rngs


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


def _read_index(prefix: pathlib.Path) -> tuple[dict, int, pathlib.Path, bool]:
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
    old_state = version is None and isinstance(index, dict) and "opt_state" in index
    if old_state and set(index) != set(_STATE_FIELDS):
        raise VmoeCheckpointError(
            f"index file {str(index_path)!r}: a training state in the old layout (no version) with fields "
            f"{sorted(index)}: its arrays are numbered in the flatten order of the saved object, known only for "
            f"vmoe's TrainState {list(_STATE_FIELDS)}; re-save it with vmoe's save_checkpoint (version 20220622)")
    shard_count = content["shard_count"]
    if not isinstance(shard_count, int) or shard_count < 1:
        raise VmoeCheckpointError(f"index file {str(index_path)!r}: shard_count {shard_count!r} is not a positive int")
    return index, shard_count, index_path, old_state


def _object_order(key) -> tuple:
    """A key's place in a flattened object: a tuple's items ("0", "1", ..., "10") in numeric order, else sorted."""
    return (0, int(key), "") if isinstance(key, str) and key.isdigit() else (1, 0, str(key))


def _numbering(index: dict, old_state: bool) -> tuple[list[tuple[tuple, Any]], range]:
    """The index's leaves in the order the shards number them, and the numbers of an old-layout training state's
    optimizer state (empty otherwise)."""
    if not old_state:
        return _flatten(index), range(0)
    blocks = {field: _flatten(index[field], (field,)) for field in _STATE_FIELDS}
    blocks["opt_state"] = sorted(blocks["opt_state"], key=lambda item: [_object_order(k) for k in item[0]])
    start = len(blocks["step"]) + len(blocks["params"])
    return [leaf for field in _STATE_FIELDS for leaf in blocks[field]], range(start, start + len(blocks["opt_state"]))


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
    index, shard_count, index_path, old_state = _read_index(prefix)
    leaves, opt_block = _numbering(index, old_state)
    infos = [(p, leaf) for p, leaf in leaves if isinstance(leaf, _IndexInfo)]
    if not infos or len(infos) != len(leaves):
        raise VmoeCheckpointError(f"index file {str(index_path)!r} is not a vmoe checkpoint index (its leaves are not "
                                  "IndexInfo records)")
    if old_state:
        step = index["step"]
        if not isinstance(step, _IndexInfo) or step.shape != () or step.dtype.kind not in "iu":
            raise VmoeCheckpointError(f"index file {str(index_path)!r}: an old-layout training state whose step is "
                                      "not an integer scalar; its numbering cannot be checked")
    shards = shard_paths(prefix, shard_count)
    missing = [str(p) for p in shards if not p.exists()]
    if missing:
        raise VmoeCheckpointError(f"checkpoint {str(prefix)!r}: shard file(s) {missing} are missing "
                                  f"(the index says {shard_count} shard(s))")
    buffers = [None if n in opt_block else np.zeros(info.shape, info.dtype) for n, (_, info) in enumerate(infos)]
    filled = [None if b is None else np.zeros(b.shape, bool) for b in buffers]
    found: list[list] = [[] for _ in infos]  # per array: (global slice, shard, dtype) of each chunk in the shards
    for shard_id, shard in enumerate(shards):
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
                arrays = [np.asarray(s) for s in subchunks]
                dtypes = {a.dtype for a in arrays}
                found[number].append((tuple(map(tuple, global_slice)), shard_id, dtypes.pop() if len(dtypes) == 1
                                      else None))  # fmt: skip
                if buffers[number] is None:  # an old-layout optimizer state: checked below as a whole, not read
                    continue
                shape_ = infos[number][1].shape
                if len(global_slice) != len(shape_) or any(
                    not 0 <= start <= stop <= size for (start, stop, _), size in zip(global_slice, shape_, strict=False)
                ):
                    raise VmoeCheckpointError(
                        f"shard file {str(shard)!r}: a chunk of array {number} covers {global_slice}, outside its "
                        f"shape {shape_} in the index (the shards do not match the index)")
                region = tuple(slice(start, stop, step) for start, stop, step in global_slice)
                flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
                shape = tuple(stop - start for start, stop, _ in global_slice)
                if flat.size != int(np.prod(shape)):
                    raise VmoeCheckpointError(f"shard file {str(shard)!r}: a chunk of array {number} has {flat.size} "
                                              f"values for a slice of shape {shape}")
                buffers[number][region] = flat.reshape(shape)
                filled[number][region] = True
    _check_chunks(prefix, infos, found, opt_block)
    tree: dict = {}
    for (path_, info), array, done in zip(infos, buffers, filled, strict=True):
        if array is None:
            continue
        if not done.all():
            name = "/".join(map(str, path_))
            raise VmoeCheckpointError(f"checkpoint {str(prefix)!r}: array {name!r} {info.shape} is not complete in "
                                      "its shards (a shard is truncated or from another checkpoint)")
        _set(tree, path_, array)
    return tree


def _recorded(info: _IndexInfo) -> list:
    """The chunks an index entry records: (global slice, shard, dtype), sorted."""
    return sorted(((tuple(map(tuple, s)), shard, info.dtype) for s, shard in zip(info.slices, info.shards,
                                                                                 strict=True)), key=repr)  # fmt: skip


def _check_chunks(prefix: pathlib.Path, infos: list, found: list, opt_block: range) -> None:
    """Every array's chunks in the shards are exactly those its index entry records (slices, shard, dtype); an
    old-layout optimizer state's arrays, as a multiset. Raises ``VmoeCheckpointError`` naming the array."""
    for number, (path_, info) in enumerate(infos):
        if number in opt_block:
            continue
        if sorted(found[number], key=repr) != _recorded(info):
            name = "/".join(map(str, path_))
            raise VmoeCheckpointError(
                f"checkpoint {str(prefix)!r}: array {number} in the shards is not what the index records for "
                f"{name!r} {info.shape} {info.dtype} (chunks, shards or dtype differ: a shard is truncated or from "
                "another checkpoint, or the arrays are not numbered as this layout says)")
    recorded = sorted(repr(_recorded(infos[n][1])) for n in opt_block)
    if sorted(repr(sorted(found[n], key=repr)) for n in opt_block) != recorded:
        raise VmoeCheckpointError(
            f"checkpoint {str(prefix)!r}: arrays {opt_block.start}..{opt_block.stop - 1} in the shards are not the "
            "optimizer state the index records (the old layout's numbering step, params, opt_state, rngs does not "
            "fit this file)")


def params_of(tree: dict) -> dict:
    """The model parameters: the tree itself for a params-only file, its ``params`` for a training state."""
    if "params" in tree and isinstance(tree["params"], dict) and ("opt_state" in tree or "step" in tree):
        return tree["params"]
    return tree
