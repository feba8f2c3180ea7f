"""In-memory datasets: the ``Dataset`` record, ``from_arrays`` and the helpers the in-memory readers share.

What it is for: a :class:`Dataset` holds a small dataset as normalized float32 NumPy arrays (the fast choice for
sets that fit in RAM many times over); the loader (``train.data.loader``) reads it through
``train.data.sources.InMemorySource``, the same interface as the streaming sources.

What it may import: numpy and the standard library.

Dimensions: B images, H x W pixels, ch channels.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

import numpy as np

# Tags that keep this package's random streams apart: the same seed never gives correlated draws in two places.
_SPLIT_STREAM = 1
_ORDER_STREAM = 2  # no longer drawn from (the one training order is ``loader.BatchOrder``); kept reserved
SYNTHETIC_STREAM = 3
PARTS_STREAM = 4
AUGMENT_STREAM = 5
FEWSHOT_STREAM = 6

# --------------------------------------------------------------------------------------------------- Dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset, normalized, in memory.

    Images are float32 (B, H, W, ch), labels int32 (B,) in ``[0, num_classes)``. The few-shot arrays are what
    the 10-shot linear probe reads: for ``synthetic`` they hold the held-out classes (labels in
    ``[0, fewshot_num_classes)``, names in ``fewshot_class_names``); for the other datasets they are the same
    arrays as the train / test splits (not copies). ``mean`` and ``std`` (one per channel) are the normalization
    computed on ``train_images`` before normalizing; ``options`` are the resolved options the data came from.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    fewshot_train_images: np.ndarray
    fewshot_train_labels: np.ndarray
    fewshot_test_images: np.ndarray
    fewshot_test_labels: np.ndarray
    fewshot_num_classes: int
    fewshot_class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    options: Mapping[str, object] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        shape = self.train_images.shape[1:]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes={self.num_classes}")
        if len(self.fewshot_class_names) != self.fewshot_num_classes:
            raise ValueError(
                f"{len(self.fewshot_class_names)} fewshot_class_names for fewshot_num_classes="
                f"{self.fewshot_num_classes}"
            )
        for split, classes in (("train", self.num_classes), ("test", self.num_classes),
                               ("fewshot_train", self.fewshot_num_classes),
                               ("fewshot_test", self.fewshot_num_classes)):  # fmt: skip
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != np.float32 or images.ndim != 4 or images.shape[1:] != shape:
                raise ValueError(f"{split}_images: expected float32 (B, *{shape}), got {images.dtype} {images.shape}")
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(f"{split}_labels: expected int32 ({len(images)},), got {labels.dtype} {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= classes):
                raise ValueError(f"{split}_labels: values must lie in [0, {classes})")
        if len(self.mean) != shape[-1] or len(self.std) != shape[-1]:
            raise ValueError(f"mean/std: expected one value per channel ({shape[-1]})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, ch)."""
        return tuple(self.train_images.shape[1:])

    def summary(self) -> dict:
        """Sizes and classes, JSON-ready, for a run's log."""
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "num_train": len(self.train_labels),
            "num_test": len(self.test_labels),
            "num_classes": self.num_classes,
            "fewshot_num_train": len(self.fewshot_train_labels),
            "fewshot_num_test": len(self.fewshot_test_labels),
            "fewshot_num_classes": self.fewshot_num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
            "options": dict(self.options),
        }



# ------------------------------------------------------------------------------------------------- options


def int_option(key: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"option {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"option {key!r} must be >= {minimum}, got {value}")
    return int(value)


def float_option(key: str, value, low: float, high: float, *, closed_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"option {key!r} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value >= low if closed_low else value > low) and value < high):
        bracket = "[" if closed_low else "("
        raise ValueError(f"option {key!r} must lie in {bracket}{low}, {high}), got {value}")
    return value


def path_option(name: str, value) -> str:
    if value is None or value == "":
        raise ValueError(f"dataset {name!r} needs option 'path' (a local directory)")
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"option 'path' must be a path, got {value!r}")
    return os.fspath(value)


# -------------------------------------------------------------------------------------------- shared helpers


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) row-stochastic interpolation weights along one axis.

    Choice: upsampling is bilinear with half-pixel centres (edge pixels repeated); downsampling averages the
    input pixels each output pixel covers (area weights), so it does not alias. Equal sizes give the identity.
    """
    if n_out == n_in:
        return np.eye(n_in)
    weights = np.zeros((n_out, n_in))
    if n_out > n_in:
        source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        frac = source - low
        np.add.at(weights, (np.arange(n_out), low), 1 - frac)
        np.add.at(weights, (np.arange(n_out), high), frac)
    else:
        scale = n_in / n_out
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(math.floor(lo), min(math.ceil(hi), n_in)):
                weights[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    return weights


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (B, h, w, ch) images to (B, size, size, ch) float32 with ``resize_matrix`` along each axis."""
    rows = resize_matrix(images.shape[1], size).astype(np.float32)
    cols = resize_matrix(images.shape[2], size).astype(np.float32)
    if rows.shape[0] == rows.shape[1] and cols.shape[0] == cols.shape[1]:
        return images.astype(np.float32, copy=False)
    out = np.empty((len(images), size, size, images.shape[3]), np.float32)
    for lo in range(0, len(images), 4096):  # bounded temporaries on large datasets
        chunk = images[lo : lo + 4096].astype(np.float32)
        out[lo : lo + 4096] = np.einsum("ih,bhwc,jw->bijc", rows, chunk, cols, optimize=True)
    return out


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over (B, H, W), accumulated in float64 chunk by chunk."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for lo in range(0, len(images), 4096):
        pixels = images[lo : lo + 4096].reshape(-1, images.shape[-1])
        total += pixels.sum(axis=0, dtype=np.float64)
        squares += np.einsum("pc,pc->c", pixels, pixels, dtype=np.float64)
    count = images.size // images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    # Choice: a channel that is constant on the train split is only centred (std taken as 1), not divided by 0.
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, std


def normalize(train: np.ndarray, *others: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalize float32 ``train`` and ``others`` in place with the per-channel statistics of ``train``."""
    mean, std = _channel_stats(train)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    seen = set()
    for array in (train, *others):
        if id(array) in seen:  # the few-shot arrays may be the train / test arrays themselves
            continue
        seen.add(id(array))
        for lo in range(0, len(array), 4096):
            block = array[lo : lo + 4096]
            block -= mean32
            block /= std32
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def stratified_split(labels: np.ndarray, num_classes: int, test_fraction: float, seed: int, what: str):
    """Sorted (train_indices, test_indices): each class contributes ``round(test_fraction * n)`` test examples.

    Choice: the per-class test count is kept within [1, n - 1], so every class has at least one train and one
    test example; a class with fewer than 2 examples is an error. Deterministic from ``seed``.
    """
    rng = np.random.default_rng((seed, _SPLIT_STREAM))
    train, test = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise ValueError(f"{what}: class {c} has {len(members)} example(s); a train/test split needs at least 2")
        n_test = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
        members = rng.permutation(members)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(B, H, W, 1 or 3) -> (B, H, W, channels): gray is repeated; RGB becomes luma (ITU-R BT.601)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        return np.einsum("bhwc,c->bhw", images.astype(np.float32), luma)[..., None]
    raise ValueError(f"cannot convert {have} channels to {channels}")


def same_classes(name, train_images, train_labels, test_images, test_labels, class_names, options) -> Dataset:
    """Normalize and wrap a dataset whose few-shot probe uses the pre-training classes and splits."""
    mean, std = normalize(train_images, test_images)
    train_labels = train_labels.astype(np.int32)
    test_labels = test_labels.astype(np.int32)
    return Dataset(
        name=name, train_images=train_images, train_labels=train_labels, test_images=test_images,
        test_labels=test_labels, num_classes=len(class_names), class_names=tuple(class_names),
        fewshot_train_images=train_images, fewshot_train_labels=train_labels, fewshot_test_images=test_images,
        fewshot_test_labels=test_labels, fewshot_num_classes=len(class_names),
        fewshot_class_names=tuple(class_names), mean=mean, std=std, options=options,
    )  # fmt: skip


def from_arrays(
    train_images, train_labels, test_images, test_labels, *, class_names=None, name: str = "arrays"
) -> Dataset:
    """A ``Dataset`` from your own arrays: images (B, H, W, ch) of any real dtype, labels (B,) integers in
    ``[0, num_classes)``. The images are copied to float32 and normalized with the train split's per-channel
    mean and std; the few-shot probe uses the same classes and splits. ``class_names`` defaults to the label
    values as strings. Every input is checked before anything is copied.

    >>> import numpy as np
    >>> d = from_arrays(np.ones((4, 8, 8, 1)), [0, 1, 0, 1], np.zeros((2, 8, 8, 1)), [1, 0])
    >>> d.num_classes, d.train_images.dtype, d.class_names
    (2, dtype('float32'), ('0', '1'))
    """
    arrays = {}
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype,
                                                                                             np.floating)):
            raise ValueError(f"{split}_images: expected real (B, H, W, ch), got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise ValueError(f"{split}_images: no images")
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{split}_images: {int(np.sum(~np.isfinite(images)))} values are NaN or infinite")
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{split}_labels: expected integers of shape ({len(images)},), got {labels.dtype} "
                             f"{labels.shape}")  # fmt: skip
        arrays[split] = (images, labels)
    if arrays["train"][0].shape[1:] != arrays["test"][0].shape[1:]:
        raise ValueError(f"train_images are {arrays['train'][0].shape[1:]} but test_images "
                         f"{arrays['test'][0].shape[1:]}")  # fmt: skip
    num_classes = int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
    class_names = tuple(str(c) for c in range(num_classes)) if class_names is None else tuple(class_names)
    if len(class_names) < num_classes:
        raise ValueError(f"{len(class_names)} class_names for labels up to {num_classes - 1}")
    return same_classes(
        name, arrays["train"][0].astype(np.float32), arrays["train"][1], arrays["test"][0].astype(np.float32),
        arrays["test"][1], class_names, {},
    )  # fmt: skip
