"""How evaluation feeds a model: the evaluation order and full batches of it, on the run's mesh.

Imports ``train.data`` and ``train.sharding``; never the trainer.
"""

from __future__ import annotations

import jax
import numpy as np

from ..data import EvalBatches, InMemorySource
from ..sharding import gathered, global_batch


def evaluation_order(images: np.ndarray) -> np.ndarray:
    """The order in which evaluation groups ``images`` for routing: a permutation that depends only on the images.

    Choice: the images are sorted by a hash of their bytes (BLAKE2b), not taken in stored order. Sparse routers
    route ``group_images`` consecutive images together, so a token's output depends on the other images of its
    group; datasets are often stored sorted by class, and walking them in stored order would put one class in
    every group, which never happens in training (where every batch is a random draw). Hash order mixes classes
    as training does, and since it depends on the images alone, evaluation gives the same numbers for every
    ordering of the same set: a shuffled copy, a class-sorted copy. Identical images may come in any order
    among themselves; their outputs are identical, so nothing measured depends on it. Streaming sources hash
    their stored (encoded) bytes the same way (``train.data.EvalBatches``).
    """
    images = np.ascontiguousarray(images)
    return EvalBatches(InMemorySource(images, np.zeros(len(images), np.int32)), 1).order


def in_batches(fn, model, images, batch_size: int, sharding, preprocess=None, workers: int = 0) -> np.ndarray:
    """Apply ``fn`` to ``images`` (an array, or a source read with ``preprocess``, in ``workers`` grain worker
    processes if > 0) in full batches taken in ``evaluation_order``; outputs in the stored order. Each process
    reads its share of every batch.

    Choice: when the number of images is not a multiple of ``batch_size``, the last batch is filled with images
    from the start of the same order (real images, wrapping around), whose outputs are discarded: a padded group
    holds only real images, mixed as in training, and no blank image takes part in the routing of a real one.
    """
    if isinstance(images, np.ndarray):
        images = InMemorySource(np.ascontiguousarray(images), np.zeros(len(images), np.int32))
    batches = EvalBatches(images, batch_size, preprocess)
    p, count = jax.process_index(), jax.process_count()
    outputs = [gathered(fn(model, global_batch(local, sharding, batch_size)))
               for local, _ in batches.batches(p, count, workers if preprocess is not None else 0)]  # fmt: skip
    return batches.unpermute(np.concatenate(outputs))
