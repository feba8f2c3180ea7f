"""Input validation shared by the reference routers.

Every public function validates its arguments with these helpers before doing any work, so bad input
raises a ``ValueError`` or ``TypeError`` naming the argument, the value and what was expected. Nothing is
clipped, dropped or rounded.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def real_array(name: str, value, shape_doc: str) -> np.ndarray:
    """Return ``value`` as a finite float64 array whose rank matches ``shape_doc`` (e.g. ``"(T, E)"``)."""
    ndim = len([part for part in shape_doc.strip("()").split(",") if part.strip()])
    try:
        arr = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of shape {shape_doc}, got {type(value).__name__}") from err
    if arr.dtype == bool or arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim} dimensions), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape} for {shape_doc}")
    arr = arr.astype(np.float64)  # Choice [float64]: the spec computes in float64, whatever the input's dtype
    finite = np.isfinite(arr)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(
            f"{name} must be finite, found {int((~finite).sum())} non-finite entries "
            f"(first {arr[first]} at index {first})"
        )
    return arr


def same_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], shape_doc: str) -> None:
    """Raise unless ``arr.shape == expected``."""
    if arr.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {shape_doc} = {tuple(expected)}, got {arr.shape}")


def integer(name: str, value, *, minimum: int, maximum: int | None = None, what: str = "") -> int:
    """Return ``value`` as an int after checking it is an integer in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{what}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bound}{what}, got {value}")
    return value


def positive_real(name: str, value) -> float:
    """Return ``value`` as a float after checking it is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


# Choice [importance-gates]: how far from 1 a row of probabilities may sum, by the width in bits of the caller's
# floats (integers: 64): about a hundred roundings of softmax in that width, far below what rows of logits miss 1 by.
ROW_SUM_TOLERANCE = {64: 1e-9, 32: 1e-5, 16: 1e-2}


def row_sum_tolerance(dtype: np.dtype) -> float:
    """The tolerance of ``ROW_SUM_TOLERANCE`` for an array of ``dtype`` (16-bit and narrower: the 16-bit one)."""
    bits = 64 if dtype.kind in "iu" else 8 * dtype.itemsize
    return ROW_SUM_TOLERANCE[64 if bits >= 64 else 32 if bits >= 32 else 16]


def row_stochastic(name: str, arr: np.ndarray, dtype: np.dtype) -> None:
    """Raise unless every entry of ``arr`` is >= 0 and every row sums to 1 within the tolerance of ``dtype``.

    ``arr`` is the float64 copy of the caller's array, ``dtype`` the caller's own dtype.
    """
    tol = row_sum_tolerance(dtype)
    expected = f"every entry >= 0 and every row summing to 1 (within {tol:g} for {dtype})"
    negative = np.argwhere(arr < 0)
    if negative.size:
        first = tuple(int(i) for i in negative[0])
        found = f"entry {first} is {float(arr[first])!r} < 0"
    else:
        sums = arr.sum(axis=1)
        off = np.abs(sums - 1) > tol
        if not off.any():
            return
        row = int(np.argmax(off))
        found = f"row {row} sums to {float(sums[row])!r}"
    raise ValueError(
        f"{name} must be routing probabilities such as softmax(logits), {expected}; {found}: "
        f"it looks like logits, pass their softmax"
    )
