"""``python -m conformance.vectors``: regenerate the golden vectors, or ``--check MODULE`` to replay them."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time

from ._store import HERE, MANIFEST, generate, replay


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance.vectors",
        description="Regenerate the golden vectors from the reference, or replay them through an implementation.",
    )
    parser.add_argument("--check", metavar="MODULE", help="replay the stored vectors through this importable module")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="with --check: float64 runs a JAX implementation inside jax.enable_x64(True) (default: float32)",
    )
    parser.add_argument("--dir", default=None, help=f"the vectors' folder (default: {HERE})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.check is None:
        manifest = generate(args.dir)
        folder = HERE if args.dir is None else args.dir
        files = sorted({case["file"] for case in manifest["cases"]})
        for name in [*files, MANIFEST]:
            print(f"wrote {folder}/{name}")
        print(f"{len(manifest['cases'])} cases in {len(files)} npz files, {time.perf_counter() - start:.1f} s")
        return 0
    try:
        impl = importlib.import_module(args.check)
    except ImportError as err:
        parser.error(f"cannot import {args.check!r}: {err}")
    context = contextlib.nullcontext()
    if args.dtype == "float64" and "jax" in sys.modules:
        import jax

        context = jax.enable_x64(True)
    with context:
        failures, dtypes = replay(impl, args.dir)
    for failure in failures:
        print(f"FAILED {failure}")
    status = f"{len(failures)} failures" if failures else "all cases match"
    print(
        f"{args.check} against the golden vectors: {status} (real outputs computed in {', '.join(sorted(dtypes))}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
