"""The ViT's layer norm and matmuls, with their backward passes written out (``jax.custom_vjp``).

Each is the function autodiff would differentiate, with a backward pass that XLA compiles better on CPU (the
reasons are in each docstring and in benchmarks/results/vs_vmoe.md). ``optimized._vit`` builds its blocks from them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _layer_norm(x, scale, bias, eps=1e-6):
    """Layer norm over the last axis in float32: ``(x - mean) / sqrt(var + eps) * scale + bias``."""
    return _layer_norm_f32(x.astype(jnp.float32), scale, bias, eps)


# Choice: the layer norm has its backward pass written out, ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``
# with ``g = dy * scale``, instead of the one autodiff derives. Autodiff's backward is a sum of several broadcast
# terms (through the mean, the variance and the direct path); XLA on CPU fuses that sum into each of its three
# consumers (the next layer norm's backward, a matmul's input, the transposed copy for a weight gradient) and
# recomputes it there, along the whole residual stream: the ViT's backward pass moved 1.5x the bytes of vmoe's
# (benchmarks/results/vs_vmoe.md). Written out, the residual gradient is computed once.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm_f32(x, scale, bias, eps):
    return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x, scale, bias, eps):
    centered = x - x.mean(axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    normalized = centered * rstd
    return normalized * scale + bias, (normalized, rstd, scale)


def _layer_norm_backward(eps, residuals, dy):
    normalized, rstd, scale = residuals
    g = dy * scale
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - normalized * (g * normalized).mean(axis=-1, keepdims=True))
    batch = tuple(range(dy.ndim - 1))
    return dx, (dy * normalized).sum(axis=batch), dy.sum(axis=batch)


_layer_norm_f32.defvjp(_layer_norm_forward, _layer_norm_backward)


@jax.custom_vjp
def _matmul(x: Float[Array, "... D"], w: Float[Array, "D K"]) -> Float[Array, "... K"]:
    """``x @ w`` with its weight gradient computed as ``X^T @ G``, X and G the inputs and output gradients as rows.

    Choice: the backward pass is written out so that both of its products reach XLA in the (M, K) x (K, N)
    form that the CPU backend's fast matmul (YNNPACK) accepts. Autodiff's transpose of ``x @ w`` asks for
    ``dw`` as a product of two transposed operands, which XLA on CPU hands to its slower Eigen path (about
    1.6x the time of the same product in the fast path on this machine, benchmarks/results/vs_vmoe.md).
    The numbers are the same products, summed in another order.
    """
    return x @ w


def _matmul_forward(x, w):
    return x @ w, (x, w)


def _matmul_backward(residuals, g):
    x, w = residuals
    width, features = w.shape
    dw = x.reshape(-1, width).T @ g.reshape(-1, features)
    return (g @ w.T).astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _qkv(h: Float[Array, "B N D"], w: Float[Array, "D K"], bias: Float[Array, " K"], heads: int):
    """q, k and v, each (B, N, heads, D / heads): ``h @ w + bias`` by the weight's three column blocks.

    Choice: the forward pass is three products with the column blocks of the fused weight (independent matmuls the
    CPU runtime can run side by side; the same numbers as before this function existed), and the backward pass is
    written out so that it keeps only ``h`` and the fused weight: ``X^T G_i`` per block for the weight (as
    ``_matmul``), and one product ``[G_q G_k G_v] W^T`` for ``h``. Autodiff would copy each (D, D) block of the
    weight again for the backward pass, and those copies were the temporaries by which our B/32 step needed more
    memory than vmoe's (benchmarks/results/vs_vmoe.md); slicing one (B, N, 3D) product instead has a backward of
    three zero-padded buffers summed.
    """
    b, n, d = h.shape
    return tuple(
        (_matmul(h, w[:, i * d : (i + 1) * d]) + bias[i * d : (i + 1) * d]).reshape(b, n, heads, d // heads)
        for i in range(3)
    )


def _qkv_forward(h, w, bias, heads):
    return _qkv(h, w, bias, heads), (h, w)


def _qkv_backward(heads, residuals, grads):
    h, w = residuals
    b, n, d = h.shape
    x = h.reshape(b * n, d)
    g = [gi.reshape(b * n, d) for gi in grads]
    dw = jnp.concatenate([x.T @ gi for gi in g], axis=1)
    dh = jnp.concatenate(g, axis=1) @ w.T
    db = jnp.concatenate([gi.sum(0) for gi in g])
    return dh.reshape(b, n, d).astype(h.dtype), dw.astype(w.dtype), db.astype(w.dtype)


_qkv.defvjp(_qkv_forward, _qkv_backward)
