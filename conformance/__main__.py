"""``python -m conformance``: check an implementation against the reference and print a table."""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from reference import ROUTERS

from ._coverage import declared, describe, require_library
from ._runner import PROFILES, TIME_LIMITS, failure_report, load, run, table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Check an implementation of the six MoE routers against the reference (NumPy spec).",
    )
    parser.add_argument("--impl", default="optimized", help="importable module under test (default: optimized)")
    parser.add_argument("--ref", default="reference", help="the spec module (default: reference)")
    parser.add_argument("--profile", default="ci", choices=sorted(PROFILES), help="Hypothesis profile (default: ci)")
    parser.add_argument("--router", action="append", choices=ROUTERS, help="only this router (repeatable)")
    parser.add_argument("--property", action="append", help="only this property (repeatable)")
    parser.add_argument(
        "--dtype", default=None, choices=("float64", "float32"),
        help="float64 lets a JAX implementation compute in float64; float32 judges by float32 tolerances. Default: "
        "the implementation's DTYPE if it declares one (an adapter: the dtype its library computes in), else float64",
    )  # fmt: skip
    parser.add_argument(
        "-x", "--exitfirst", action="store_true",
        help="stop at the first failing property (as pytest's -x); the report says how many checks did not run",
    )  # fmt: skip
    parser.add_argument(
        "--time-limit", type=float, default=None, metavar="SECONDS",
        help="each check fails after this many seconds, naming its property (an implementation that hangs); "
        "default per profile: " + ", ".join(f"{k} {v:g}" for k, v in TIME_LIMITS.items()) + "; 0: none",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    impl = load(args.impl)
    dtype = args.dtype or getattr(impl, "DTYPE", "float64")
    try:  # an adapter's library must be there before any work
        installed = require_library(impl)
    except ValueError as err:
        parser.error(str(err))
    if installed is not None and installed != impl.VERSION:
        print(f"note: {impl.LIBRARY} {installed} is installed; {impl.__name__}'s findings were traced in "
              f"{impl.VERSION}", file=sys.stderr)  # fmt: skip
    tty = sys.stderr.isatty()
    tqdm.monitor_interval = 0  # no monitor thread: it only tunes how often the bar redraws
    bar = tqdm(total=None, unit="check", file=sys.stderr, disable=args.no_progress, mininterval=0.1 if tty else 30.0,
               ascii=not tty)  # fmt: skip

    total = [0]  # the number of checks the run planned, for the --exitfirst report

    def progress(done, planned, label):
        total[0] = planned
        bar.total = planned
        bar.set_postfix_str(label[:60], refresh=False)
        bar.update(done - bar.n)

    try:
        outcomes = run(
            impl, args.ref, profile=args.profile, routers=args.router, properties=args.property,
            dtype=dtype, fail_fast=args.exitfirst, progress=progress, limit=args.time_limit,
        )  # fmt: skip
    except ValueError as err:
        bar.close()
        parser.error(str(err))
    bar.close()
    print(f"\n{args.impl} against {args.ref}: profile {args.profile}, {dtype}; covers {describe(declared(impl))}\n")
    print(table(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    passed = sum(o.status == "passed" for o in outcomes)
    print(f"\n{passed} passed, {len(failed)} failed, {len(outcomes) - passed - len(failed)} not applicable "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    if args.exitfirst and failed and len(outcomes) < total[0]:
        print(f"stopped early at the first failure (--exitfirst): {total[0] - len(outcomes)} of {total[0]} checks "
              f"did not run")  # fmt: skip
    if failed:
        print("\n" + failure_report(outcomes))
    if failed and hasattr(impl, "FINDINGS"):  # an adapter: say which failures its library's findings explain
        from .adapters._base import explain

        explained, unexplained, _ = explain(impl, outcomes)
        for o, findings in explained:
            for f in findings:
                print(f"{o.property} [{o.router}]: {f.verdict}: {f.cause} ({f.where})")
        for o in unexplained:
            print(f"{o.property} [{o.router}]: not explained by {impl.__name__}.FINDINGS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
