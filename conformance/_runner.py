"""Runs the properties against an implementation with Hypothesis and collects one outcome per (property, router)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
import time
import types

import hypothesis
import numpy as np
from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis.errors import Unsatisfiable, UnsatisfiedAssumption
from hypothesis.reporting import with_reporter

from reference import ROUTERS

from ._coverage import NotCovered, check_api, declared, is_covered, require_library
from ._properties import PROPERTIES, Context, Property
from ._recorder import Recorder

# Shrinking is on (a failure is reported with a small counterexample); Hypothesis's "explain" phase, which
# traces every line while shrinking, is off: it made a single failure take minutes.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
_COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck), "phases": PHASES}
PROFILES = {
    # Fast feedback while developing.
    "dev": settings(max_examples=10, **_COMMON),
    # What the README's test command runs: the same examples on every run, no timing-based failures.
    "ci": settings(max_examples=25, derandomize=True, database=None, **_COMMON),
    # The mutation score (tools/mutation_score.py): a few examples, the same on every run, one run per mutant.
    "quick": settings(max_examples=10, derandomize=True, database=None, **_COMMON),
    # `tox -e conformance`: many more examples, random each run.
    "thorough": settings(max_examples=400, **_COMMON),
}
for _name, _profile in PROFILES.items():
    settings.register_profile(f"conformance-{_name}", _profile)


@dataclasses.dataclass
class Outcome:
    property: str
    group: str
    router: str  # "-" for router-independent properties
    status: str  # "passed", "failed", "n/a"
    examples: int = 0
    message: str = ""
    counterexample: str = ""
    snippet: str = ""
    seconds: float = 0.0


def load(name_or_module) -> types.ModuleType:
    if isinstance(name_or_module, types.ModuleType):
        return name_or_module
    try:
        return importlib.import_module(name_or_module)
    except ImportError as err:
        raise SystemExit(f"cannot import the implementation {name_or_module!r}: {err}") from err
    except Exception as err:  # the module itself fails while it is imported: one line, not its traceback
        raise SystemExit(f"importing the implementation {name_or_module!r} failed: {type(err).__name__}: "
                         f"{err}") from err  # fmt: skip


# Choice: the wall-clock limit of one (property, router) check, per profile: some 20 times the slowest check of
# the profile measured on a loaded machine, so it stops only an implementation that hangs. The CLI's
# --time-limit overrides it (0: none). It is enforced with SIGALRM, so only in the main thread (elsewhere: none).
TIME_LIMITS = {"dev": 120.0, "quick": 120.0, "ci": 300.0, "thorough": 3600.0}


class PropertyTimeout(BaseException):  # not an Exception: Hypothesis must not catch it and retry the example
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise ``PropertyTimeout`` in the main thread once ``seconds`` have passed (None or 0: no limit)."""
    import signal
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise PropertyTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def precision_context(impl: types.ModuleType, dtype: str):
    """float64: let a JAX implementation compute in float64 (the suite's inputs are float64 arrays). An adapter
    imports its library lazily, so one that declares ``FRAMEWORK = "JAX"`` counts even before jax is loaded."""
    if dtype == "float64" and ("jax" in sys.modules or getattr(impl, "FRAMEWORK", None) == "JAX"):
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def run_property(
    prop: Property, router: str | None, impl, ref, profile: str, shrink: bool = True, dtype: str = "float64",
    limit: float | None = None,
) -> Outcome:
    """One property on one router. With an adapter (``impl.COVERS``, see ``_coverage``), an example counts only
    if it called the library's own code. If the first example's calls all went to delegated functions, the
    property is ``n/a`` at once: the calls a property makes depend on the property and the router, not on the
    drawn values, except for properties marked ``calls_vary`` (the bad-input cases), whose delegated examples
    are discarded one by one. An example the adapter refuses with ``NotCovered`` is discarded. A property
    with no example left is ``n/a``, with the reason. A check that runs longer than ``limit`` seconds (default:
    ``TIME_LIMITS[profile]``; 0: none) fails, naming the property and the limit."""
    label = router or "-"
    if prop.needs and not hasattr(impl, prop.needs):
        return Outcome(prop.name, prop.group, label, "n/a", message=f"the implementation has no {prop.needs}")
    covers = declared(impl)
    recorder = Recorder()
    ctx = Context(recorder.wrap(impl, "impl"), recorder.wrap(ref, "ref"), impl, ref, np.dtype(dtype))
    count = 0
    failing: list = []  # the calls of the last example that failed: the snippet replays it, not the last one run
    delegated: list[str] = []  # set when the first example reached only delegated functions
    outside: list[str] = []  # the adapter's NotCovered messages

    def body(case):
        nonlocal count
        if delegated:
            reject()
        recorder.clear()
        try:
            prop.check(ctx, case, router)
        except NotCovered as err:
            outside.append(str(err))
            reject()
        except Exception as err:
            # Hypothesis goes on after a failing explicit example (it reports every distinct failure), so the
            # recorder's calls at the end can be another, passing example's. A discarded case is no failure.
            if not isinstance(err, UnsatisfiedAssumption):
                failing[:] = recorder.calls
            raise
        own = [(n, a, k) for alias, n, a, k, r in recorder.calls if alias == "impl" and not isinstance(r, NotCovered)]
        if covers is not None and not any(is_covered(covers, *call) for call in own):
            if prop.calls_vary:
                outside.append("every drawn case reached only functions delegated to the reference")
                reject()
            delegated.extend(
                sorted({n if n != "route" else f"route({a[0] if a else k.get('router')})" for n, a, k in own})
                or ["no function of the implementation"]
            )
            reject()
        count += 1

    test = given(prop.strategy(router))(body)
    for case in prop.examples:
        test = example(case)(test)
    chosen = PROFILES[profile]
    if prop.share < 1:
        chosen = settings(chosen, max_examples=max(10, round(prop.share * chosen.max_examples)))
    if not shrink:
        chosen = settings(chosen, phases=[p for p in PHASES if p is not Phase.shrink])
    test = chosen(test)

    def not_applicable() -> Outcome | None:
        """n/a with its reason when no example ran the implementation's own code, else None."""
        if count == 0 and delegated:
            reason = f"reaches only functions delegated to the reference: {', '.join(delegated)}"
        elif count == 0 and outside:
            reason = f"outside the library: {outside[0]}"
        else:
            return None
        return Outcome(prop.name, prop.group, label, "n/a", message=reason)

    reports: list[str] = []
    limit = TIME_LIMITS[profile] if limit is None else limit
    try:
        with with_reporter(reports.append), time_limit(limit):
            test()
    except PropertyTimeout:
        return Outcome(prop.name, prop.group, label, "failed", count,
                       f"{prop.name} [{label}] did not finish within its time limit of {limit:g} s (after {count} "
                       f"example(s)): the implementation hangs or is far too slow (--time-limit SECONDS, 0: none)")
    except Unsatisfiable as err:
        return not_applicable() or Outcome(
            prop.name, prop.group, label, "failed", count, f"too many cases discarded: {err}"
        )
    except Exception as err:
        modules = {"impl": impl.__name__, "ref": ref.__name__}
        # Hypothesis attaches the shrunk case to the exception's notes; several distinct failures come as a group.
        errors = list(err.exceptions) if isinstance(err, BaseExceptionGroup) else [err]
        message = "\n".join(f"{type(e).__name__}: {e}" for e in errors)
        notes = [n for e in [err, *errors] for n in getattr(e, "__notes__", ())]
        return Outcome(
            prop.name, prop.group, label, "failed", count + 1, message,
            "\n".join([*(str(r) for r in reports), *notes]), recorder.snippet(modules, failing or None),
        )  # fmt: skip
    # Every example discarded without Hypothesis complaining (explicit ones only) is n/a too, never a pass.
    return not_applicable() or Outcome(prop.name, prop.group, label, "passed", count)


def run(
    impl="optimized",
    ref="reference",
    *,
    profile: str = "ci",
    routers: tuple[str, ...] | None = None,
    properties: tuple[str, ...] | None = None,
    dtype: str = "float64",
    fail_fast: bool = False,
    shrink: bool = True,
    progress=None,
    limit: float | None = None,
) -> list[Outcome]:
    """Check ``impl`` against ``ref``; returns an outcome per (property, router).

    ``routers`` narrows the router-specific properties (router-independent ones always run unless
    ``properties`` names a subset). ``fail_fast`` stops at the first failure; ``shrink=False`` reports the
    first failing example without minimizing it. ``progress(done, total, label)`` is called before each.
    ``limit``: each check's time limit in seconds (default ``TIME_LIMITS[profile]``, 0: none). An implementation
    that declares no ``COVERS`` must expose every name of the spec's API: the missing ones are one ValueError.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    routers = tuple(routers or ROUTERS)
    for r in routers:
        if r not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}; got {r!r}")
    known = {p.name for p in PROPERTIES}
    for name in properties or ():
        if name not in known:
            raise ValueError(f"unknown property {name!r}; known: {', '.join(sorted(known))}")
    impl, ref = load(impl), load(ref)
    require_library(impl)
    declared(impl)  # a malformed COVERS is refused before any work
    check_api(impl)  # a missing name is one list, not a failure of every property that calls it
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0):
        raise ValueError(f"limit must be a number of seconds >= 0 (0: none) or None, got {limit!r}")
    jobs = []
    for prop in PROPERTIES:
        if properties and prop.name not in properties:
            continue
        for router in [None] if prop.routers is None else [r for r in prop.routers if r in routers]:
            jobs.append((prop, router))
    outcomes = []
    with precision_context(impl, dtype):
        for i, (prop, router) in enumerate(jobs):
            if progress:
                progress(i, len(jobs), f"{prop.name} {router or ''}".strip())
            start = time.perf_counter()
            outcomes.append(run_property(prop, router, impl, ref, profile, shrink, dtype, limit))
            outcomes[-1].seconds = time.perf_counter() - start
            if fail_fast and outcomes[-1].status == "failed":
                break
    if progress:
        progress(len(jobs), len(jobs), "done")
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """Markdown table: one row per property, one column per router ("-": router-independent)."""
    columns = ["-", *ROUTERS]
    present = [c for c in columns if any(o.router == c for o in outcomes)]
    short = {"-": "any", **{r: r.replace("_expert_choice", " EC").replace("_token_choice", " TC") for r in ROUTERS}}
    lines = ["| property | " + " | ".join(short[c] for c in present) + " |", "|---" * (len(present) + 1) + "|"]
    rows: dict[str, dict[str, Outcome]] = {}
    for o in outcomes:
        rows.setdefault(o.property, {})[o.router] = o
    for name, cells in rows.items():
        rendered = []
        for c in present:
            o = cells.get(c)
            if o is None:
                rendered.append("")
            elif o.status == "passed":
                rendered.append(f"passed ({o.examples})")
            elif o.status == "n/a":
                rendered.append("n/a")
            else:
                rendered.append(f"**FAILED** ({o.examples})")
        lines.append(f"| {name} | " + " | ".join(rendered) + " |")
    return "\n".join(lines)


def failure_report(outcomes: list[Outcome]) -> str:
    parts = []
    for o in outcomes:
        if o.status != "failed":
            continue
        parts.append(f"### {o.property} [{o.router}] failed after {o.examples} example(s)\n\n{o.message}\n")
        if o.counterexample:
            parts.append("Shrunk counterexample (Hypothesis):\n\n" + o.counterexample + "\n")
        if o.snippet:
            parts.append("Reproduce with:\n\n```python\n" + o.snippet + "\n```\n")
    return "\n".join(parts)


__all__ = ["PROFILES", "Outcome", "failure_report", "hypothesis", "run", "table"]
