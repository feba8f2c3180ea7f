"""``python -m conformance``: check an implementation against the reference and print a table."""

from __future__ import annotations

import argparse
import sys
import time

from ._properties import ROUTERS
from ._runner import PROFILES, failure_report, run, table


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
        "--dtype", default="float64", choices=("float64", "float32"),
        help="float64 (default) lets a JAX implementation compute in float64; float32 checks its default dtype",
    )  # fmt: skip
    args = parser.parse_args(argv)
    start = time.perf_counter()

    def progress(done, total, label):
        width = 30
        filled = int(width * done / max(total, 1))
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:60]:<60}", end="", file=sys.stderr)
        if done == total:
            print(file=sys.stderr)

    try:
        outcomes = run(
            args.impl, args.ref, profile=args.profile, routers=args.router, properties=args.property,
            dtype=args.dtype, progress=progress,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    print(f"\n{args.impl} against {args.ref}: profile {args.profile}, {args.dtype}\n")
    print(table(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    passed = sum(o.status == "passed" for o in outcomes)
    print(f"\n{passed} passed, {len(failed)} failed, {len(outcomes) - passed - len(failed)} not applicable "
          f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
    if failed:
        print("\n" + failure_report(outcomes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
