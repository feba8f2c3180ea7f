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
    arr = arr.astype(np.float64)
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
