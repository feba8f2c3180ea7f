"""Mutant: the trainable layer takes its importance loss on the softmax of the noisy logits.

Appendix A's importance loss is on the softmax of the clean logits ``x @ W``; the noise belongs to the load
loss only. The spec's functions are the reference's; the layer is ``optimized.MoELayer`` with this one bug.
"""

import sys

from ._base import build, wrapped_layer


def call(inner, x, key, inference):
    import jax

    y, aux = inner(x, key=key, inference=inference)
    if inference or key is None:
        return y, aux
    logits = x @ inner.router_weight.astype(x.dtype)
    noisy = logits + inner.noise_std * jax.random.normal(key, logits.shape, logits.dtype)
    importance = jax.nn.softmax(noisy, axis=-1).sum(axis=0)  # the bug: noisy logits
    return y, aux | {"importance_loss": importance.var() / importance.mean() ** 2}


sys.modules[__name__] = build("importance_on_noisy_logits", __doc__, MoELayer=wrapped_layer(call))
