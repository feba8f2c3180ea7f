"""Procedural datasets, generated in memory: ``synthetic`` (Gabor-patch classes) and ``parts`` (classes
composed of parts, the router study's task). See ``train.data.datasets`` for what each looks like.

What it may import: numpy and the standard library.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import PARTS_STREAM, SYNTHETIC_STREAM, Dataset, normalize, resize_images, same_classes

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


def load_synthetic(
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
        proto = _synthetic_prototype(np.random.default_rng((seed, c, 0, SYNTHETIC_STREAM)), channels)
        for k, (count, images, labels) in enumerate(((images_per_class, train_images, train_labels),
                                                     (test_per_class, test_images, test_labels)), start=1):  # fmt: skip
            rng = np.random.default_rng((seed, c, k, SYNTHETIC_STREAM))
            images.append(_synthetic_images(proto, count, image_size, channels, noise, rng))
            labels.append(np.full(count, c, np.int32))
    train_images, test_images = np.concatenate(train_images), np.concatenate(test_images)
    train_labels, test_labels = np.concatenate(train_labels), np.concatenate(test_labels)
    options = dict(num_classes=num_classes, heldout_classes=heldout_classes, images_per_class=images_per_class,
                   test_per_class=test_per_class, image_size=image_size, channels=channels, noise=noise,
                   seed=seed)  # fmt: skip
    names = tuple(f"synthetic_{c:03d}" for c in range(num_classes))
    if heldout_classes == 0:
        return same_classes("synthetic", train_images, train_labels, test_images, test_labels, names, options)

    pretrain = num_classes - heldout_classes  # classes [0, pretrain) pre-train; [pretrain, num_classes) held out
    train_in, test_in = train_labels < pretrain, test_labels < pretrain
    arrays = [train_images[train_in], test_images[test_in], train_images[~train_in], test_images[~test_in]]
    mean, std = normalize(*arrays)
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
PARTS_DISTRACTORS = 2  # parts of the distractor family in every image
PARTS_DROP = 0.2  # probability that one of a class's parts is missing from an image
PARTS_SHIFT = 1  # the whole image moves by up to this many pixels in x and y
PARTS_NEGATIVE = 0.3  # probability that a part appears with inverted polarity (its negative)


def _blur(x: np.ndarray) -> np.ndarray:
    """A 3x3 box blur over the last two axes (edges repeated): smooth, blob-like part templates."""
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = x.shape[-2:]
    return sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def parts_vocabulary(cell: int, channels: int, seed: int, families: int = PARTS_FAMILIES,
                     variants: int = PARTS_VARIANTS) -> np.ndarray:  # fmt: skip
    """The part templates, (families + 1, variants, cell, cell, channels), unit RMS per pixel.

    A family is a smooth random pattern; its variants are that pattern plus a variant-specific smooth pattern of
    0.8 times its norm. Tokens of one family look alike (an expert can specialize in a family) and telling its
    variants apart needs finer features.
    """
    rng = np.random.default_rng((seed, PARTS_STREAM))

    def unit(x):  # unit RMS over each template's pixels
        return x / np.sqrt(np.mean(x**2, axis=(-3, -2, -1), keepdims=True))

    shape = (channels, cell, cell)  # blurred over the last two axes, then channels last
    base = _blur(rng.normal(size=(families + 1, 1, *shape))).transpose(0, 1, 3, 4, 2)
    detail = _blur(rng.normal(size=(families + 1, variants, *shape))).transpose(0, 1, 3, 4, 2)
    return unit(unit(base) + 0.8 * unit(detail)).astype(np.float32)


def _parts_class(rng: np.random.Generator, families: int, variants: int) -> np.ndarray:
    """A class: for each family i of the ``families`` a class is made of, the variant of family i it uses."""
    return rng.integers(0, variants, families)


def _parts_images(vocabulary, variants, count, size, noise, rng, distractors=PARTS_DISTRACTORS) -> np.ndarray:
    """``count`` (size, size, channels) images of one class.

    Each image places the class's parts (each missing with probability PARTS_DROP) and ``distractors`` parts
    of the distractor family (the last one, never part of a class) at distinct random cells, each with an
    amplitude in [0.7, 1.3], inverted (multiplied by -1) with probability PARTS_NEGATIVE; then shifts the
    whole picture by up to PARTS_SHIFT pixels and adds Gaussian pixel noise of std ``noise``.
    """
    families, kinds, cell, _, channels = vocabulary.shape
    per_class = families - 1  # the last family is the distractors'
    cells = PARTS_GRID * PARTS_GRID
    where = np.argsort(rng.random((count, cells)), axis=1)[:, : per_class + distractors]
    present = np.concatenate([rng.random((count, per_class)) >= PARTS_DROP,
                              np.ones((count, distractors), bool)], axis=1)  # fmt: skip
    sign = np.where(rng.random(where.shape) < PARTS_NEGATIVE, np.float32(-1), np.float32(1))  # polarity
    amplitude = rng.uniform(0.7, 1.3, where.shape).astype(np.float32) * present * sign
    family = np.concatenate([np.arange(per_class), np.full(distractors, per_class)])
    variant = np.concatenate([np.broadcast_to(variants, (count, per_class)),
                              rng.integers(0, kinds, (count, distractors))], axis=1)  # fmt: skip
    grid = np.zeros((count, cells, cell, cell, channels), np.float32)
    rows = np.arange(count)[:, None]
    grid[rows, where] = vocabulary[family[None, :], variant] * amplitude[:, :, None, None, None]
    side = PARTS_GRID * cell
    images = grid.reshape(count, PARTS_GRID, PARTS_GRID, cell, cell, channels).transpose(0, 1, 3, 2, 4, 5)
    images = images.reshape(count, side, side, channels)
    if side != size:
        images = resize_images(images, size)
    shift = rng.integers(-PARTS_SHIFT, PARTS_SHIFT + 1, (count, 2))
    padded = np.pad(images, [(0, 0), (PARTS_SHIFT, PARTS_SHIFT), (PARTS_SHIFT, PARTS_SHIFT), (0, 0)])
    ys = PARTS_SHIFT - shift[:, 0, None] + np.arange(size)  # (count, size)
    xs = PARTS_SHIFT - shift[:, 1, None] + np.arange(size)
    images = padded[np.arange(count)[:, None, None], ys[:, :, None], xs[:, None, :]]
    return (images + rng.normal(0, noise, images.shape)).astype(np.float32)


def load_parts(
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
    families: int = PARTS_FAMILIES,
    variants: int = PARTS_VARIANTS,
    distractors: int = PARTS_DISTRACTORS,
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

    ``families`` (default 4), ``variants`` (16) and ``distractors`` (2) change the task: more families per class
    and distractors per image leave less background (with 8 families and 3 distractors about 36% of the 16
    cells are background, against 67.5% by default), more variants need more part detectors. The defaults give
    the images of the default task, draw for draw.
    """
    if image_size % PARTS_GRID:
        raise ValueError(f"option 'image_size' must be a multiple of {PARTS_GRID} for 'parts', got {image_size}")
    if num_classes - heldout_classes < 2 or heldout_classes < 2:
        raise ValueError(
            f"options num_classes={num_classes}, heldout_classes={heldout_classes}: need at least 2 pre-training "
            "and 2 held-out classes"
        )
    if families + distractors > PARTS_GRID * PARTS_GRID:
        raise ValueError(f"options families={families}, distractors={distractors}: an image has "
                         f"{PARTS_GRID * PARTS_GRID} cells; families + distractors must be at most that")  # fmt: skip
    cell = image_size // PARTS_GRID
    vocabulary = parts_vocabulary(cell, channels, seed, families, variants)
    pretrain = num_classes - heldout_classes
    splits = {"train": ([], []), "test": ([], []), "fewshot_train": ([], []), "fewshot_test": ([], [])}
    for c in range(num_classes):
        kinds = _parts_class(np.random.default_rng((seed, c, 0, PARTS_STREAM)), families, variants)
        if c < pretrain:
            wanted = (("train", images_per_class, c), ("test", test_per_class, c))
        else:
            wanted = (("fewshot_train", fewshot_pool_per_class, c - pretrain), ("fewshot_test", test_per_class,
                                                                                c - pretrain))  # fmt: skip
        for k, (split, count, label) in enumerate(wanted, start=1):
            rng = np.random.default_rng((seed, c, k, PARTS_STREAM))
            splits[split][0].append(_parts_images(vocabulary, kinds, count, image_size, noise, rng, distractors))
            splits[split][1].append(np.full(count, label, np.int32))
    arrays = {name: (np.concatenate(images), np.concatenate(labels)) for name, (images, labels) in splits.items()}
    mean, std = normalize(*(images for images, _ in arrays.values()))
    options = dict(num_classes=num_classes, heldout_classes=heldout_classes, images_per_class=images_per_class,
                   test_per_class=test_per_class, fewshot_pool_per_class=fewshot_pool_per_class,
                   image_size=image_size, channels=channels, noise=noise, seed=seed, families=families,
                   variants=variants, distractors=distractors)  # fmt: skip
    names = tuple(f"parts_{c:03d}" for c in range(num_classes))
    return Dataset(
        name="parts", train_images=arrays["train"][0], train_labels=arrays["train"][1],
        test_images=arrays["test"][0], test_labels=arrays["test"][1], num_classes=pretrain,
        class_names=names[:pretrain], fewshot_train_images=arrays["fewshot_train"][0],
        fewshot_train_labels=arrays["fewshot_train"][1], fewshot_test_images=arrays["fewshot_test"][0],
        fewshot_test_labels=arrays["fewshot_test"][1], fewshot_num_classes=heldout_classes,
        fewshot_class_names=names[pretrain:], mean=mean, std=std, options=options,
    )  # fmt: skip
