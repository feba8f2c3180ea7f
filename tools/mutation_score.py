"""Mutation score of the conformance suite: mutmut mutates a copy of the reference, the suite must reject it.

Each mutant of ``reference/`` is a faulty port of the spec. It is copied to a package ``port`` in a scratch
directory, beside the pristine ``reference`` and the ``conformance`` suite, and mutmut (2.x) mutates ``port``
one change at a time and runs ``python -m conformance --impl port --ref reference -x`` on it: a mutant is
killed when the suite fails it. The scope is the routing, allocation, Sinkhorn, sparse-OT and Soft MoE code
(``SCOPE``); validation and error messages (``_checks.py``) are the bad-input property's business. String
mutations are off (``--disable-mutation-types string,fstring``): in these files the strings are error messages
and the router names, and a renamed router fails every property that names it.

    python tools/mutation_score.py                     # tox -e mutation; quick profile, hours (106 mutants: 54 min)
    python tools/mutation_score.py --profile ci        # slower, more examples per property
    python tools/mutation_score.py --results           # the survivors of the last run, as diffs
    python tools/mutation_score.py --files _sparse_ot.py --scratch .mutation-b   # a part, in parallel

The scratch directory (``.mutation/``) keeps mutmut's cache: a second run re-tests only what changed.
Never run ``--results`` (or ``mutmut show``) while a run is under way: it re-reads the mutated file into the cache
and the run crashes (``Mutant.line is required``).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCOPE = ("_affinity.py", "_allocation.py", "_route.py", "_sparse_ot.py", "_soft_moe.py")


def prepare(scratch: pathlib.Path, profile: str, files=SCOPE) -> None:
    scratch.mkdir(exist_ok=True)
    for package in ("reference", "conformance"):
        shutil.rmtree(scratch / package, ignore_errors=True)
        shutil.copytree(ROOT / package, scratch / package, ignore=shutil.ignore_patterns("__pycache__"))
    if not (scratch / "port").exists():  # mutmut mutates port/ in place and restores it; keep its copy
        shutil.copytree(ROOT / "reference", scratch / "port", ignore=shutil.ignore_patterns("__pycache__"))
    runner = f"{sys.executable} -m conformance --impl port --ref reference --profile {profile} -x --no-progress"
    paths = ",".join(f"port/{name}" for name in files)
    (scratch / "setup.cfg").write_text(f"[mutmut]\npaths_to_mutate={paths}\nrunner={runner}\ntests_dir=conformance/\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", default=str(ROOT / ".mutation"), help="working directory (default .mutation/)")
    parser.add_argument("--profile", default="quick", help="the suite's Hypothesis profile (default quick)")
    parser.add_argument("--files", nargs="+", default=SCOPE, help=f"files of reference/ to mutate (default {SCOPE})")
    parser.add_argument("--results", action="store_true", help="print the last run's survivors and exit")
    args = parser.parse_args(argv)
    scratch = pathlib.Path(args.scratch)
    mutmut = [sys.executable, "-m", "mutmut"]
    if not args.results:
        prepare(scratch, args.profile, args.files)
        run = [*mutmut, "run", "--no-progress", "--disable-mutation-types", "string,fstring"]
        subprocess.run(run, cwd=scratch, check=False)
    subprocess.run([*mutmut, "results"], cwd=scratch, check=False)
    survivors = subprocess.run([*mutmut, "result-ids", "survived"], cwd=scratch, capture_output=True, text=True)
    for mutant in survivors.stdout.split():
        subprocess.run([*mutmut, "show", mutant], cwd=scratch, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
