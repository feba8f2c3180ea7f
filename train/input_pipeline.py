"""Config -> data: the run's splits, checked before any training work (``train.data`` does the reading).

``load_data(config)`` opens what ``config.data`` names; ``as_splits`` gives what training and evaluation read
(train, test, the few-shot pool, the ops that prepare a stored example). Global batches are assembled on the
mesh by ``train.sharding.global_batch``. Imports ``train.config`` and ``train.data``.
"""

from __future__ import annotations

from . import data
from .config import Config


def load_data(config: Config):
    """The run's data: an in-memory ``train.data.Dataset`` for the small datasets, or ``train.data.Splits`` opened
    for streaming (``data.name`` imagefolder or arrayrecord). Either way every input is checked here, before any
    training work, and the class count must match ``model.num_classes``."""
    d = config.data
    if d.name in data.STREAMING:
        dataset = data.open_streaming(
            d.name, d.path, image_size=d.image_size, channels=d.channels, augment=d.augment,
            fewshot_per_class=2 * config.fewshot_shots, test_fraction=d.test_fraction, seed=d.seed,
        )  # fmt: skip
    else:
        if d.augment:
            raise ValueError(f"data.augment is for image sources ({', '.join(data.STREAMING)}); the {d.name} data "
                             "is decoded in memory and read as it is")  # fmt: skip
        if d.name == "cifar10" and not d.path:
            raise ValueError(f"data.path must name a local directory for the {d.name} dataset (--set data.path=DIR)")
        candidates = {
            "path": d.path, "image_size": d.image_size, "channels": d.channels, "seed": d.seed,
            "num_classes": d.num_classes, "heldout_classes": d.heldout_classes, "test_fraction": d.test_fraction,
            "families": d.families, "variants": d.variants, "distractors": d.distractors,
        }  # fmt: skip
        valid = data.OPTIONS.get(d.name, {})  # an unknown name is reported by data.load
        options = {k: v for k, v in candidates.items() if k in valid and v is not None and v != ""}
        dataset = data.load(d.name, **options)
    if dataset.num_classes != config.model.num_classes:
        raise ValueError(
            f"model.num_classes = {config.model.num_classes} but the {d.name} data has {dataset.num_classes} "
            f"classes; set --set model.num_classes={dataset.num_classes}"
        )
    return dataset


def as_splits(dataset) -> data.Splits:
    """A ``Dataset`` or ``Splits`` as ``Splits``: what training and evaluation read."""
    return dataset if isinstance(dataset, data.Splits) else data.from_dataset(dataset)
