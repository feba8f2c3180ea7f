"""Mutant: the trainable layer's load loss multiplies by the noise's standard deviation instead of dividing.

Eq. (13)-(14): P(expert r selected) = 1 - Phi((threshold - logit) / sigma). Here z = (threshold - logit) * sigma,
the noise scale in the wrong place: with sigma = 1/E the loads are nearly equal and the loss almost vanishes.
Only ``aux["load_loss"]`` of ``optimized.MoELayer`` in training changes; the spec's functions are the reference's.
"""

import sys

from ._base import build, wrapped_layer


def call(inner, x, key, inference):
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import ndtr

    y, aux = inner(x, key=key, inference=inference)
    if inference or key is None or inner.router != "softmax_token_choice":
        return y, aux
    logits = x @ inner.router_weight.astype(x.dtype)
    noisy = logits + inner.noise_std * jax.random.normal(key, logits.shape, logits.dtype)
    threshold = jnp.sort(noisy, axis=1)[:, logits.shape[1] - inner.k]
    load = ndtr(-(threshold[:, None] - logits) * inner.noise_std).sum(axis=0)  # the bug: * instead of /
    return y, aux | {"load_loss": load.var() / load.mean() ** 2}


sys.modules[__name__] = build("load_loss_scale_misplaced", __doc__, MoELayer=wrapped_layer(call))
