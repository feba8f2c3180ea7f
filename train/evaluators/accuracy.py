"""Top-1 accuracy of a model on a split, in the evaluation order (``train.evaluators.batching``)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .batching import in_batches


@eqx.filter_jit
def predict(model, images):
    """The predicted class of each image, (B,), at inference (no routing noise)."""
    return jnp.argmax(model(images, inference=True)[0], axis=-1)


def evaluate_accuracy(model, images, labels, batch_size, sharding, preprocess=None, workers: int = 0) -> float:
    """Top-1 accuracy on ``images`` (an array, or a source streamed in batches through ``preprocess``)."""
    predictions = in_batches(predict, model, images, batch_size, sharding, preprocess, workers)
    return float(np.mean(predictions == np.asarray(labels)))
