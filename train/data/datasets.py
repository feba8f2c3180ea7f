"""Datasets for pre-training and the few-shot probe, held in memory as NumPy arrays.

What it is for: ``load(name, **options)`` returns a :class:`Dataset` of normalized float32 images (B, H, W, ch)
and int32 labels, with a train split, a test split and the data the 10-shot linear probe uses
(``train.fewshot_probe``). Training reads a Dataset through the loader (``train.data.loader``), like the
streaming sources: one order, one sharding, one resume for all data.

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
- ``parts``: classes composed of parts, the router study's task (``load_parts``): ``num_classes`` (150)
  classes of ``image_size`` (32) square images on a 4 x 4 grid of cells; a class is one part from each of four
  families of ``PARTS_VARIANTS`` (16) part templates, placed at random cells of each image, inverted 30% of the
  time, with two parts of a fifth, distractor family, a one-pixel shift and pixel noise (``noise``, std 0.25).
  ``heldout_classes`` (50) new combinations of the same parts are kept for the probe (``fewshot_pool_per_class``
  (20) images per class to draw shots from, ``test_per_class`` (100) test images); the others pre-train
  (``images_per_class`` (500) train and ``test_per_class`` test images): 50,000 train, 10,000 test, probe
  1,000 + 5,000. Pixel baselines are at chance level: a model has to recognize parts wherever they are.
- ``cifar10``: a local CIFAR-10 "python version" directory (``path``); 50000 train, 10000 test, 10 classes.
  Few-shot: the same classes (train split / test split).
- ``imagefolder``: ``path`` holds one sub-folder per class of image files (or ``train/`` + ``test/``
  sub-folders, see ``sources.read_image_folder``); a stratified split by ``test_fraction``.
  Few-shot: the same classes (train split / test split).

Normalization: every image is ``(x - mean) / std`` with a per-channel mean and standard deviation computed on
the pre-training train split only and stored on the Dataset (``mean``, ``std``); the test split and the few-shot
data go through the same transform.

Dimensions: B images, H x W pixels, ch channels.
"""


from __future__ import annotations

import math
import os
import pickle

import numpy as np

from .arrays import (
    Dataset,
    float_option,
    int_option,
    path_option,
    resize_images,
    same_classes,
    stratified_split,
    to_channels,
)
from .procedural import load_parts, load_synthetic
from .sources import read_image_folder

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
        "families": 4,  # families a class is made of (one part each); one more family gives the distractors
        "variants": 16,  # part templates per family
        "distractors": 2,  # distractor parts per image
    },
    "cifar10": {"path": None, "image_size": 32, "channels": 3},
    "imagefolder": {"path": None, "image_size": 32, "channels": 3, "test_fraction": 0.25, "seed": 0},
}

# Tags that keep this module's random streams apart: the same seed never gives correlated draws in two places.

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
        resolved["path"] = path_option(name, resolved["path"])
    for key in ("image_size", "channels", "seed", "num_classes", "heldout_classes", "images_per_class",
                "test_per_class", "fewshot_pool_per_class", "families", "variants", "distractors"):  # fmt: skip
        if key in resolved:
            least = 0 if key in ("seed", "heldout_classes", "distractors") else 1
            resolved[key] = int_option(key, resolved[key], minimum=least)
    if "channels" in resolved and name not in ("synthetic", "parts") and resolved["channels"] not in (1, 3):
        raise ValueError(f"option 'channels' must be 1 or 3 for {name!r}, got {resolved['channels']}")
    if "test_fraction" in resolved:
        resolved["test_fraction"] = float_option("test_fraction", resolved["test_fraction"], 0.0, 1.0)
    if "noise" in resolved:
        resolved["noise"] = float_option("noise", resolved["noise"], 0.0, math.inf, closed_low=True)
    return _LOADERS[name](**resolved)



# --------------------------------------------------------------------------------------------------- digits


def _load_digits(*, image_size: int, channels: int, test_fraction: float, seed: int) -> Dataset:
    """scikit-learn's digits (1797 8x8 images, pixel values 0..16), resized with ``resize_images`` (bilinear up)."""
    from sklearn.datasets import load_digits  # ships in the wheel: never downloads

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]
    labels = bunch.target.astype(np.int32)
    train, test = stratified_split(labels, 10, test_fraction, seed, "digits")
    train_images = to_channels(resize_images(images[train], image_size), channels).copy()
    test_images = to_channels(resize_images(images[test], image_size), channels).copy()
    options = {"image_size": image_size, "channels": channels, "test_fraction": test_fraction, "seed": seed}
    names = tuple(str(c) for c in range(10))
    return same_classes("digits", train_images, labels[train], test_images, labels[test], names, options)



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
    scaled to [0, 1], resized with ``resize_images`` if ``image_size`` is not 32, turned to luma with ``channels=1``.
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
        images = to_channels(resize_images(images, image_size), channels)
        return np.ascontiguousarray(images, np.float32), labels

    for f in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE):  # report a missing file before reading 150 MB
        if not os.path.isfile(os.path.join(path, f)):
            raise FileNotFoundError(f"CIFAR-10 file {os.path.join(path, f)} does not exist")
    train_images, train_labels = read(_CIFAR_TRAIN_FILES)
    test_images, test_labels = read((_CIFAR_TEST_FILE,))
    options = {"path": path, "image_size": image_size, "channels": channels}
    return same_classes("cifar10", train_images, train_labels, test_images, test_labels, names, options)


# ---------------------------------------------------------------------------------------------- imagefolder


def _load_imagefolder(*, path: str, image_size: int, channels: int, test_fraction: float, seed: int) -> Dataset:
    """A small image folder decoded into memory: the splits of ``sources.read_image_folder``, every image through
    the evaluation ops' ``decode`` and ``resize_central_crop`` (largest central square, bilinear), in [0, 1], then
    normalized like every in-memory dataset. For folders too large for RAM, train with ``data.name=imagefolder``
    (``train.input_pipeline.load_data`` streams it) or convert it to shards (``python -m train.prepare``).

    An image file that cannot be decoded is an error naming the file, never skipped.
    """
    from .ops import decode, resize_central_crop

    folder = read_image_folder(path, test_fraction=test_fraction, seed=seed, verify=False)

    def read(files):
        images = np.empty((len(files), image_size, image_size, channels), np.float32)
        for i, file in enumerate(files):
            with open(file, "rb") as f:
                image = decode(f.read(), None, channels=channels, what=file)
            pixels = np.asarray(resize_central_crop(image, None, size=image_size), dtype=np.float32)
            images[i] = pixels.reshape(image_size, image_size, channels) / np.float32(255)
        return images

    options = {"path": path, "image_size": image_size, "channels": channels, "test_fraction": test_fraction,
               "seed": seed}  # fmt: skip
    return same_classes("imagefolder", read(folder.train_files), folder.train_labels, read(folder.test_files),
                         folder.test_labels, folder.class_names, options)  # fmt: skip


_LOADERS = {
    "digits": _load_digits,
    "synthetic": load_synthetic,
    "parts": load_parts,
    "cifar10": _load_cifar10,
    "imagefolder": _load_imagefolder,
}
