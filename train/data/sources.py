"""Data sources: random access to one split's examples by index, without holding the split in RAM.

What it is for: the loader (``train.data.loader``) asks a source for example ``i`` and gets ``(record, label)``;
it never needs more. Three kinds, one interface (``len``, ``labels``, ``read(i)``, ``describe(i)``, ``key(i)``):

- ``InMemorySource``: arrays already decoded and normalized (digits, synthetic, parts, cifar10, ``from_arrays``);
  records are float32 (H, W, ch) images and need no preprocessing. The fast choice for small sets.
- ``ImageFolderSource``: the files of an image folder; records are the encoded bytes, decoded by the ops.
- ``ArrayRecordSource``: shards written by ``python -m train.prepare``; records are encoded bytes and a label,
  checked against the manifest (count and SHA-256 per shard) before anything is read.

``read_image_folder`` scans an image folder, ``read_manifest`` a shard directory; both stop with a ValueError
naming the path and what was expected before any training work. Sources are picklable (grain's worker processes
get a copy).

What it may import: numpy, Pillow, array_record (for shards) and the standard library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import Sequence

import numpy as np

from .arrays import stratified_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Choice: a train/test layout is recognized by these sub-folder names (the first present is the test split).
TRAIN_DIR = "train"
TEST_DIRS = ("test", "val", "validation")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vision-moe-routers/arrayrecord-v1"
# Choice: a record is a 4-byte little-endian label followed by the encoded image bytes, as they were in the file
# (no re-encoding: no loss, and the shards are no larger than the folder).
_LABEL = struct.Struct("<I")


def encode_record(label: int, data: bytes) -> bytes:
    return _LABEL.pack(label) + data


def decode_record(record: bytes) -> tuple[bytes, int]:
    return record[_LABEL.size :], _LABEL.unpack_from(record)[0]


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


# ---------------------------------------------------------------------------------------------------- in memory


@dataclasses.dataclass(frozen=True, eq=False)
class InMemorySource:
    """Decoded float32 images (B, H, W, ch) and int32 labels (B,), e.g. one split of a ``Dataset``."""

    images: np.ndarray
    labels: np.ndarray
    name: str = "arrays"

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int):
        return self.images[index], int(self.labels[index])

    def read_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Many examples at once: one fancy index (the fast path of the loader for data that needs no ops)."""
        return self.images[indices], self.labels[indices]

    def describe(self, index: int) -> str:
        return f"{self.name} example {index}"

    def key(self, index: int) -> bytes:
        """A hash of the image's bytes: what evaluation sorts by (``train.evaluators.evaluation_order``)."""
        return _digest(np.ascontiguousarray(self.images[index]).tobytes())


# ------------------------------------------------------------------------------------------------- image folder


def _class_folders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: str) -> list[str]:
    return sorted(
        e.path for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )  # fmt: skip


def _scan_classes(path: str, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """(class names, files, labels) of a folder of class folders; ValueError for a missing or empty folder."""
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path} does not exist (expected a directory of class sub-folders)")
    found = _class_folders(path)
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise ValueError(f"image folder {path}: expected one sub-folder per class (at least 2), found "
                             f"{len(classes)}")  # fmt: skip
    elif sorted(found) != sorted(classes):
        raise ValueError(f"image folder {path}: class folders {found} differ from the train split's {list(classes)}")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        members = _image_files(folder)
        if not members:
            raise ValueError(f"class folder {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        files += members
        labels += [label] * len(members)
    return tuple(classes), files, np.array(labels, np.int32)


def check_image_file(file: str, *, decode: bool = False) -> None:
    """Stop with a ValueError naming ``file`` unless Pillow recognizes it as an image and its structure checks out;
    with ``decode``, unless its pixels decode in full.

    Choice: without ``decode``, reading the header and ``verify()`` (PNG chunk CRCs, a GIF's frames...) without
    decoding the pixels: cheap enough for a million training files before training starts. A JPEG whose data is
    cut short passes it; ``decode`` finds it (``read_image_folder`` decodes the test split that way, the training
    split is decoded when it is read; ``python -m train.prepare`` decodes every image fully).
    """
    from PIL import Image

    try:
        with Image.open(file) as image:
            if decode:
                image.load()  # a truncated file raises OSError here (unless ImageFile.LOAD_TRUNCATED_IMAGES)
            else:
                image.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {file}: {type(error).__name__}: {error}") from error


def decode_all(files: Sequence[str], workers: int | None = None) -> None:
    """``check_image_file(file, decode=True)`` for every file, in a thread pool (Pillow's decoders release the
    GIL); the first unreadable file in ``files``' order is the ValueError raised."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda f: check_image_file(f, decode=True), files):
            pass


def folder_class_names(path) -> tuple[str, ...]:
    """The class names ``read_image_folder(path)`` gives, from the directory listing alone (no file is opened)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path} does not exist (expected a directory of class sub-folders)")
    split = os.path.isdir(os.path.join(path, TRAIN_DIR)) and any(
        os.path.isdir(os.path.join(path, d)) for d in TEST_DIRS
    )
    return tuple(_class_folders(os.path.join(path, TRAIN_DIR) if split else path))


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """What an image folder holds: class names and, per split, the files and their labels."""

    path: str
    class_names: tuple[str, ...]
    train_files: tuple[str, ...]
    train_labels: np.ndarray
    test_files: tuple[str, ...]
    test_labels: np.ndarray
    layout: str  # "split" (train/ and test/ or val/ sub-folders) or "stratified" (by test_fraction and seed)


def read_image_folder(path, *, test_fraction: float = 0.25, seed: int = 0, verify: bool = True,
                      decode_test: bool = False) -> ImageFolder:  # fmt: skip
    """Scan an image folder: one sub-folder per class (sorted names are labels 0, 1, ...), image files in each.

    Two layouts. If ``path`` holds ``train/`` and one of ``test/``, ``val/``, ``validation/``, each with the same
    class sub-folders, those are the splits (``test_fraction`` and ``seed`` are not used). Otherwise the classes
    are ``path``'s sub-folders and each class gives ``round(test_fraction * n)`` (at least 1, at most n - 1) of its
    files to the test split, drawn from ``seed`` (the split ``train.data.load("imagefolder")`` has always made).
    Files whose extension is not in ``IMAGE_EXTENSIONS`` and hidden entries are ignored. With ``verify`` every
    image file is checked (``check_image_file``): an unreadable file stops the scan, it is never skipped. With
    ``decode_test`` the test split's images are decoded in full as well (``decode_all``): a run evaluates the
    test split only after training, so a file that would stop its first evaluation is refused now (issue 27).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path} does not exist (expected a directory of class sub-folders)")
    test_dir = next((d for d in TEST_DIRS if os.path.isdir(os.path.join(path, d))), None)
    if os.path.isdir(os.path.join(path, TRAIN_DIR)) and test_dir is not None:
        classes, train_files, train_labels = _scan_classes(os.path.join(path, TRAIN_DIR))
        _, test_files, test_labels = _scan_classes(os.path.join(path, test_dir), classes)
        layout = "split"
    else:
        classes, files, labels = _scan_classes(path)
        train, test = stratified_split(labels, len(classes), test_fraction, seed, f"image folder {path}")
        train_files, test_files = [files[i] for i in train], [files[i] for i in test]
        train_labels, test_labels = labels[train], labels[test]
        layout = "stratified"
    if verify:
        for file in (*train_files, *test_files):
            check_image_file(file)
    if decode_test:
        # Choice: the test split, fully decoded, every time a streamed run opens it (the cost of one evaluation's
        # decoding); the training split is not (a cut training file stops the step that reads it, after the last
        # save, and names the file; decoding all of ImageNet's training files at every start would take hours).
        decode_all(test_files)
    return ImageFolder(path, classes, tuple(train_files), train_labels, tuple(test_files), test_labels, layout)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolderSource:
    """One split of an image folder: ``read(i)`` returns the bytes of file ``i`` and its label."""

    files: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> tuple[bytes, int]:
        with open(self.files[index], "rb") as f:
            return f.read(), int(self.labels[index])

    def describe(self, index: int) -> str:
        return self.files[index]

    def key(self, index: int) -> bytes:
        return _digest(self.read(index)[0])


# ------------------------------------------------------------------------------------------------ ArrayRecord


def sha256_file(file: str) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path, *, verify: bool = True) -> dict:
    """The manifest of a shard directory, checked against the files: every shard exists, holds the number of
    records the manifest says and (with ``verify``) has its recorded SHA-256; so does each split's labels file.

    Choice: the checksums are verified every time a run starts (about 2 s per GB on one core): a shard copied
    short or altered is refused before it can train anything. ValueError naming the file and the mismatch.
    """
    from array_record.python.array_record_module import ArrayRecordReader

    path = os.fspath(path)
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise ValueError(f"shard directory {path}: no {MANIFEST} (write shards with python -m train.prepare)")
    try:
        with open(file) as f:
            manifest = json.loads(f.read())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ValueError(f"{file}: format {found!r}, expected {MANIFEST_FORMAT!r}")
    _check_manifest_keys(manifest, file)
    for split, entry in manifest["splits"].items():
        total = 0
        for shard in entry["shards"]:
            shard_file = os.path.join(path, shard["file"])
            if not os.path.isfile(shard_file):
                raise ValueError(f"shard {shard_file} listed in {file} does not exist")
            if verify and sha256_file(shard_file) != shard["sha256"]:
                raise ValueError(f"shard {shard_file} does not match its SHA-256 in {file}")
            try:
                reader = ArrayRecordReader(shard_file)
                try:
                    count = reader.num_records()
                finally:
                    reader.close()
            except (RuntimeError, OSError) as error:  # array_record reports a damaged file as a RuntimeError
                raise ValueError(f"shard {shard_file} is not a readable ArrayRecord file: {error}") from error
            if count != shard["count"]:
                raise ValueError(f"shard {shard_file} holds {count} records but {file} says {shard['count']}")
            total += count
        labels_file = os.path.join(path, entry["labels"]["file"])
        if not os.path.isfile(labels_file):
            raise ValueError(f"labels file {labels_file} listed in {file} does not exist")
        if verify and sha256_file(labels_file) != entry["labels"]["sha256"]:
            raise ValueError(f"labels file {labels_file} does not match its SHA-256 in {file}")
        labels = np.load(labels_file, allow_pickle=False)
        if total != entry["count"] or len(labels) != total:
            raise ValueError(f"{file}: split {split!r} says {entry['count']} examples; its shards hold {total} and "
                             f"its labels file {len(labels)}")  # fmt: skip
        if labels.size and (labels.min() < 0 or labels.max() >= len(manifest["class_names"])):
            raise ValueError(f"{labels_file}: labels must lie in [0, {len(manifest['class_names'])})")
    return manifest


def _check_manifest_keys(manifest: dict, file: str) -> None:
    """Every key ``read_manifest`` reads is there with the right kind of value: a ValueError naming the manifest and
    the key (``splits.train.labels.sha256``) otherwise, never a KeyError or TypeError."""

    def need(parent: dict, key: str, where: str, kind: type | tuple[type, ...], what: str):
        name = f"{where}.{key}" if where else key
        if key not in parent:
            raise ValueError(f"{file}: missing key {name!r} (expected {what}); rewrite it with python -m train.prepare")
        value = parent[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{file}: {name} is {json.dumps(value)}, expected {what}; rewrite it with python -m "
                             "train.prepare")  # fmt: skip
        return value

    need(manifest, "class_names", "", list, "a list of class names")
    for split in need(manifest, "splits", "", dict, "an object of splits"):
        entry = need(manifest["splits"], split, "splits", dict, "an object with count, shards and labels")
        need(entry, "count", f"splits.{split}", int, "an integer")
        for k, shard in enumerate(need(entry, "shards", f"splits.{split}", list, "a list of shards")):
            if not isinstance(shard, dict):
                raise ValueError(f"{file}: splits.{split}.shards[{k}] is {json.dumps(shard)}, expected an object with "
                                 "file, count and sha256")  # fmt: skip
            for key, kind, what in (("file", str, "a file name"), ("count", int, "an integer"),
                                    ("sha256", str, "a hex digest")):  # fmt: skip
                need(shard, key, f"splits.{split}.shards[{k}]", kind, what)
        labels = need(entry, "labels", f"splits.{split}", dict, "an object with file and sha256")
        need(labels, "file", f"splits.{split}.labels", str, "a file name")
        need(labels, "sha256", f"splits.{split}.labels", str, "a hex digest")


@dataclasses.dataclass(eq=False)
class ArrayRecordSource:
    """One split of a shard directory (see ``read_manifest``), read by grain's ``ArrayRecordDataSource``."""

    path: str
    split: str
    files: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self):
        self._reader = None

    @classmethod
    def open(cls, path, split: str, manifest: dict) -> ArrayRecordSource:
        entry = manifest["splits"][split]
        files = tuple(os.path.join(path, shard["file"]) for shard in entry["shards"])
        labels = np.load(os.path.join(path, entry["labels"]["file"]), allow_pickle=False).astype(np.int32)
        return cls(os.fspath(path), split, files, labels)

    def __getstate__(self):  # the reader holds open files: every process opens its own
        return {k: v for k, v in self.__dict__.items() if k != "_reader"} | {"_reader": None}

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> tuple[bytes, int]:
        if self._reader is None:
            import grain

            self._reader = grain.sources.ArrayRecordDataSource(list(self.files))
        return decode_record(self._reader[int(index)])

    def describe(self, index: int) -> str:
        return f"{self.path} split {self.split!r} record {index}"

    def key(self, index: int) -> bytes:
        return _digest(self.read(index)[0])
