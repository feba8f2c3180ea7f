"""``Splits``: what a training run reads, for any dataset: a source per split, the ops for each, class counts.

``from_dataset`` wraps an in-memory ``Dataset`` (no ops: its arrays are decoded and normalized already);
``open_streaming`` opens an image folder or a shard directory (ops from ``train.data.ops``: augmentation for
training with ``augment``, resize + central crop for evaluation). training and evaluation see only ``Splits``.

What it may import: numpy and this package.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from . import ops
from .arrays import FEWSHOT_STREAM, Dataset
from .sources import (
    MANIFEST,
    ArrayRecordSource,
    ImageFolderSource,
    InMemorySource,
    folder_class_names,
    read_image_folder,
    read_manifest,
)

STREAMING = ("imagefolder", "arrayrecord")


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
    """Sources of the four splits training and evaluation read, and how to preprocess them.

    ``train_ops`` / ``eval_ops`` are None for in-memory data. The few-shot splits are what the linear probe reads:
    ``fewshot_train`` is materialized by the probe (it is small), ``fewshot_test`` is streamed.
    """

    name: str
    train: object
    test: object
    fewshot_train: object
    fewshot_test: object
    num_classes: int
    class_names: tuple[str, ...]
    fewshot_num_classes: int
    image_shape: tuple[int, int, int]
    train_ops: ops.Preprocess | None = None
    eval_ops: ops.Preprocess | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        return {"name": self.name, "image_shape": list(self.image_shape), "num_train": len(self.train),
                "num_test": len(self.test), "num_classes": self.num_classes,
                "fewshot_num_train": len(self.fewshot_train), "fewshot_num_test": len(self.fewshot_test),
                "fewshot_num_classes": self.fewshot_num_classes, **self.info}  # fmt: skip


def from_dataset(dataset: Dataset) -> Splits:
    """An in-memory ``Dataset`` as ``Splits`` (no ops; the arrays are read as they are)."""
    return Splits(
        name=dataset.name, train=InMemorySource(dataset.train_images, dataset.train_labels, "train"),
        test=InMemorySource(dataset.test_images, dataset.test_labels, "test"),
        fewshot_train=InMemorySource(dataset.fewshot_train_images, dataset.fewshot_train_labels, "fewshot_train"),
        fewshot_test=InMemorySource(dataset.fewshot_test_images, dataset.fewshot_test_labels, "fewshot_test"),
        num_classes=dataset.num_classes, class_names=dataset.class_names,
        fewshot_num_classes=dataset.fewshot_num_classes, image_shape=dataset.image_shape,
    )  # fmt: skip


def fewshot_pool(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` examples of each class, drawn from ``seed``: the probe's pool.

    Choice: for streaming data the probe draws its shots from this subset of the train split, materialized in
    memory (``num_classes * per_class`` images: 20,000 for ImageNet at 20 per class), not from the whole split.
    """
    rng = np.random.default_rng((seed, FEWSHOT_STREAM))
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen))


@dataclasses.dataclass(frozen=True, eq=False)
class _Subset:
    source: object
    indices: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "labels", self.source.labels[self.indices])

    def __len__(self):
        return len(self.indices)

    def read(self, index):
        return self.source.read(int(self.indices[index]))

    def describe(self, index):
        return self.source.describe(int(self.indices[index]))

    def key(self, index):
        return self.source.key(int(self.indices[index]))


def open_streaming(name: str, path, *, image_size: int, channels: int, augment: bool, fewshot_per_class: int,
                   test_fraction: float = 0.25, seed: int = 0) -> Splits:  # fmt: skip
    """Open image folder or shard directory ``path`` (``name`` "imagefolder" or "arrayrecord") for streaming.

    Everything is checked here, before any training work: the folder's classes and files (each image's header and
    structure; the test split's images decoded in full), or the manifest against its shards (counts, SHA-256). The
    few-shot probe uses the same classes: a pool of ``fewshot_per_class`` train images per class (``fewshot_pool``)
    and the test split.
    """
    if name not in STREAMING:
        raise ValueError(f"unknown streaming dataset {name!r}; valid: {', '.join(STREAMING)}")
    if not path:
        raise ValueError(f"data.path must name a local directory for the {name} dataset (--set data.path=DIR)")
    if name == "imagefolder":
        folder = read_image_folder(path, test_fraction=test_fraction, seed=seed, decode_test=True)
        train = ImageFolderSource(folder.train_files, folder.train_labels)
        test = ImageFolderSource(folder.test_files, folder.test_labels)
        class_names, info = folder.class_names, {"path": str(path), "layout": folder.layout}
    else:
        manifest = read_manifest(path)
        for split in ("train", "test"):
            if split not in manifest["splits"]:
                raise ValueError(f"shard directory {path}: the manifest has no {split!r} split")
        train = ArrayRecordSource.open(path, "train", manifest)
        test = ArrayRecordSource.open(path, "test", manifest)
        class_names, info = tuple(manifest["class_names"]), {"path": str(path), "layout": manifest.get("layout")}
    pool = _Subset(train, fewshot_pool(train.labels, len(class_names), fewshot_per_class, seed))
    return Splits(
        name=name, train=train, test=test, fewshot_train=pool, fewshot_test=test, num_classes=len(class_names),
        class_names=class_names, fewshot_num_classes=len(class_names), image_shape=(image_size, image_size, channels),
        train_ops=ops.train_ops(image_size, channels, augment=augment), eval_ops=ops.eval_ops(image_size, channels),
        info=info,
    )  # fmt: skip


def streaming_class_names(name: str, path) -> tuple[str, ...]:
    """The class names ``open_streaming(name, path)`` gives, from the folder's listing or the manifest alone: no
    image or shard is read or verified (what ``train.predict`` needs of a streamed run's data)."""
    if name not in STREAMING:
        raise ValueError(f"unknown streaming dataset {name!r}; valid: {', '.join(STREAMING)}")
    if name == "imagefolder":
        return folder_class_names(path)
    file = os.path.join(os.fspath(path), MANIFEST)
    try:
        with open(file) as f:
            names = json.load(f)["class_names"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file}: cannot read its class_names ({type(error).__name__}: {error})") from None
    return tuple(names)


def test_arrays(splits: Splits, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The test split decoded into memory with the evaluation ops: (images (n, H, W, ch) float32, labels (n,)).

    With ``limit``, only the first ``limit`` examples of the evaluation order (a hash of each example's bytes,
    so the subset mixes the classes as the whole split does), returned in stored order. For tools that need
    the pixels themselves (``train.visualize``): a streamed test split can be far larger than memory.
    """
    from .loader import EvalBatches, read_examples

    n = len(splits.test)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 or None, got {limit!r}")
    indices = np.arange(n) if limit is None or limit >= n else np.sort(EvalBatches(splits.test, 1).order[:limit])
    return read_examples(splits.test, indices, splits.eval_ops, seed=0, epoch=0)
