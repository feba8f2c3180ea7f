"""Building and calling an implementation's trainable ``MoELayer`` (JAX + Equinox) with a case's weights."""

from __future__ import annotations

from .._strategies import HIDDEN
from ._base import gelu_tanh


def mlp(params, r, inputs):
    w1, b1, w2, b2 = params
    return gelu_tanh(inputs @ w1[r] + b1[r]) @ w2[r] + b2[r]


def module_layer(ctx, case, router):
    """The implementation's ``MoELayer`` holding the case's weights, and those weights' dtype."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    x, w, factor, params = case["x"], case["weight"], case["factor"], case["experts"]
    t, e = x.shape[0], w.shape[1]
    layer = ctx.impl_raw.MoELayer(
        router, width=x.shape[1], hidden=HIDDEN, num_experts=e, group_size=t,
        factor=factor if router != "soft_moe" else w.shape[2] * e / t, key=jax.random.key(0),
    )  # fmt: skip
    dtype = layer.router_weight.dtype
    leaves = lambda m: (m.router_weight, m.experts.w1, m.experts.b1, m.experts.w2, m.experts.b2)  # noqa: E731
    return eqx.tree_at(leaves, layer, tuple(jnp.asarray(a, dtype) for a in (w, *params))), dtype


def as_jax(value, dtype):
    import jax.numpy as jnp

    return jnp.asarray(value, dtype)


_JITTED = {}


def call_layer(layer, x, key=None, inference=True):
    """``layer(x, key=key, inference=inference)``, jitted: each (structure, shape) compiles once."""
    import equinox as eqx

    if "layer" not in _JITTED:
        _JITTED["layer"] = eqx.filter_jit(lambda m, v, k, i: m(v, key=k, inference=i))
    return _JITTED["layer"](layer, x, key, inference)
