"""``python -m train.predict --workdir DIR IMAGE...``: the top-5 classes a trained model gives image files.

Each file is prepared as the run's evaluation prepared its test images:

- streamed data (``imagefolder``, ``arrayrecord``): the evaluation ops of ``train.data.ops`` (decode, the largest
  central square resized to ``data.image_size``, values in [-1, 1]);
- in-memory data (digits, synthetic, parts, cifar10): decoded to the run's channels (gray or RGB), the largest
  central square resized to ``data.image_size``, values in [0, 1], then standardized with the per-channel mean
  and std of the run's training split, exactly as the dataset was.

The digits model learned scikit-learn's digits: a light digit on a dark background, filling most of the square.
A photo of dark ink on white paper must be inverted (``--invert``) and cropped close to the digit; a model of 16x16
(or 8x8) pixels sees very little else. Sparse routers route groups of images together: the files are grouped
among themselves, in the evaluation order (``train.evaluators.evaluation_order``), as a test batch is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from . import checkpoint
from .config import Config
from .data import STREAMING, streaming_class_names
from .evaluators import in_batches
from .input_pipeline import as_splits, load_data
from .trained import load_model
from .workdir import saved_config


def prepare_images(paths, config: Config, *, invert: bool = False, dataset=None) -> np.ndarray:
    """The files at ``paths`` as the run's model input (B, H, W, ch) float32; a ValueError names the first file
    that cannot be read as an image, before any model is loaded."""
    from PIL import ImageOps

    from .data import ops

    size, channels = config.data.image_size, config.data.channels
    streamed = config.data.name in STREAMING
    if invert and streamed:
        raise ValueError("--invert is for in-memory datasets (digits, ...), not streamed ones")
    if streamed:  # the evaluation ops are a function of the config: the run's data is not opened
        eval_ops = ops.eval_ops(size, channels)
    else:  # the training split's mean and std: the in-memory datasets are small
        dataset = load_data(config) if dataset is None else dataset
    images = []
    for path in map(Path, paths):
        try:
            data = path.read_bytes()
            if streamed:
                images.append(eval_ops(data, np.random.default_rng(0)))
                continue
            image = ops.decode(data, None, channels=channels, what=str(path))
            if invert:
                image = ImageOps.invert(image)
            array = ops.value_range(ops.resize_central_crop(image, None, size=size), None, low=0.0, high=1.0)
            mean, std = np.asarray(dataset.mean, np.float32), np.asarray(dataset.std, np.float32)
            images.append((array - mean) / std)
        except OSError as err:
            raise ValueError(f"{path}: cannot read the file ({err})") from err
        except ValueError as err:
            raise ValueError(f"{path}: not a readable image ({err})") from err
    return np.stack(images).astype(np.float32)


@eqx.filter_jit
def _probabilities(model, images):
    return jax.nn.softmax(model(images, inference=True)[0], axis=-1)


def predict(workdir, paths, *, top: int = 5, invert: bool = False, step: int | None = None) -> list[list[tuple]]:
    """For each file, its ``top`` classes as (class index, class name, probability), most probable first."""
    workdir = Path(workdir)
    if not paths:
        raise ValueError("no image files given")
    config = saved_config(workdir)
    # Choice: a streamed run's data is not opened (a scan of its folder, or its shards' checksums, takes minutes at
    # ImageNet's size): its class names come from the folder's listing or the manifest.
    if config.data.name in STREAMING:
        dataset, names = None, streaming_class_names(config.data.name, config.data.path)
    else:
        dataset = load_data(config)
        names = as_splits(dataset).class_names
    images = prepare_images(paths, config, invert=invert, dataset=dataset)
    model, config = load_model(workdir, step, config=config)
    groups = 1 if config.model.router == "soft_moe" or config.model.dense else config.model.group_images
    probabilities = in_batches(_probabilities, model, images, groups, None)
    out = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:top]
        out.append([(int(c), names[c], float(row[c])) for c in best])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--workdir", required=True)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--step", type=int, help="a checkpoint's step (default: the last complete one)")
    parser.add_argument("--invert", action="store_true", help="dark ink on light paper (in-memory datasets)")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        results = predict(args.workdir, args.images, top=args.top, invert=args.invert, step=args.step)
    except (FileNotFoundError, checkpoint.CorruptCheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path, classes in zip(args.images, results, strict=True):
        print(path)
        for index, name, p in classes:
            print(f"  {100 * p:6.2f}%  {name} (class {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

