"""Comparison helpers and the one tolerance table of the suite."""

from __future__ import annotations

import numpy as np

# One table, by the dtype of the implementation's output. float64 implementations are held to what
# float64 arithmetic in a different order can differ by; float32 ones to float32 rounding through a few
# dozen operations (softmax, 20 Sinkhorn or Adam iterations, two matmuls).
TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-9, "atol": 1e-10},
    np.dtype(np.float32): {"rtol": 1e-4, "atol": 1e-5},
    np.dtype(np.float16): {"rtol": 1e-2, "atol": 1e-2},
}
# Scores closer than this (relative to their size) count as tied when a computed matrix decides a choice.
TIE_MARGIN = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 1e-4, np.dtype(np.float16): 1e-2}
# An iterative solver counts as converged when its marginal error is below this: about a thousand roundings of
# T/E <= 4 (float32 stalls near 1e-6, float64 near 1e-15).
CONVERGED = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 1e-4, np.dtype(np.float16): 1e-1}


def host(value) -> np.ndarray:
    """Any array-like (NumPy, JAX, PyTorch on CPU) as a NumPy array."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def precision(*values, floor=None) -> np.dtype:
    """The dtype whose tolerances apply: the least precise of the values' own dtypes (read before any
    conversion) and ``floor`` (the ``--dtype`` asked for). Non-float values (dispatch as integers or booleans,
    Python numbers) count as float64; an unknown float dtype counts as float32."""
    dtypes = [np.dtype(floor)] if floor is not None else []
    for value in values:
        dtype = host(value).dtype
        dtypes.append(dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64))
    known = [d if d in TOLERANCES else np.dtype(np.float32) for d in dtypes] or [np.dtype(np.float64)]
    return max(known, key=lambda d: TOLERANCES[d]["rtol"])


def tolerance(actual, floor=None) -> dict:
    return TOLERANCES[precision(actual, floor=floor)]


def margin(actual, floor=None) -> float:
    """Scores closer than this (relative to their size) count as tied in ``actual``'s dtype (or ``floor``)."""
    return TIE_MARGIN[precision(actual, floor=floor)]


def converged(actual, floor=None) -> float:
    return CONVERGED[precision(actual, floor=floor)]


def assert_close(what: str, actual, expected, scale: float = 1.0, dtype=None, slack: float = 0.0) -> None:
    """``actual`` equals ``expected`` within the tolerance of ``actual``'s dtype (times ``scale``).

    ``dtype``: the precision to judge by when coarser than ``actual``'s own, e.g. the dtype an implementation
    returned before the property converted its output, or the ``--dtype`` asked for. ``slack``: an absolute
    allowance added to ``atol``, for a computation whose sensitivity to rounding the caller measured (0 in float64).
    """
    a = host(actual)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape}, expected {e.shape}")
    judged = precision(a, floor=dtype)
    tol = TOLERANCES[judged]
    a64 = a.astype(np.float64)
    bad = ~np.isclose(a64, e, rtol=tol["rtol"] * scale, atol=tol["atol"] * scale + slack)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} entries differ beyond rtol={tol['rtol'] * scale:g}, "
            f"atol={tol['atol'] * scale + slack:g} ({judged}); max abs difference {np.abs(a64 - e).max():.3g}; "
            f"first at {first}: got {a64[first]!r}, expected {e[first]!r}"
        )


def assert_equal(what: str, actual, expected) -> None:
    a, e = host(actual), np.asarray(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape}, expected {e.shape}")
    if not np.array_equal(a.astype(np.float64), e.astype(np.float64)):
        diff = np.argwhere(a.astype(np.float64) != e.astype(np.float64))
        first = tuple(int(i) for i in diff[0])
        raise AssertionError(
            f"{what}: {len(diff)} entries differ; first at {first}: got {a[first]!r}, expected {e[first]!r}"
        )


def zero_one(what: str, dispatch, dtype) -> np.ndarray:
    """``dispatch`` as an exact 0/1 float64 array, refused unless every entry is 0 or 1 up to ``dtype``'s atol.

    A dispatch tensor is 0/1 by definition, but a library may form it in floating point (a straight-through
    ``(d + c) - c`` gives 0.99999994 in float32): that is rounding, not a different routing, and must not decide a
    verdict. Every exact comparison of dispatch tensors goes through this first.
    """
    d = host(dispatch).astype(np.float64)
    nearest = np.clip(np.round(d), 0.0, 1.0)
    off = np.abs(d - nearest)
    if off.size and off.max() > TOLERANCES[np.dtype(dtype)]["atol"]:
        first = tuple(int(i) for i in np.unravel_index(off.argmax(), off.shape))
        raise AssertionError(f"{what} is not 0/1: entry {first} is {d[first]!r}")
    return nearest


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def stable_ranking(scores: np.ndarray, axis: int) -> np.ndarray:
    """Indices by decreasing score along ``axis``, the lower index first among equal scores."""
    return np.argsort(-scores, axis=axis, kind="stable")


def min_gap(values: np.ndarray) -> float:
    """Smallest difference between consecutive sorted values (inf for fewer than two)."""
    v = np.sort(values)
    return float(np.min(np.diff(v))) if v.size > 1 else float("inf")
