"""Gradients of the trainable layer, for the conformance suite's gradient property (``layer_gradients``)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._layer import MoELayer


def layer_gradients(router: str, x, weight, experts, cotangent, *, factor=None) -> tuple[jax.Array, ...]:
    """Gradients of ``sum(cotangent * MoELayer(x))`` (inference: no noise) with respect to the router weights,
    the experts' parameters and the tokens, by ``jax.grad`` through the layer.

    The layer holds ``weight`` (W (D, E), or phi (D, E, S) for Soft MoE) and the experts ``(w1, b1, w2, b2)``;
    ``factor`` is the router's (None: 1, for Soft MoE the one that sized phi). The routing decision is piecewise
    constant: the router learns through the combine weights (sec. 3.4), and for Soft MoE through its dispatch
    and combine softmaxes as well.

    Returns:
      ``(d_weight, d_w1, d_b1, d_w2, d_b2, d_x)``, each of its argument's shape.

    >>> import numpy as np
    >>> g = layer_gradients("softmax_expert_choice", np.ones((4, 3)), np.ones((3, 2)),
    ...                     (np.ones((2, 3, 5)), np.ones((2, 5)), np.ones((2, 5, 3)), np.ones((2, 3))), np.ones((4, 3)))
    >>> [a.shape for a in g]
    [(3, 2), (2, 3, 5), (2, 5), (2, 5, 3), (2, 3), (4, 3)]
    """
    x = jnp.asarray(x)
    weight, cotangent = jnp.asarray(weight, x.dtype), jnp.asarray(cotangent, x.dtype)
    params = tuple(jnp.asarray(p, x.dtype) for p in experts)
    tokens, width = x.shape
    num_experts = weight.shape[1]
    if factor is None:
        factor = weight.shape[2] * num_experts / tokens if router == "soft_moe" else 1
    layer = MoELayer(router, width=width, hidden=params[0].shape[2], num_experts=num_experts, group_size=tokens,
                     factor=factor, key=jax.random.key(0))  # fmt: skip
    return _gradients(layer, (weight, *params, x), cotangent)


def _leaves(layer: MoELayer):
    return layer.router_weight, layer.experts.w1, layer.experts.b1, layer.experts.w2, layer.experts.b2


@eqx.filter_jit
def _gradients(layer, values, cotangent):
    def loss(values):
        *arrays, x = values
        y, _ = eqx.tree_at(_leaves, layer, tuple(arrays))(x, inference=True)
        return jnp.sum(y * cotangent)

    return tuple(jax.grad(loss)(values))
