"""The conformance suite: the JAX backend passes it, every deliberately broken implementation fails it."""

import subprocess
import sys

import pytest

import conformance
from conformance.mutants import MUTANTS


def test_optimized_conforms_to_the_reference():
    outcomes = conformance.run("optimized", "reference", profile="ci")
    failed = [o for o in outcomes if o.status != "passed"]
    assert not failed, conformance.failure_report(outcomes) + "\n".join(f"{o.property}: {o.status}" for o in failed)
    assert len(outcomes) >= 40 and all(o.examples >= 10 for o in outcomes)


def test_optimized_conforms_in_float32():
    # JAX's default dtype: every tolerance and tie margin follows the float32 outputs (0 false alarms).
    outcomes = conformance.run("optimized", "reference", profile="ci", dtype="float32")
    failed = [o for o in outcomes if o.status != "passed"]
    assert not failed, conformance.failure_report(outcomes) + "\n".join(f"{o.property}: {o.status}" for o in failed)
    assert len(outcomes) >= 40 and all(o.examples >= 10 for o in outcomes)


def test_reference_conforms_to_itself():
    outcomes = conformance.run("reference", "reference", profile="dev")
    assert [o for o in outcomes if o.status == "failed"] == []
    # Only the layer-module property needs a trainable layer class, which the reference does not have.
    assert {o.property for o in outcomes if o.status == "n/a"} == {"moe_layer_module_matches_reference"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mutant", MUTANTS)
def test_the_suite_kills_every_mutant(mutant, dtype):
    # float32: the mutant is judged with float32 tolerances, as a float32 port with the same bug would be; its
    # error must not hide inside them (sinkhorn_one_iteration_short is the smallest).
    outcomes = conformance.run(
        f"conformance.mutants.{mutant}", "reference", profile="ci", dtype=dtype, fail_fast=True, shrink=False
    )
    assert any(o.status == "failed" for o in outcomes), f"the ci profile does not catch {mutant} in {dtype}"


def test_cli_prints_table_counterexample_snippet_and_fails():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--impl", "conformance.mutants.capacity_off_by_one",
         "--profile", "dev", "--property", "capacity_function"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "| capacity_function | **FAILED**" in result.stdout
    assert "Reproduce with:" in result.stdout and "impl.capacity(" in result.stdout


def test_cli_rejects_unknown_router():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--router", "hash"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2 and "invalid choice: 'hash'" in result.stderr
