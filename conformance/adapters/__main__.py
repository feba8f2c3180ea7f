"""``python -m conformance.adapters``: the compatibility matrix of third-party router implementations.

``--list`` prints what each adapter declares (no library needed). ``--report`` runs the suite on every adapter
(each judged by its library's ``DTYPE``), prints the matrix and the explained failures, and with ``--write``
replaces the matrix section of ``conformance/README.md``. The exit status is 1 if a failure has no ``Finding``
in its adapter, or a ``Finding`` explains nothing that failed: the published matrix must be the measured one.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pathlib
import sys
import time

from tqdm import tqdm

from reference import ROUTERS

from .. import _coverage
from .._runner import PROFILES, Outcome, run
from . import ADAPTERS
from ._base import explain

BEGIN, END = "<!-- adapters-matrix: begin -->", "<!-- adapters-matrix: end -->"
SHORT = {r: r.replace("_expert_choice", " EC").replace("_token_choice", " TC") for r in ROUTERS}


def load_adapter(name: str):
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(f"conformance.adapters.{name}")


def installed_version(adapter) -> str | None:
    try:
        return importlib.metadata.version(adapter.LIBRARY)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(adapter) -> str:
    name = adapter.__name__.rsplit(".", 1)[-1]
    lines = [f"{name}: {adapter.LIBRARY} {adapter.VERSION} ({adapter.FRAMEWORK}, computes in {adapter.DTYPE})",
             f"  covers: {_coverage.describe(_coverage.declared(adapter))}"]  # fmt: skip
    lines += [f"  setting: {s}" for s in adapter.SETTINGS]
    return "\n".join(lines)


def cell(name: str, outcomes: list[Outcome], notes: dict[tuple[str, str, str], list[int]]) -> str:
    """One property's outcome for one library, over the routers it covers: failed routers are named."""
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        refs = sorted({n for o in failed for n in notes.get((name, o.property, o.router), ())})
        where = ", ".join(SHORT.get(o.router, "any") for o in failed)
        return f"**failed** ({where})" + "".join(f" [{n}]" for n in refs)
    passed = [o for o in outcomes if o.status == "passed"]
    if passed:
        return "passed" if len(passed) == 1 else f"passed ({', '.join(SHORT.get(o.router, 'any') for o in passed)})"
    return "n/a"


def render(results: dict[str, tuple[object, list[Outcome], float]], profile: str) -> str:
    """The matrix (property x library) and, below it, every failure's cause, verdict and counterexample."""
    names = list(results)
    notes: dict[tuple[str, str, str], list[int]] = {}  # (library, property, router) -> note numbers
    numbers: dict[int, int] = {}  # one note per Finding
    for name in names:  # notes numbered in each adapter's FINDINGS order, those that explain a failure
        adapter, outcomes, _ = results[name]
        explained = explain(adapter, outcomes)[0]
        used = {id(f) for _, findings in explained for f in findings}
        for f in adapter.FINDINGS:
            if id(f) in used:
                numbers[id(f)] = len(numbers) + 1
        for o, findings in explained:
            notes[(name, o.property, o.router)] = sorted(numbers[id(f)] for f in findings)
    lines = [
        f"Measured with `python -m conformance.adapters --report` (profile `{profile}`; each library judged by the "
        "tolerances of the dtype it computes in). `passed`: the library's own code was checked on every example; "
        "`n/a`: the library has no such function (the adapter delegates it to the reference, or the property "
        "needs a trainable layer class); a failed cell names the routers that failed and its note.",
        "",
        "| library | version | framework | dtype | covers |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        adapter = results[name][0]
        covers = _coverage.describe(_coverage.declared(adapter)).replace("_", "\\_")
        lines.append(f"| `{name}` ({adapter.LIBRARY}) | {adapter.VERSION} | {adapter.FRAMEWORK} | {adapter.DTYPE} | "
                     f"{covers} |")  # fmt: skip
    lines += ["", "| property | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    properties = list(dict.fromkeys(o.property for name in names for o in results[name][1]))
    for prop in properties:
        cells = [cell(name, [o for o in results[name][1] if o.property == prop], notes) for name in names]
        if all(c == "n/a" for c in cells):
            continue
        lines.append(f"| `{prop}` | " + " | ".join(cells) + " |")
    lines += ["", "Properties that are `n/a` for every library are left out of the table.", ""]
    lines += ["### Why each failure fails", ""]
    for name in names:
        adapter, outcomes, _ = results[name]
        explained, unexplained, stale = explain(adapter, outcomes)
        if not explained and not unexplained:
            continue
        lines += [f"#### `{name}` ({adapter.LIBRARY} {adapter.VERSION})", ""]
        by_finding: dict[int, list[Outcome]] = {}
        for o, findings in explained:
            for finding in findings:
                by_finding.setdefault(id(finding), []).append(o)
        for finding in adapter.FINDINGS:
            failed = by_finding.get(id(finding))
            if not failed:
                continue
            which = ", ".join(_label(o) for o in failed)
            lines += [f"[{numbers[id(finding)]}] **{finding.verdict}**: {finding.cause} (`{finding.where}`). "
                      f"Fails: {which}.", ""]  # fmt: skip
        for o in unexplained:
            lines += [f"**UNEXPLAINED**: {_label(o)}: {o.message}", ""]
        for finding in stale:
            lines += [f"**STALE FINDING** (nothing failed that it explains): {finding.properties}: {finding.cause}", ""]
        lines += [
            "<details><summary>The failures as measured: message, shrunk counterexample as calls</summary>",
            "",
        ]
        for o in outcomes:
            if o.status == "failed":
                lines += [f"{_label(o)}:", "", "```", _short(o), "```", ""]
        lines += ["</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _label(o: Outcome) -> str:
    return f"`{o.property}`" + (f" [{o.router}]" if o.router != "-" else "")


def _short(o: Outcome, limit: int = 1500) -> str:
    """The failure's message and the shrunk case as the calls that replay it (the recorder's snippet, which
    spells every array out; Hypothesis's own rendering of the case is in ``o.counterexample``)."""
    text = f"{o.message.strip()}\n\nreplayed by:\n{(o.snippet or o.counterexample).strip()}".strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def write_readme(path: pathlib.Path, matrix: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} ... {END} section to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{matrix}{END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.adapters", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print what each adapter declares (no library needed)")
    parser.add_argument("--report", action="store_true", help="run the suite on every adapter and print the matrix")
    parser.add_argument("--write", action="store_true", help="with --report: write it into conformance/README.md")
    parser.add_argument("--adapter", action="append", choices=ADAPTERS, help="only this adapter (repeatable)")
    parser.add_argument("--profile", default="ci", choices=sorted(PROFILES), help="Hypothesis profile (default: ci)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    names = args.adapter or list(ADAPTERS)
    if args.write and (not args.report or args.adapter):
        parser.error("--write needs --report over every adapter (no --adapter)")
    adapters = {n: load_adapter(n) for n in names}
    if args.list or not args.report:
        print("\n\n".join(describe(a) for a in adapters.values()))
        return 0
    missing = [f"{a.LIBRARY}=={a.VERSION} (installed: {installed_version(a)})" for a in adapters.values()
               if installed_version(a) != a.VERSION]  # fmt: skip
    if missing:
        parser.error("the report is measured on the pinned versions; install them (tox -e adapters does): "
                     + ", ".join(missing))  # fmt: skip
    results = {}
    tty = sys.stderr.isatty()
    for name, adapter in adapters.items():
        start = time.perf_counter()
        bar = tqdm(total=None, unit="check", desc=name, file=sys.stderr, disable=args.no_progress, ascii=not tty,
                   mininterval=0.1 if tty else 30.0)  # fmt: skip

        def progress(done, total, label, bar=bar):
            bar.total = total
            bar.set_postfix_str(label[:50], refresh=False)
            bar.update(done - bar.n)

        outcomes = run(adapter, profile=args.profile, dtype=adapter.DTYPE, progress=progress)
        bar.close()
        results[name] = (adapter, outcomes, time.perf_counter() - start)
    matrix = render(results, args.profile)
    print(matrix)
    problems = 0
    for name, (adapter, outcomes, seconds) in results.items():
        _, unexplained, stale = explain(adapter, outcomes)
        counts = {s: sum(o.status == s for o in outcomes) for s in ("passed", "failed", "n/a")}
        print(f"{name}: {counts['passed']} passed, {counts['failed']} failed ({len(unexplained)} unexplained), "
              f"{counts['n/a']} n/a, {len(stale)} stale findings, {seconds:.0f} s", file=sys.stderr)  # fmt: skip
        problems += len(unexplained) + len(stale)
    if args.write:
        if problems:
            print("not written: every failure needs a Finding and every Finding a failure", file=sys.stderr)
        else:
            write_readme(pathlib.Path(__file__).resolve().parent.parent / "README.md", matrix)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
