"""Datasets for pre-training and the few-shot probe, held in memory as NumPy arrays.

What it is for: ``load(name, **options)`` returns a :class:`Dataset` of normalized float32 images (B, H, W, ch)
and int32 labels, with a train split, a test split and the data the 10-shot linear probe uses
(``train.fewshot_probe``); ``batches`` / ``batch_at`` give shuffled full batches as a pure function of
(seed, epoch), so a resumed run sees exactly the batches the interrupted one would have seen.

What it may import: numpy and the standard library; scikit-learn (``digits``) and Pillow (``imagefolder``) are
imported inside the loaders that need them. Nothing here downloads anything: ``digits`` ships inside the
scikit-learn wheel, ``synthetic`` is generated, ``cifar10`` and ``imagefolder`` read a local directory.

The datasets (``DATASETS``), their options (``OPTIONS``, with defaults) and what each looks like:

- ``digits``: scikit-learn's 1797 8x8 grayscale digits, 10 classes, upscaled to ``image_size`` (default 16);
  a stratified split, ``test_fraction`` 0.25 (1347 train, 450 test). Few-shot: the same classes, the probe's
  training pool is the train split and its test set the test split.
- ``synthetic``: ``num_classes`` (100) procedural classes of ``image_size`` x ``image_size`` x ``channels``
  images (16x16x1): each class is a fixed mixture of three Gabor patches and blobs, each image a jittered,
  re-phased, noisy copy with one random distractor patch. ``heldout_classes`` (20) classes are never seen in
  pre-training; the few-shot probe uses them (as the paper pre-trains on JFT and probes on ImageNet).
  ``images_per_class`` (100) train and ``test_per_class`` (20) test images per class.
- ``parts``: classes composed of parts, the router study's task (``_load_parts``): ``num_classes`` (150)
  classes of ``image_size`` (32) square images on a 4 x 4 grid of cells; a class is one part from each of four
  families of ``PARTS_VARIANTS`` (16) part templates, placed at random cells of each image, inverted 30% of the
  time, with two parts of a fifth, distractor family, a one-pixel shift and pixel noise (``noise``, std 0.25).
  ``heldout_classes`` (50) new combinations of the same parts are kept for the probe (``fewshot_pool_per_class``
  (20) images per class to draw shots from, ``test_per_class`` (100) test images); the others pre-train
  (``images_per_class`` (500) train and ``test_per_class`` test images): 50,000 train, 10,000 test, probe
  1,000 + 5,000. Pixel baselines are at chance level: a model has to recognize parts wherever they are.
- ``cifar10``: a local CIFAR-10 "python version" directory (``path``); 50000 train, 10000 test, 10 classes.
  Few-shot: the same classes (train split / test split).
- ``imagefolder``: ``path`` holds one sub-folder per class of image files; a stratified split by
  ``test_fraction``. Few-shot: the same classes (train split / test split).

Normalization: every image is ``(x - mean) / std`` with a per-channel mean and standard deviation computed on
the pre-training train split only and stored on the Dataset (``mean``, ``std``); the test split and the few-shot
data go through the same transform.

Dimensions: B images, H x W pixels, ch channels.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from collections.abc import Iterator, Mapping

import numpy as np

__all__ = ["DATASETS", "OPTIONS", "Dataset", "batch_at", "batches", "epoch_order", "load", "num_batches"]

DATASETS = ("digits", "synthetic", "parts", "cifar10", "imagefolder")

# Every option of every dataset with its default (None: required). ``load`` rejects any other name.
OPTIONS: dict[str, dict[str, object]] = {
    "digits": {"image_size": 16, "channels": 1, "test_fraction": 0.25, "seed": 0},
    "synthetic": {
        "num_classes": 100,
        "heldout_classes": 20,
        "images_per_class": 100,
        "test_per_class": 20,
        "image_size": 16,
        "channels": 1,
        "noise": 0.3,
        "seed": 0,
    },
    "parts": {
        "num_classes": 150,
        "heldout_classes": 50,
        "images_per_class": 500,
        "test_per_class": 100,
        "fewshot_pool_per_class": 20,
        "image_size": 32,
        "channels": 1,
        # Choice: pixel noise of std 0.25. At 0.5 (with parts inverted 30% of the time) training sat at chance
        # for a number of steps that depended on the seed (300 to over 1,500 steps): 2 of 5 study seeds stalled
        # for every router, and seed-to-seed spread hid every contrast (the study committed before 2026-12-03).
        # At 0.25 the dense control of all five seeds leaves chance within 450 steps (7 to 52% test accuracy).
        "noise": 0.25,
        "seed": 0,
    },
    "cifar10": {"path": None, "image_size": 32, "channels": 3},
    "imagefolder": {"path": None, "image_size": 32, "channels": 3, "test_fraction": 0.25, "seed": 0},
}

# Tags that keep this module's random streams apart: the same seed never gives correlated draws in two places.
_SPLIT_STREAM = 1
_ORDER_STREAM = 2
_SYNTHETIC_STREAM = 3
_PARTS_STREAM = 4

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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


# ------------------------------------------------------------------------------------------------------ load


def load(name: str, **options) -> Dataset:
    """Load dataset ``name`` with ``options`` (see ``OPTIONS`` for each dataset's names and defaults).

    Deterministic: the same name and options give the same arrays. An unknown name or option, or an option of
    the wrong type or range, is a ValueError raised before any data is read.

    >>> data = load("digits", image_size=8)
    >>> data.train_images.shape, data.test_images.shape, data.num_classes
    ((1347, 8, 8, 1), (450, 8, 8, 1), 10)
    """
    if name not in OPTIONS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    valid = OPTIONS[name]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {name!r}; "
                         f"valid options: {', '.join(valid)}")  # fmt: skip
    resolved = {**valid, **options}
    if "path" in resolved:
        resolved["path"] = _path_option(name, resolved["path"])
    for key in ("image_size", "channels", "seed", "num_classes", "heldout_classes", "images_per_class",
                "test_per_class", "fewshot_pool_per_class"):  # fmt: skip
        if key in resolved:
            resolved[key] = _int_option(key, resolved[key], minimum=0 if key in ("seed", "heldout_classes") else 1)
    if "channels" in resolved and name not in ("synthetic", "parts") and resolved["channels"] not in (1, 3):
        raise ValueError(f"option 'channels' must be 1 or 3 for {name!r}, got {resolved['channels']}")
    if "test_fraction" in resolved:
        resolved["test_fraction"] = _float_option("test_fraction", resolved["test_fraction"], 0.0, 1.0)
    if "noise" in resolved:
        resolved["noise"] = _float_option("noise", resolved["noise"], 0.0, math.inf, closed_low=True)
    return _LOADERS[name](**resolved)


def _int_option(key: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"option {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"option {key!r} must be >= {minimum}, got {value}")
    return int(value)


def _float_option(key: str, value, low: float, high: float, *, closed_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"option {key!r} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value >= low if closed_low else value > low) and value < high):
        bracket = "[" if closed_low else "("
        raise ValueError(f"option {key!r} must lie in {bracket}{low}, {high}), got {value}")
    return value


def _path_option(name: str, value) -> str:
    if value is None or value == "":
        raise ValueError(f"dataset {name!r} needs option 'path' (a local directory)")
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"option 'path' must be a path, got {value!r}")
    return os.fspath(value)


# ------------------------------------------------------------------------------------------------- batching


def num_batches(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch: ``num_examples // batch_size`` (the remainder is dropped)."""
    if batch_size < 1 or batch_size > num_examples:
        raise ValueError(f"batch_size must lie in [1, {num_examples}] (the number of examples), got {batch_size}")
    return num_examples // batch_size


def epoch_order(num_examples: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example indices of every full batch of one epoch, (num_batches, batch_size) int64.

    A permutation drawn from ``np.random.default_rng((seed, epoch, tag))``: a pure function of
    (num_examples, batch_size, seed, epoch), so any batch of any epoch can be recomputed at any time. The last
    ``num_examples % batch_size`` indices of the permutation are dropped (a different subset each epoch), so each
    example appears at most once per epoch.

    >>> epoch_order(5, 2, seed=0, epoch=0).shape
    (2, 2)
    """
    for key, value in (("seed", seed), ("epoch", epoch)):
        _int_option(key, value, minimum=0)
    count = num_batches(num_examples, batch_size)
    order = np.random.default_rng((int(seed), int(epoch), _ORDER_STREAM)).permutation(num_examples)
    return order[: count * batch_size].reshape(count, batch_size)


def batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int, epoch: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the shuffled full batches ``(images[idx], labels[idx])`` of one epoch, from batch ``start`` on.

    Resuming: global step ``s`` (0-based, one batch per step) is batch ``i`` of epoch ``e`` where
    ``e, i = divmod(s, num_batches(len(labels), batch_size))``; a run restarted at step ``s`` calls
    ``batches(..., seed=seed, epoch=e, start=i)`` (or ``batch_at(..., step=s)``) and sees exactly the batches the
    interrupted run would have seen, because the order depends on nothing but (seed, epoch).
    """
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    order = epoch_order(len(labels), batch_size, seed=seed, epoch=epoch)
    if isinstance(start, bool) or not isinstance(start, int | np.integer) or not 0 <= start <= len(order):
        raise ValueError(f"start must be an integer in [0, {len(order)}], got {start!r}")
    for index in order[start:]:
        yield images[index], labels[index]


def batch_at(
    images: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """The batch of global step ``step`` (0-based): batch ``step % n`` of epoch ``step // n``, n full batches."""
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
    step = _int_option("step", step, minimum=0)
    epoch, index = divmod(step, num_batches(len(labels), batch_size))
    batch = epoch_order(len(labels), batch_size, seed=seed, epoch=epoch)[index]
    return images[batch], labels[batch]


# -------------------------------------------------------------------------------------------- shared helpers


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
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


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (B, h, w, ch) images to (B, size, size, ch) float32 with ``_resize_matrix`` along each axis."""
    rows = _resize_matrix(images.shape[1], size).astype(np.float32)
    cols = _resize_matrix(images.shape[2], size).astype(np.float32)
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


def _normalize(train: np.ndarray, *others: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _stratified_split(labels: np.ndarray, num_classes: int, test_fraction: float, seed: int, what: str):
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


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
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


def _same_classes(name, train_images, train_labels, test_images, test_labels, class_names, options) -> Dataset:
    """Normalize and wrap a dataset whose few-shot probe uses the pre-training classes and splits."""
    mean, std = _normalize(train_images, test_images)
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
    return _same_classes(
        name, arrays["train"][0].astype(np.float32), arrays["train"][1], arrays["test"][0].astype(np.float32),
        arrays["test"][1], class_names, {},
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- digits


def _load_digits(*, image_size: int, channels: int, test_fraction: float, seed: int) -> Dataset:
    """scikit-learn's digits (1797 8x8 images, pixel values 0..16), resized with ``_resize`` (bilinear up)."""
    from sklearn.datasets import load_digits  # ships in the wheel: never downloads

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]
    labels = bunch.target.astype(np.int32)
    train, test = _stratified_split(labels, 10, test_fraction, seed, "digits")
    train_images = _to_channels(_resize(images[train], image_size), channels).copy()
    test_images = _to_channels(_resize(images[test], image_size), channels).copy()
    options = {"image_size": image_size, "channels": channels, "test_fraction": test_fraction, "seed": seed}
    names = tuple(str(c) for c in range(10))
    return _same_classes("digits", train_images, labels[train], test_images, labels[test], names, options)


# ------------------------------------------------------------------------------------------------ synthetic

_COMPONENTS = 3  # patches per class prototype
# Per-image variation of a class prototype (relative units: fractions of the image width, radians).
_JITTER = {"shift": 0.12, "position": 0.02, "phase": 0.8, "theta": 0.08, "amplitude": 0.3, "width": 0.15}


def _synthetic_prototype(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    """A class: ``_COMPONENTS`` Gabor patches (a third of them, on average, blobs) in relative coordinates."""
    m = _COMPONENTS
    is_grating = rng.random(m) > 1 / 3
    proto = {
        "cx": rng.uniform(0.2, 0.8, m),
        "cy": rng.uniform(0.2, 0.8, m),
        "sigma": rng.uniform(0.10, 0.22, m),
        "freq": np.where(is_grating, rng.uniform(1.5, 4.0, m), 0.0),  # cycles per image width
        "theta": rng.uniform(0.0, np.pi, m),
        "phase": np.where(is_grating, rng.uniform(0.0, 2 * np.pi, m), 0.0),
        "amp": rng.choice([-1.0, 1.0], m) * rng.uniform(0.6, 1.0, m),
    }
    color = rng.uniform(0.2, 1.0, (m, channels))  # drawn last: other parameters do not depend on channels
    proto["color"] = color / np.linalg.norm(color, axis=1, keepdims=True) * math.sqrt(channels)
    return proto


def _synthetic_images(
    proto: dict[str, np.ndarray], count: int, size: int, channels: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``count`` (size, size, channels) images of one class: the prototype jittered, plus a distractor and noise.

    Per image (``_JITTER``): the whole pattern shifts by up to 12% of the width; each patch moves by about 2%,
    changes phase by about 0.8 rad, orientation by about 0.08 rad, amplitude by +-30% and width by +-15%; one
    random patch (amplitude 0.3-0.7) is added; contrast varies +-20% and brightness by 0.1; Gaussian pixel noise
    of std ``noise``. With the defaults, pixel baselines on the 80 pre-training classes reach about 68%
    (nearest class mean) and 77% (1-nearest neighbour); the 10-shot probe on raw pixels of the 20 held-out
    classes about 69%: learnable, far from trivial, and room for learned features to do better.
    """
    m = _COMPONENTS
    j = _JITTER
    shift = rng.uniform(-j["shift"], j["shift"], (count, 2, 1))
    cx = proto["cx"] + shift[:, 0] + rng.normal(0, j["position"], (count, m))
    cy = proto["cy"] + shift[:, 1] + rng.normal(0, j["position"], (count, m))
    grating = proto["freq"] > 0
    phase = proto["phase"] + grating * rng.normal(0, j["phase"], (count, m))
    theta = proto["theta"] + rng.normal(0, j["theta"], (count, m))
    amp = proto["amp"] * rng.uniform(1 - j["amplitude"], 1 + j["amplitude"], (count, m))
    sigma = proto["sigma"] * rng.uniform(1 - j["width"], 1 + j["width"], (count, m))
    freq = np.broadcast_to(proto["freq"], (count, m))
    color = np.broadcast_to(proto["color"], (count, m, channels))
    # The distractor: a patch with parameters of its own, a different one in every image.
    d_grating = rng.random(count) > 1 / 3
    d_color = rng.uniform(0.2, 1.0, (count, 1, channels))
    d_color *= math.sqrt(channels) / np.linalg.norm(d_color, axis=2, keepdims=True)
    cx = np.concatenate([cx, rng.uniform(0.15, 0.85, (count, 1))], axis=1)
    cy = np.concatenate([cy, rng.uniform(0.15, 0.85, (count, 1))], axis=1)
    sigma = np.concatenate([sigma, rng.uniform(0.08, 0.2, (count, 1))], axis=1)
    freq = np.concatenate([freq, np.where(d_grating, rng.uniform(1.5, 4.0, count), 0.0)[:, None]], axis=1)
    theta = np.concatenate([theta, rng.uniform(0, np.pi, (count, 1))], axis=1)
    phase = np.concatenate([phase, np.where(d_grating, rng.uniform(0, 2 * np.pi, count), 0.0)[:, None]], axis=1)
    d_amp = rng.choice([-1.0, 1.0], count) * rng.uniform(0.3, 0.7, count)
    amp = np.concatenate([amp, d_amp[:, None]], axis=1)
    color = np.concatenate([color, d_color], axis=1)

    # A patch is amp * envelope * cos(kx x + ky y + phase), with a separable Gaussian envelope; writing the cosine
    # as cos(kx x + phase) cos(ky y) - sin(kx x + phase) sin(ky y) makes every patch a sum of two outer products
    # of a column (H,) and a row (W,) profile: O(H + W) exponentials and cosines per patch instead of O(H W).
    grid = (np.arange(size) + 0.5) / size  # pixel centres in [0, 1]
    q = {k: v[:, :, None] for k, v in dict(cx=cx, cy=cy, sigma=sigma, phase=phase).items()}
    kx = (2 * np.pi * freq * np.cos(theta))[:, :, None]
    ky = (2 * np.pi * freq * np.sin(theta))[:, :, None]
    row = np.exp(-((grid - q["cx"]) ** 2) / (2 * q["sigma"] ** 2))  # (count, m + 1, W)
    column = np.exp(-((grid - q["cy"]) ** 2) / (2 * q["sigma"] ** 2))  # (count, m + 1, H)
    weight = amp[:, :, None] * color  # (count, m + 1, channels)
    images = np.einsum("nmh,nmw,nmc->nhwc", column * np.cos(ky * grid), row * np.cos(kx * grid + q["phase"]),
                       weight, optimize=True)  # fmt: skip
    images -= np.einsum("nmh,nmw,nmc->nhwc", column * np.sin(ky * grid), row * np.sin(kx * grid + q["phase"]),
                        weight, optimize=True)  # fmt: skip
    images *= rng.uniform(0.8, 1.2, (count, 1, 1, 1))
    images += rng.normal(0, 0.1, (count, 1, 1, 1)) + rng.normal(0, noise, images.shape)
    return images.astype(np.float32)


def _load_synthetic(
    *,
    num_classes: int,
    heldout_classes: int,
    images_per_class: int,
    test_per_class: int,
    image_size: int,
    channels: int,
    noise: float,
    seed: int,
) -> Dataset:
    """Procedural classes; the last ``heldout_classes`` (by index) are kept for the few-shot probe.

    Class ``c`` depends only on (seed, c): its prototype, train images and test images come from three
    independent streams ``default_rng((seed, c, k, tag))``, so changing ``num_classes``, ``images_per_class``
    or ``test_per_class`` leaves every other class's images unchanged. Prototypes are in relative coordinates,
    so ``image_size`` changes the resolution, not the classes. With ``heldout_classes=0`` the probe uses the
    pre-training classes and splits, as for the other datasets.
    """
    if num_classes - heldout_classes < 2:
        raise ValueError(
            f"options num_classes={num_classes}, heldout_classes={heldout_classes}: at least 2 classes must "
            "remain for pre-training"
        )
    if heldout_classes == 1:
        raise ValueError("option 'heldout_classes' must be 0 or >= 2 (a probe needs two classes), got 1")
    train_images, test_images, train_labels, test_labels = [], [], [], []
    for c in range(num_classes):
        proto = _synthetic_prototype(np.random.default_rng((seed, c, 0, _SYNTHETIC_STREAM)), channels)
        for k, (count, images, labels) in enumerate(((images_per_class, train_images, train_labels),
                                                     (test_per_class, test_images, test_labels)), start=1):  # fmt: skip
            rng = np.random.default_rng((seed, c, k, _SYNTHETIC_STREAM))
            images.append(_synthetic_images(proto, count, image_size, channels, noise, rng))
            labels.append(np.full(count, c, np.int32))
    train_images, test_images = np.concatenate(train_images), np.concatenate(test_images)
    train_labels, test_labels = np.concatenate(train_labels), np.concatenate(test_labels)
    options = dict(num_classes=num_classes, heldout_classes=heldout_classes, images_per_class=images_per_class,
                   test_per_class=test_per_class, image_size=image_size, channels=channels, noise=noise,
                   seed=seed)  # fmt: skip
    names = tuple(f"synthetic_{c:03d}" for c in range(num_classes))
    if heldout_classes == 0:
        return _same_classes("synthetic", train_images, train_labels, test_images, test_labels, names, options)

    pretrain = num_classes - heldout_classes  # classes [0, pretrain) pre-train; [pretrain, num_classes) held out
    train_in, test_in = train_labels < pretrain, test_labels < pretrain
    arrays = [train_images[train_in], test_images[test_in], train_images[~train_in], test_images[~test_in]]
    mean, std = _normalize(*arrays)
    return Dataset(
        name="synthetic", train_images=arrays[0], train_labels=train_labels[train_in], test_images=arrays[1],
        test_labels=test_labels[test_in], num_classes=pretrain, class_names=names[:pretrain],
        fewshot_train_images=arrays[2], fewshot_train_labels=train_labels[~train_in] - np.int32(pretrain),
        fewshot_test_images=arrays[3], fewshot_test_labels=test_labels[~test_in] - np.int32(pretrain),
        fewshot_num_classes=heldout_classes, fewshot_class_names=names[pretrain:], mean=mean, std=std,
        options=options,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- parts

PARTS_GRID = 4  # an image is a PARTS_GRID x PARTS_GRID grid of cells; a ViT with patch = image_size / 4 sees a cell
PARTS_FAMILIES = 4  # families classes are made of; one more, the distractor family, is never part of a class
PARTS_VARIANTS = 16  # part types per family
PARTS_PER_CLASS = 4  # one part of each family
PARTS_DISTRACTORS = 2  # parts of the distractor family in every image
PARTS_DROP = 0.2  # probability that one of a class's parts is missing from an image
PARTS_SHIFT = 1  # the whole image moves by up to this many pixels in x and y
PARTS_NEGATIVE = 0.3  # probability that a part appears with inverted polarity (its negative)


def _blur(x: np.ndarray) -> np.ndarray:
    """A 3x3 box blur over the last two axes (edges repeated): smooth, blob-like part templates."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = x.shape[-2:]
    return sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def parts_vocabulary(cell: int, channels: int, seed: int) -> np.ndarray:
    """The part templates, (PARTS_FAMILIES + 1, PARTS_VARIANTS, cell, cell, channels), unit RMS per pixel.

    A family is a smooth random pattern; its variants are that pattern plus a variant-specific smooth pattern of
    0.8 times its norm. Tokens of one family look alike (an expert can specialize in a family) and telling its
    variants apart needs finer features.
    """
    rng = np.random.default_rng((seed, _PARTS_STREAM))

    def unit(x):  # unit RMS over each template's pixels
        return x / np.sqrt(np.mean(x**2, axis=(-3, -2, -1), keepdims=True))

    shape = (channels, cell, cell)  # blurred over the last two axes, then channels last
    base = _blur(rng.normal(size=(PARTS_FAMILIES + 1, 1, *shape))).transpose(0, 1, 3, 4, 2)
    detail = _blur(rng.normal(size=(PARTS_FAMILIES + 1, PARTS_VARIANTS, *shape))).transpose(0, 1, 3, 4, 2)
    return unit(unit(base) + 0.8 * unit(detail)).astype(np.float32)


def _parts_class(rng: np.random.Generator) -> np.ndarray:
    """A class: for family i < PARTS_PER_CLASS, the variant of family i it is made of."""
    return rng.integers(0, PARTS_VARIANTS, PARTS_PER_CLASS)


def _parts_images(vocabulary, variants, count, size, noise, rng) -> np.ndarray:
    """``count`` (size, size, channels) images of one class.

    Each image places the class's parts (each missing with probability PARTS_DROP) and PARTS_DISTRACTORS parts
    of the distractor family (the last one, never part of a class) at distinct random cells, each with an
    amplitude in [0.7, 1.3], inverted (multiplied by -1) with probability PARTS_NEGATIVE; then shifts the
    whole picture by up to PARTS_SHIFT pixels and adds Gaussian pixel noise of std ``noise``.
    """
    _, _, cell, _, channels = vocabulary.shape
    cells = PARTS_GRID * PARTS_GRID
    where = np.argsort(rng.random((count, cells)), axis=1)[:, : PARTS_PER_CLASS + PARTS_DISTRACTORS]
    present = np.concatenate([rng.random((count, PARTS_PER_CLASS)) >= PARTS_DROP,
                              np.ones((count, PARTS_DISTRACTORS), bool)], axis=1)  # fmt: skip
    sign = np.where(rng.random(where.shape) < PARTS_NEGATIVE, np.float32(-1), np.float32(1))  # polarity
    amplitude = rng.uniform(0.7, 1.3, where.shape).astype(np.float32) * present * sign
    family = np.concatenate([np.arange(PARTS_PER_CLASS), np.full(PARTS_DISTRACTORS, PARTS_FAMILIES)])
    variant = np.concatenate([np.broadcast_to(variants, (count, PARTS_PER_CLASS)),
                              rng.integers(0, PARTS_VARIANTS, (count, PARTS_DISTRACTORS))], axis=1)  # fmt: skip
    grid = np.zeros((count, cells, cell, cell, channels), np.float32)
    rows = np.arange(count)[:, None]
    grid[rows, where] = vocabulary[family[None, :], variant] * amplitude[:, :, None, None, None]
    side = PARTS_GRID * cell
    images = grid.reshape(count, PARTS_GRID, PARTS_GRID, cell, cell, channels).transpose(0, 1, 3, 2, 4, 5)
    images = images.reshape(count, side, side, channels)
    if side != size:
        images = _resize(images, size)
    shift = rng.integers(-PARTS_SHIFT, PARTS_SHIFT + 1, (count, 2))
    padded = np.pad(images, [(0, 0), (PARTS_SHIFT, PARTS_SHIFT), (PARTS_SHIFT, PARTS_SHIFT), (0, 0)])
    ys = PARTS_SHIFT - shift[:, 0, None] + np.arange(size)  # (count, size)
    xs = PARTS_SHIFT - shift[:, 1, None] + np.arange(size)
    images = padded[np.arange(count)[:, None, None], ys[:, :, None], xs[:, None, :]]
    return (images + rng.normal(0, noise, images.shape)).astype(np.float32)


def _load_parts(
    *,
    num_classes: int,
    heldout_classes: int,
    images_per_class: int,
    test_per_class: int,
    fewshot_pool_per_class: int,
    image_size: int,
    channels: int,
    noise: float,
    seed: int,
) -> Dataset:
    """Classes composed of parts: a task where tokens differ in kind and per-token capacity matters.

    An image is a 4 x 4 grid of cells (a ViT with ``patch_size = image_size / 4`` sees one cell per token). There
    are ``PARTS_FAMILIES`` families of ``PARTS_VARIANTS`` part templates each (``parts_vocabulary``), and one more
    family of distractors. A class is one part of each family; an image of the class shows each of them with
    probability 0.8, at random cells (a class is a bag of parts, not a layout), with an amplitude of 0.7-1.3,
    inverted with probability 0.3 (a part and its negative are the same part), beside two distractor parts at
    other cells, the whole picture shifted by up to a pixel, and pixel noise. So the class is spread over
    part-specific patches and no single patch decides it; recognizing a part, whatever its polarity, takes a
    non-linear detector per template (one small MLP holds fewer detectors than there are templates, experts
    together hold more), and tokens come in five kinds plus background, so experts can specialize.

    The first ``num_classes - heldout_classes`` classes pre-train (``images_per_class`` train and
    ``test_per_class`` test images each); the last ``heldout_classes`` are new combinations of the same parts,
    kept for the few-shot probe (``fewshot_pool_per_class`` images per class to draw shots from, and
    ``test_per_class`` test images), as the paper pre-trains on JFT and probes on ImageNet. Class ``c``'s images
    come from ``default_rng((seed, c, k, tag))``: deterministic, and independent of the other classes.
    ``image_size`` must be a multiple of 4; the templates are drawn at ``image_size / 4`` pixels per cell.
    """
    if image_size % PARTS_GRID:
        raise ValueError(f"option 'image_size' must be a multiple of {PARTS_GRID} for 'parts', got {image_size}")
    if num_classes - heldout_classes < 2 or heldout_classes < 2:
        raise ValueError(
            f"options num_classes={num_classes}, heldout_classes={heldout_classes}: need at least 2 pre-training "
            "and 2 held-out classes"
        )
    cell = image_size // PARTS_GRID
    vocabulary = parts_vocabulary(cell, channels, seed)
    pretrain = num_classes - heldout_classes
    splits = {"train": ([], []), "test": ([], []), "fewshot_train": ([], []), "fewshot_test": ([], [])}
    for c in range(num_classes):
        variants = _parts_class(np.random.default_rng((seed, c, 0, _PARTS_STREAM)))
        if c < pretrain:
            wanted = (("train", images_per_class, c), ("test", test_per_class, c))
        else:
            wanted = (("fewshot_train", fewshot_pool_per_class, c - pretrain), ("fewshot_test", test_per_class,
                                                                                c - pretrain))  # fmt: skip
        for k, (split, count, label) in enumerate(wanted, start=1):
            rng = np.random.default_rng((seed, c, k, _PARTS_STREAM))
            splits[split][0].append(_parts_images(vocabulary, variants, count, image_size, noise, rng))
            splits[split][1].append(np.full(count, label, np.int32))
    arrays = {name: (np.concatenate(images), np.concatenate(labels)) for name, (images, labels) in splits.items()}
    mean, std = _normalize(*(images for images, _ in arrays.values()))
    options = dict(num_classes=num_classes, heldout_classes=heldout_classes, images_per_class=images_per_class,
                   test_per_class=test_per_class, fewshot_pool_per_class=fewshot_pool_per_class,
                   image_size=image_size, channels=channels, noise=noise, seed=seed)  # fmt: skip
    names = tuple(f"parts_{c:03d}" for c in range(num_classes))
    return Dataset(
        name="parts", train_images=arrays["train"][0], train_labels=arrays["train"][1],
        test_images=arrays["test"][0], test_labels=arrays["test"][1], num_classes=pretrain,
        class_names=names[:pretrain], fewshot_train_images=arrays["fewshot_train"][0],
        fewshot_train_labels=arrays["fewshot_train"][1], fewshot_test_images=arrays["fewshot_test"][0],
        fewshot_test_labels=arrays["fewshot_test"][1], fewshot_num_classes=heldout_classes,
        fewshot_class_names=names[pretrain:], mean=mean, std=std, options=options,
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- cifar10

_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_CIFAR_META_FILE = "batches.meta"
_CIFAR_SIDE = 32


def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name: what NumPy arrays and Python 2 strings are rebuilt from.

    Both NumPy 1 (``numpy.core``) and NumPy 2 (``numpy._core``) module names map to the objects of the NumPy
    installed, taken from NumPy's own pickling (no private import, no deprecation warning).
    """
    import codecs

    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
    frombuffer = np.arange(2).__reduce_ex__(5)[0]  # protocol 5 pickles (NumPy >= 1.16)
    if getattr(frombuffer, "__name__", "") == "_frombuffer":
        for core in ("numpy.core", "numpy._core"):
            allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside ``_pickle_globals()``: a CIFAR file cannot run code."""

    _allowed = None

    def find_class(self, module, name):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _pickle_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _read_cifar_pickle(file: str) -> dict:
    """A CIFAR pickle as a dict with str keys. FileNotFoundError if absent, ValueError naming ``file`` if not
    a pickled dict."""
    if not os.path.isfile(file):
        raise FileNotFoundError(f"CIFAR-10 file {file} does not exist")
    try:
        with open(file, "rb") as f:
            content = _RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as error:  # any failure to unpickle means the file is not what it should be
        raise ValueError(f"CIFAR-10 file {file} is not a readable pickle: {type(error).__name__}: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"CIFAR-10 file {file}: expected a pickled dict, got {type(content).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in content.items()}


def _read_cifar_batch(file: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, 32, 32, 3) uint8 images and (B,) int32 labels of one CIFAR-10 batch file, validated."""
    content = _read_cifar_pickle(file)
    for key in ("data", "labels"):
        if key not in content:
            raise ValueError(f"CIFAR-10 file {file}: missing key {key!r} (has {sorted(map(str, content))})")
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"CIFAR-10 file {file}: 'data' must be a uint8 array (B, 3072), got {got}")
    if data.shape[1] != 3 * _CIFAR_SIDE * _CIFAR_SIDE:
        raise ValueError(f"CIFAR-10 file {file}: 'data' rows must have 3072 values (3x32x32), got {data.shape[1]}")
    try:
        labels = np.asarray(content["labels"])
    except Exception as error:
        raise ValueError(f"CIFAR-10 file {file}: 'labels' is not a list of integers") from error
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise ValueError(
            f"CIFAR-10 file {file}: 'labels' must be {len(data)} integers (one per row of 'data'), got "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"CIFAR-10 file {file}: labels must lie in [0, {num_classes})")
    images = data.reshape(len(data), 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)  # rows are R, G, B planes
    return images, labels.astype(np.int32)


def _load_cifar10(*, path: str, image_size: int, channels: int) -> Dataset:
    """CIFAR-10, python version: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``.

    ``path`` is that directory, or a directory holding ``cifar-10-batches-py/`` (as the archive unpacks). Files
    are read with an unpickler that only rebuilds NumPy arrays, so a tampered file cannot run code. Images are
    scaled to [0, 1], resized with ``_resize`` if ``image_size`` is not 32, turned to luma with ``channels=1``.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CIFAR-10 directory {path} does not exist")
    nested = os.path.join(path, "cifar-10-batches-py")
    if not os.path.exists(os.path.join(path, _CIFAR_META_FILE)) and os.path.isdir(nested):
        path = nested
    meta_file = os.path.join(path, _CIFAR_META_FILE)
    meta = _read_cifar_pickle(meta_file)
    names = meta.get("label_names")
    if not isinstance(names, list | tuple) or len(names) < 2 or not all(isinstance(n, bytes | str) for n in names):
        raise ValueError(f"CIFAR-10 file {meta_file}: 'label_names' must be a list of class names")
    names = tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)

    def read(files):
        parts = [_read_cifar_batch(os.path.join(path, f), len(names)) for f in files]
        labels = np.concatenate([p[1] for p in parts])
        images = np.empty((len(labels), _CIFAR_SIDE, _CIFAR_SIDE, 3), np.float32)
        lo = 0
        while parts:  # convert batch by batch, freeing each uint8 batch as it goes
            raw = parts.pop(0)[0]
            images[lo : lo + len(raw)] = raw / np.float32(255)
            lo += len(raw)
        images = _to_channels(_resize(images, image_size), channels)
        return np.ascontiguousarray(images, np.float32), labels

    for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE):  # report a missing file before reading 150 MB
        if not os.path.isfile(os.path.join(path, f)):
            raise FileNotFoundError(f"CIFAR-10 file {os.path.join(path, f)} does not exist")
    train_images, train_labels = read(_CIFAR_TRAIN_FILES)
    test_images, test_labels = read((_CIFAR_TEST_FILE,))
    options = {"path": path, "image_size": image_size, "channels": channels}
    return _same_classes("cifar10", train_images, train_labels, test_images, test_labels, names, options)


# ---------------------------------------------------------------------------------------------- imagefolder


def _read_image(file: str, image_size: int, channels: int) -> np.ndarray:
    """One image file as (image_size, image_size, channels) float32 in [0, 1]; ValueError naming the file.

    Choice: EXIF orientation is applied, then the largest centred square is cropped and resized (Pillow's
    antialiased bilinear), so the aspect ratio is kept; palette and alpha images go through RGBA first.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
                image = image.convert("RGBA")
            image = image.convert("L" if channels == 1 else "RGB")
            image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / np.float32(255)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {file}: {type(error).__name__}: {error}") from error
    return array.reshape(image_size, image_size, channels)


def _load_imagefolder(*, path: str, image_size: int, channels: int, test_fraction: float, seed: int) -> Dataset:
    """One sub-folder per class (sorted names are labels 0, 1, ...); every image file in it is read.

    Files whose extension is not in ``IMAGE_EXTENSIONS`` (README, .DS_Store, ...) and hidden entries are not
    images and are ignored; an image file that cannot be decoded is an error, never skipped.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder {path} does not exist")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"image folder {path}: expected one sub-folder per class (at least 2), found {len(classes)}")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        members = sorted(
            e.path for e in os.scandir(folder)
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )  # fmt: skip
        if not members:
            raise ValueError(f"class folder {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        files += members
        labels += [label] * len(members)
    labels = np.array(labels, np.int32)
    images = np.empty((len(files), image_size, image_size, channels), np.float32)
    for i, file in enumerate(files):
        images[i] = _read_image(file, image_size, channels)
    train, test = _stratified_split(labels, len(classes), test_fraction, seed, f"image folder {path}")
    options = {"path": path, "image_size": image_size, "channels": channels, "test_fraction": test_fraction,
               "seed": seed}  # fmt: skip
    return _same_classes("imagefolder", images[train], labels[train], images[test], labels[test], classes, options)


_LOADERS = {
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "parts": _load_parts,
    "cifar10": _load_cifar10,
    "imagefolder": _load_imagefolder,
}
