"""Mutant: the layer's gradients treat Soft MoE's dispatch weights as constants (a ``stop_gradient`` on them).

Its forward pass is the spec's; the router weights phi and the tokens lose the part of their gradient that flows
through the dispatch softmax over tokens (eq. 10), which a port used for training must keep. The other routers'
gradients are ``optimized.layer_gradients``.
"""

import sys

from ._base import build


def layer_gradients(router, x, weight, experts, cotangent, *, factor=None):
    import jax
    import jax.numpy as jnp

    import optimized

    if router != "soft_moe":
        return optimized.layer_gradients(router, x, weight, experts, cotangent, factor=factor)
    x = jnp.asarray(x)
    values = tuple(jnp.asarray(a, x.dtype) for a in (weight, *experts, x))

    def loss(values):
        phi, w1, b1, w2, b2, tokens = values
        logits = jnp.einsum("td,des->tes", tokens, phi)
        dispatch = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=0))  # the bug
        combine = jax.nn.softmax(logits.reshape(logits.shape[0], -1), axis=1).reshape(logits.shape)
        slots = jnp.einsum("tes,td->esd", dispatch, tokens)
        outputs = jnp.einsum("esh,ehd->esd", jax.nn.gelu(jnp.einsum("esd,edh->esh", slots, w1) + b1[:, None]), w2)
        y = jnp.einsum("tes,esd->td", combine, outputs + b2[:, None])
        return jnp.sum(y * jnp.asarray(cotangent, x.dtype))

    return tuple(jax.grad(loss)(values))


sys.modules[__name__] = build("soft_moe_dispatch_without_gradient", __doc__, layer_gradients=layer_gradients)
