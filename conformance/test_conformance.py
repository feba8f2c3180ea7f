"""The conformance suite as pytest tests, for a port's own CI: one test per property and router.

    CONFORMANCE_IMPL=my_port pytest --pyargs conformance               # every property, every router
    CONFORMANCE_IMPL=my_port pytest --pyargs conformance -x -k route   # pytest's -x, -k, -n (xdist) work
    CONFORMANCE_DTYPE=float32 CONFORMANCE_PROFILE=thorough pytest --pyargs conformance

The environment names the implementation (``CONFORMANCE_IMPL``, an importable module; default ``optimized``),
the spec (``CONFORMANCE_REF``, default ``reference``), the Hypothesis profile (``CONFORMANCE_PROFILE``: dev, ci,
quick or thorough; default ci) and the dtype it is judged by (``CONFORMANCE_DTYPE``; default the module's
``DTYPE``, else float64), as the array API standard's test suite is pointed at an array library. A property
that does not apply (an adapter's delegated function, no ``MoELayer``) is skipped with its reason; a failure
shows the message, Hypothesis's falsifying example and a snippet that replays the calls.
A module missing names of the API stops the session with one list of them. ``python -m conformance`` runs the
same properties and prints them as a table.
"""

from __future__ import annotations

import os

try:
    import pytest
except ImportError as err:  # this module is the suite as pytest tests; the CLI (python -m conformance) needs no pytest
    raise ImportError("conformance.test_conformance runs under pytest (`pip install \".[conformance]\"` or "
                      "`pip install pytest`, then `pytest --pyargs conformance`); without it use "
                      "`python -m conformance`") from err

from ._coverage import check_api
from ._properties import PROPERTIES
from ._runner import failure_report, load, precision_context, run_property

IMPL = os.environ.get("CONFORMANCE_IMPL", "optimized")
REF = os.environ.get("CONFORMANCE_REF", "reference")
PROFILE = os.environ.get("CONFORMANCE_PROFILE", "ci")
CASES = [(p, r) for p in PROPERTIES for r in ([None] if p.routers is None else p.routers)]


@pytest.fixture(autouse=True, scope="session")
def _whole_api():
    """A module missing names of the API stops the session with one list of them, not a failure per property."""
    try:
        check_api(load(IMPL))
    except ValueError as err:
        pytest.exit(f"conformance: {err}", returncode=1)


@pytest.mark.parametrize("prop, router", CASES, ids=[f"{p.name}-{r or 'any'}" for p, r in CASES])
def test_property(prop, router):
    impl, ref = load(IMPL), load(REF)
    dtype = os.environ.get("CONFORMANCE_DTYPE") or getattr(impl, "DTYPE", "float64")
    with precision_context(impl, dtype):
        outcome = run_property(prop, router, impl, ref, PROFILE, dtype=dtype)
    if outcome.status == "n/a":
        pytest.skip(f"n/a: {outcome.message}")
    if outcome.status == "failed":
        pytest.fail(f"{IMPL} against {REF} ({PROFILE}, {dtype}):\n\n" + failure_report([outcome]), pytrace=False)
