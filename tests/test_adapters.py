"""Adapters of third-party libraries: what they declare, and how the runner counts what they cover.

The libraries themselves are not installed by the test command (``tox -e adapters`` installs them and runs the
suite on each); these tests need none of them: every adapter must import without its library and declare what
it covers, and the runner's coverage rules are checked on small adapters built here from the reference.
"""

import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import conformance
import reference
from conformance import NotCovered
from conformance._coverage import declared, is_covered
from conformance.adapters import ADAPTERS
from conformance.adapters._base import Finding, complete
from conformance.mutants import ties_to_higher_index

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_MODULES = ("torch", "transformers", "deepspeed", "soft_moe_pytorch", "st_moe_pytorch", "praxis", "fairscale")


def test_every_adapter_imports_without_importing_its_library():
    code = (
        "import sys, json, importlib\n"
        f"for name in {ADAPTERS!r}: importlib.import_module('conformance.adapters.' + name)\n"
        f"print(json.dumps(sorted(m for m in {LIBRARY_MODULES!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == [], f"importing the adapters imported {out.stdout}: libraries must load lazily"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "adapters.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_declares_its_library_coverage_settings_and_findings(name):
    adapter = importlib.import_module(f"conformance.adapters.{name}")
    assert declared(adapter), f"{name} declares no COVERS"
    assert adapter.FRAMEWORK in ("PyTorch", "JAX") and adapter.DTYPE in ("float32", "float64")
    assert _pins().get(adapter.LIBRARY.lower()) == adapter.VERSION, (
        f"{name}: {adapter.LIBRARY}=={adapter.VERSION} must be pinned in constraints/adapters.txt"
    )
    assert adapter.SETTINGS and all(isinstance(s, str) and s for s in adapter.SETTINGS)
    properties = {p.name for p in conformance.PROPERTIES}
    for finding in adapter.FINDINGS:
        assert isinstance(finding, Finding)
        assert set(finding.properties) <= properties, f"{name}: unknown property in {finding.properties}"
        assert finding.routers is None or set(finding.routers) <= set(reference.ROUTERS)
        assert finding.cause and finding.where
    for api in conformance.API:
        assert hasattr(adapter, api), f"{name} lacks {api} (end the module with complete(globals()))"


def test_the_adapters_cover_both_frameworks():
    frameworks = [importlib.import_module(f"conformance.adapters.{n}").FRAMEWORK for n in ADAPTERS]
    assert len(ADAPTERS) >= 4 and {"PyTorch", "JAX"} <= set(frameworks)


def _adapter(covers, **functions) -> types.ModuleType:
    module = types.ModuleType("toy_adapter")
    module.COVERS = covers
    vars(module).update(functions)
    complete(vars(module))
    return module


def _top1(allocate):
    def token_choice_allocation(scores, capacity, k, weights=None):
        if k != 1:
            raise NotCovered("a top-1 library")
        return allocate(scores, capacity, k, weights)

    return token_choice_allocation


def _run(impl, *properties):
    outcomes = conformance.run(impl, properties=properties, profile="dev")
    return {o.property: o for o in outcomes}


def test_a_covered_function_is_checked_and_a_delegated_one_is_not_applicable():
    toy = _adapter({"token_choice_allocation": None}, token_choice_allocation=_top1(reference.token_choice_allocation))
    got = _run(toy, "token_choice_allocation_equivalence", "expert_choice_allocation_equivalence", "sinkhorn_marginals")
    assert got["token_choice_allocation_equivalence"].status == "passed"
    assert got["token_choice_allocation_equivalence"].examples > 0
    for name in ("expert_choice_allocation_equivalence", "sinkhorn_marginals"):
        assert got[name].status == "n/a" and "delegated to the reference" in got[name].message, got[name]


def test_a_covered_broken_function_fails_on_the_inputs_it_covers():
    # The mutant breaks ties towards the higher expert index; restricted to k = 1 it must still be caught.
    toy = _adapter(
        {"token_choice_allocation": None}, token_choice_allocation=_top1(ties_to_higher_index.token_choice_allocation)
    )
    got = _run(toy, "token_choice_allocation_equivalence")["token_choice_allocation_equivalence"]
    assert got.status == "failed"
    # The report shows the shrunk case (Hypothesis attaches it to the exception) and calls that replay it.
    assert "'k': 1" in got.counterexample and "impl.token_choice_allocation(" in got.snippet


def test_inputs_outside_the_library_are_discarded_and_none_left_is_not_applicable():
    def refuse(*args, **kwargs):
        raise NotCovered("this library has no allocation")

    toy = _adapter({"token_choice_allocation": None}, token_choice_allocation=refuse)
    got = _run(toy, "token_choice_allocation_equivalence")["token_choice_allocation_equivalence"]
    assert got.status == "n/a" and "this library has no allocation" in got.message


def test_route_is_covered_per_router():
    covers = {"route": ("softmax_token_choice",)}
    assert is_covered(covers, "route", ("softmax_token_choice", None, None), {})
    assert not is_covered(covers, "route", ("sinkhorn_token_choice", None, None), {})
    toy = _adapter(covers, route=lambda *a, **k: reference.route(*a, **k))
    outcomes = conformance.run(toy, properties=("route_equivalence",), routers=reference.ROUTERS[:2], profile="dev")
    assert [(o.router, o.status) for o in outcomes] == [("softmax_token_choice", "passed"),
                                                        ("sinkhorn_token_choice", "n/a")]  # fmt: skip


def test_bad_input_cases_count_only_where_they_reach_the_library():
    # Each example of the bad-input property calls one function: a capacity-only library is checked on the
    # "capacity below 1" case, the other cases are discarded one by one (not the whole property).
    toy = _adapter({"capacity": None}, capacity=lambda t, e, f: reference.capacity(t, e, f))
    got = _run(toy, "rejects_bad_input_like_the_reference")["rejects_bad_input_like_the_reference"]
    assert got.status == "passed" and got.examples >= 1
    silent = _adapter({"capacity": None}, capacity=lambda t, e, f: max(1, round(f * t / e)))  # raises nothing
    got = _run(silent, "rejects_bad_input_like_the_reference")["rejects_bad_input_like_the_reference"]
    assert got.status == "failed" and "raises no error" in got.message


@pytest.mark.parametrize(
    "covers",
    [{"routing": None}, {"capacity": ("softmax_token_choice",)}, {"route": ("switch",)}, {"route": "soft_moe"}, {}],
)
def test_a_malformed_coverage_declaration_is_refused(covers):
    toy = _adapter({"capacity": None})
    toy.COVERS = covers
    with pytest.raises(ValueError, match="COVERS"):
        conformance.run(toy, properties=("capacity_function",), profile="dev")


def test_the_report_names_each_failure_s_finding_and_flags_unexplained_and_stale_ones(tmp_path):
    from conformance._runner import Outcome
    from conformance.adapters import __main__ as report

    explained = Finding(("route_equivalence",), "variant", "renormalizes the top-2 gates", "lib/gate.py:42")
    stale = Finding(("sinkhorn_marginals",), "bug", "never fails", "lib/x.py:1")
    toy = _adapter({"route": ("softmax_token_choice",)})
    vars(toy).update(LIBRARY="toylib", VERSION="1.0", FRAMEWORK="JAX", DTYPE="float32", FINDINGS=(explained, stale))
    outcomes = [
        Outcome("route_equivalence", "equivalence", "softmax_token_choice", "failed", 3, "AssertionError: x",
                "Falsifying example: case={'x': 1}"),
        Outcome("route_capacity", "capacity", "softmax_token_choice", "failed", 1, "AssertionError: y"),
        Outcome("token_choice_capacity", "capacity", "-", "passed", 25),
        Outcome("sinkhorn_marginals", "normalization", "-", "n/a"),
    ]  # fmt: skip
    text = report.render({"toy": (toy, outcomes, 1.0)}, "ci")
    assert "| `route_equivalence` | **failed** (softmax TC) [1] |" in text
    assert "[1] **variant**: renormalizes the top-2 gates (`lib/gate.py:42`). Fails: `route_equivalence`" in text
    assert "Falsifying example: case={'x': 1}" in text
    assert "**UNEXPLAINED**: `route_capacity`" in text and "**STALE FINDING**" in text
    assert "| `token_choice_capacity` | passed |" in text and "sinkhorn_marginals` |" not in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\nrest\n")
    report.write_readme(readme, text)
    assert readme.read_text() == f"intro\n{report.BEGIN}\n{text}{report.END}\nrest\n"


def test_the_report_refuses_libraries_at_other_versions_than_the_pinned_ones(capsys):
    from conformance.adapters import __main__ as report

    adapter = importlib.import_module(f"conformance.adapters.{ADAPTERS[0]}")
    if report.installed_version(adapter) == adapter.VERSION:
        pytest.skip(f"{adapter.LIBRARY} {adapter.VERSION} is installed here (tox -e adapters): the report would run")
    with pytest.raises(SystemExit) as exit_:
        report.main(["--report", "--adapter", ADAPTERS[0]])
    assert exit_.value.code == 2 and "pinned versions" in capsys.readouterr().err


def test_an_adapter_whose_library_is_missing_is_refused_before_any_work():
    toy = _adapter({"capacity": None})
    vars(toy).update(LIBRARY="no-such-router-library", VERSION="1.0")
    with pytest.raises(ValueError, match="no-such-router-library, which is not installed: pip install"):
        conformance.run(toy, profile="dev")
