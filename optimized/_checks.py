"""Argument validation for the JAX routers.

Shapes, ranks and static integers are checked at trace time, so they raise before any compilation. Values
(finiteness) can only be checked on concrete arrays: the functional API checks them when it is called
eagerly, and skips the check under ``jax.jit`` where the values are not known (the training loop instead
stops on a non-finite loss).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _rank_of(shape_doc: str) -> int:
    return len([part for part in shape_doc.strip("()").split(",") if part.strip()])


def float_array(name: str, value, shape_doc: str) -> jax.Array:
    """``value`` as a floating JAX array of the rank in ``shape_doc``; finite when it is concrete.

    Integer input becomes float32; floating input keeps its dtype (float32 unless x64 is enabled).
    """
    if isinstance(value, jax.core.Tracer):
        arr = value
    else:
        try:
            host = np.asarray(value)
        except Exception as err:
            raise TypeError(f"{name} must be an array of shape {shape_doc}, got {type(value).__name__}") from err
        if host.dtype == bool or host.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {host.dtype}")
        if host.ndim == _rank_of(shape_doc) and host.size and not np.isfinite(host).all():
            bad = ~np.isfinite(host)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} must be finite, found {int(bad.sum())} non-finite entries "
                f"(first {host[first]} at index {first})"
            )
        arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if jnp.issubdtype(arr.dtype, jnp.integer):
            arr = arr.astype(jnp.float32)
        else:
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != _rank_of(shape_doc):
        raise ValueError(
            f"{name} must have shape {shape_doc} ({_rank_of(shape_doc)} dimensions), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape} for {shape_doc}")
    return arr


def same_shape(name: str, arr, expected: tuple[int, ...], shape_doc: str) -> None:
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {shape_doc} = {tuple(expected)}, got {tuple(arr.shape)}")


def integer(name: str, value, *, minimum: int, maximum: int | None = None, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{what}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}{what}, got {value}")
    return value


def real_in(name: str, value, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    """A finite real number in [low, high] (or (low, high] with ``low_open``); NaN and infinities are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    inside = (value > low if low_open else value >= low) and value <= high
    if not (math.isfinite(value) and inside):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value}")
    return value


def positive_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


# How far from 1 a row of probabilities may sum, by the width in bits of the caller's floats (integers: 64); the
# spec's table (reference/_checks.py), written again here because optimized never imports reference.
ROW_SUM_TOLERANCE = {64: 1e-9, 32: 1e-5, 16: 1e-2}


def row_stochastic(name: str, value) -> None:
    """Raise unless every entry of ``value`` is >= 0 and every row sums to 1 within its dtype's tolerance.

    Checked on concrete values only: under ``jax.jit`` (a tracer) the values are unknown and nothing is checked,
    as for finiteness in ``float_array``. ``value`` is the caller's array, already validated by ``float_array``.
    """
    if isinstance(value, jax.core.Tracer):
        return
    host = np.asarray(value)
    bits = 64 if host.dtype.kind in "iu" else 8 * host.dtype.itemsize
    tol = ROW_SUM_TOLERANCE[64 if bits >= 64 else 32 if bits >= 32 else 16]
    probabilities = host.astype(np.float64)
    expected = f"every entry >= 0 and every row summing to 1 (within {tol:g} for {host.dtype})"
    negative = np.argwhere(probabilities < 0)
    if negative.size:
        first = tuple(int(i) for i in negative[0])
        found = f"entry {first} is {float(probabilities[first])!r} < 0"
    else:
        sums = probabilities.sum(axis=1)
        off = np.abs(sums - 1) > tol
        if not off.any():
            return
        row = int(np.argmax(off))
        found = f"row {row} sums to {float(sums[row])!r}"
    raise ValueError(
        f"{name} must be routing probabilities such as softmax(logits), {expected}; {found}: "
        f"it looks like logits, pass their softmax"
    )
