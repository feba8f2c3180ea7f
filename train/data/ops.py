"""Preprocessing ops, small and named, as in big_vision's ``pp`` ops and the V-MoE input pipeline.

What it is for: an encoded image (bytes) becomes a float32 (H, W, ch) array through a ``Preprocess``, a list of
named ops applied in order. Training: ``decode | inception_crop | resize | flip_lr | value_range``; evaluation:
``decode | resize_central_crop | value_range`` (``train_ops`` / ``eval_ops``). Each op takes the image and a NumPy
``Generator``; the loader gives every example its own generator, ``example_rng(seed, index, epoch)``, so every
random choice is a pure function of (seed, example index, epoch): a resumed run, a run with more workers or
another number of hosts all see the same pixels.

What it may import: numpy, Pillow and the standard library.

Dimensions: H x W pixels, ch channels.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable

import numpy as np

from .arrays import AUGMENT_STREAM

# Choice: big_vision's inception_crop defaults: 5% to 100% of the image area, aspect ratio 3/4 to 4/3 (drawn
# log-uniformly), 10 attempts before falling back to the largest central crop.
CROP_AREA = (0.05, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10


def example_rng(seed: int, index: int, epoch: int) -> np.random.Generator:
    """The generator of every random choice made for example ``index`` in epoch ``epoch`` of a run seeded ``seed``."""
    return np.random.default_rng((int(seed), int(index), int(epoch), AUGMENT_STREAM))


def decode(data, rng, *, channels: int, what: str = "image"):
    """Encoded bytes -> a Pillow image in mode ``L`` (channels 1) or ``RGB`` (3), EXIF orientation applied.

    Palette and alpha images go through RGBA first. Anything Pillow cannot decode is a ValueError naming ``what``
    (the file, or the shard and record).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("P", "PA", "LA", "La", "RGBa") or "transparency" in image.info:
                image = image.convert("RGBA")
            image = image.convert("L" if channels == 1 else "RGB")
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {what}: {type(error).__name__}: {error}") from error
    return image


def inception_crop(image, rng, *, area=CROP_AREA, ratio=CROP_RATIO):
    """A random crop covering ``area`` of the image at aspect ratio ``ratio`` (Szegedy et al. 2015, sec. 6).

    Draws (in this order, from ``rng``) up to ``CROP_ATTEMPTS`` times a target area and a log-uniform ratio; the
    first crop that fits is placed uniformly at random. Choice: if none fits, the largest central crop with a
    ratio inside ``ratio`` (as torchvision and big_vision's fallback do).
    """
    width, height = image.size
    for _ in range(CROP_ATTEMPTS):
        target = rng.uniform(*area) * width * height
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            return image.crop((x, y, x + w, y + h))
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    x, y = (width - w) // 2, (height - h) // 2
    return image.crop((x, y, x + w, y + h))


def resize(image, rng, *, size: int):
    """Resize to ``size`` x ``size`` (Pillow's antialiased bilinear); the aspect ratio is not kept."""
    from PIL import Image

    return image.resize((size, size), Image.Resampling.BILINEAR)


def flip_lr(image, rng):
    """Mirror left-right with probability 1/2 (one draw from ``rng``)."""
    from PIL import Image

    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def resize_central_crop(image, rng, *, size: int):
    """Evaluation: the largest central square, resized to ``size`` x ``size`` (aspect ratio kept)."""
    from PIL import Image, ImageOps

    return ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)


def value_range(image, rng, *, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """A Pillow image -> float32 (H, W, ch) with 0 mapped to ``low`` and 255 to ``high``."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return array * np.float32((high - low) / 255) + np.float32(low)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Named ops applied in order: ``Preprocess(ops)(data, rng)``. Picklable (grain worker processes run it)."""

    ops: tuple[tuple[str, Callable], ...]

    def __call__(self, data, rng: np.random.Generator):
        for _, op in self.ops:
            data = op(data, rng)
        return data

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.ops)

    @property
    def random(self) -> bool:
        """Whether any op draws from the generator (training ops with augmentation)."""
        return any(name in ("inception_crop", "flip_lr") for name in self.names)


def _op(name: str, fn: Callable, **kwargs) -> tuple[str, Callable]:
    import functools

    return name, functools.partial(fn, **kwargs)


def train_ops(size: int, channels: int, *, augment: bool, what: str = "image") -> Preprocess:
    """Training: ``decode | inception_crop | resize | flip_lr | value_range`` with ``augment``; without,
    the evaluation ops (no random choice at all)."""
    if not augment:
        return eval_ops(size, channels, what=what)
    return Preprocess((
        _op("decode", decode, channels=channels, what=what),
        ("inception_crop", inception_crop),
        _op("resize", resize, size=size),
        ("flip_lr", flip_lr),
        ("value_range", value_range),
    ))  # fmt: skip


def eval_ops(size: int, channels: int, *, what: str = "image") -> Preprocess:
    """Evaluation: ``decode | resize_central_crop | value_range``."""
    return Preprocess((
        _op("decode", decode, channels=channels, what=what),
        _op("resize_central_crop", resize_central_crop, size=size),
        ("value_range", value_range),
    ))  # fmt: skip
