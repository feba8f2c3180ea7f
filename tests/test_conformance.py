"""The conformance suite: the JAX backend passes it, every deliberately broken implementation fails it."""

import functools
import importlib
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import conformance
import reference
from conformance.mutants import MUTANTS


@pytest.fixture(autouse=True)
def _fresh_compilation_caches():
    # One ci run compiles every function per shape, dtype and precision mode (some 7,000 executables, 3 memory
    # mappings each): cleared after every test here, not only after the module (see conftest.py).
    yield
    jax.clear_caches()


# One test per router, and one for the router-independent properties ("any"), so that pytest-xdist spreads the
# suite over the cores: each runs exactly the checks of the whole run that concern it (the jobs of
# conformance.run, derived here from the suite's property list).
SPLIT = (None, *reference.ROUTERS)


def _checks(router):
    """The (property, router) pairs of the whole run that concern ``router`` (None: the router-independent ones)."""
    if router is None:
        return {(p.name, "-") for p in conformance.PROPERTIES if p.routers is None}
    return {(p.name, router) for p in conformance.PROPERTIES if p.routers is not None and router in p.routers}


def _run(router, dtype):
    names = tuple(sorted(name for name, _ in _checks(router)))
    routers = None if router is None else (router,)
    outcomes = conformance.run("optimized", "reference", profile="ci", dtype=dtype, routers=routers, properties=names)
    # every check of its share of the suite ran once, none missing, none extra
    assert sorted((o.property, o.router) for o in outcomes) == sorted(_checks(router))
    return outcomes


def test_the_split_runs_are_the_whole_suite():
    # The per-router tests below together run every check of conformance.run, at least 40 of them.
    whole = {(p.name, r or "-") for p in conformance.PROPERTIES
             for r in ([None] if p.routers is None else [r for r in p.routers if r in reference.ROUTERS])}  # fmt: skip
    parts = [_checks(router) for router in SPLIT]
    assert set().union(*parts) == whole and sum(map(len, parts)) == len(whole) >= 40
    assert all(parts)


@pytest.mark.parametrize("router", SPLIT, ids=[r or "any" for r in SPLIT])
def test_optimized_conforms_to_the_reference(router):
    outcomes = _run(router, "float64")
    failed = [o for o in outcomes if o.status != "passed"]
    assert not failed, conformance.failure_report(outcomes) + "\n".join(f"{o.property}: {o.status}" for o in failed)
    assert all(o.examples >= 10 for o in outcomes)


# In float32, copies of tokens under the sparse-OT solver are judged in float64 only (conformance/README, issue 24).
FLOAT64_ONLY = {("identical_tokens_tie_exactly", "sparsity_constrained_expert_choice")}


@pytest.mark.parametrize("router", SPLIT, ids=[r or "any" for r in SPLIT])
def test_optimized_conforms_in_float32(router):
    # JAX's default dtype: every tolerance and tie margin follows the float32 outputs (0 false alarms).
    outcomes = _run(router, "float32")
    judged = [o for o in outcomes if (o.property, o.router) not in FLOAT64_ONLY]
    failed = [o for o in judged if o.status != "passed"]
    assert not failed, conformance.failure_report(outcomes) + "\n".join(f"{o.property}: {o.status}" for o in failed)
    assert all(o.examples >= 10 for o in judged)
    assert all(o.status == "n/a" for o in outcomes if (o.property, o.router) in FLOAT64_ONLY)


def test_the_rounding_models_float_replay_of_sparse_ot_is_the_spec():
    # rounding_sensitivity replays the spec's sparse-OT solve in a coarser dtype and with roundings added; in
    # float64 the replay is the spec, and with nothing added the rounded solve is the spec's bit for bit
    from conformance._properties._routing import _sparse_ot_in, _sparse_ot_rounded_gradients

    rng = np.random.default_rng(0)
    for tokens, experts, slots, num_iters in ((9, 3, 2, 20), (8, 2, 8, 5), (12, 4, 3, 1), (6, 3, 1, 20)):
        logits = rng.normal(size=(tokens, experts)) * 2
        spec = reference.sparse_ot_affinity(logits, slots, num_iters=num_iters)
        np.testing.assert_allclose(_sparse_ot_in(np.dtype(np.float64), logits, slots, num_iters), spec, rtol=0,
                                   atol=1e-12)  # fmt: skip
        unrounded = _sparse_ot_rounded_gradients(reference, logits, slots, num_iters, lambda g: 0.0)
        np.testing.assert_array_equal(unrounded, spec)
    logits = rng.normal(size=(9, 3))
    float32 = _sparse_ot_in(np.dtype(np.float32), logits, 4, 20)  # rounded: near the spec, not equal to it
    assert float32.dtype == np.float64
    assert 0 < np.abs(float32 - reference.sparse_ot_affinity(logits, 4)).max() < 1e-4


def test_the_float64_only_checks_exist():
    # Each check exempted in float32 is one of the suite's: the n/a assertion above is not vacuous.
    assert FLOAT64_ONLY <= set().union(*map(_checks, SPLIT))


def float32_port(module):
    """``module`` with every real output rounded to float32: a correct port that returns float32."""
    port = types.ModuleType(f"{module.__name__}_float32")
    for name in dir(module):
        value = getattr(module, name)
        if callable(value) and not isinstance(value, type) and not name.startswith("_"):
            value = functools.partial(_rounded, value)
        setattr(port, name, value)
    return port


def _rounded(fn, *args, **kwargs):
    result = fn(*args, **kwargs)
    if callable(result):  # mlp_experts returns the experts as a function
        return functools.partial(_rounded, result)
    as32 = lambda a: np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else a  # noqa: E731
    return tuple(as32(r) for r in result) if isinstance(result, tuple) else as32(result)


def test_a_float32_port_of_the_reference_conforms():
    # The reference with its outputs rounded to float32: judged by its float32 outputs, it must pass everything.
    outcomes = conformance.run(float32_port(reference), "reference", profile="dev")
    failed = [o for o in outcomes if o.status == "failed"]
    assert not failed, conformance.failure_report(outcomes)


def test_reference_conforms_to_itself():
    outcomes = conformance.run("reference", "reference", profile="dev")
    assert [o for o in outcomes if o.status == "failed"] == []
    # Only the properties of a trainable layer class need one, and the reference does not have it.
    assert {o.property for o in outcomes if o.status == "n/a"} == {
        "moe_layer_module_matches_reference", "inference_is_noise_free_and_key_independent",
        "layer_in_training_matches_reference", "layer_gradients_match_finite_differences",
    }  # fmt: skip


# The property of the ci profile that rejects each mutant: the first to fail when the whole suite runs in its
# order (measured with fail_fast on both dtypes). Running that property alone asserts more than "something
# fails" (it names what catches the bug) and keeps the test command short; `python -m conformance --impl
# conformance.mutants.NAME` runs everything.
KILLED_BY = {
    "ties_to_higher_index": "expert_choice_takes_best_tokens",
    "capacity_off_by_one": "route_capacity",
    "softmax_over_tokens": "route_capacity",
    "sinkhorn_plan_combine": "route_capacity",
    "token_order_reversed": "token_choice_follows_algorithm_1",
    "token_major_order": "token_choice_follows_algorithm_1",
    "soft_moe_combine_per_expert": "soft_moe_normalization",
    "sinkhorn_rows_first": "sinkhorn_marginals",
    "load_loss_wrong_threshold": "auxiliary_losses_equivalence",
    "sparse_ot_without_bias_correction": "sparse_ot_affinity_equivalence",
    "combine_without_weights": "token_choice_capacity",
    "sinkhorn_one_iteration_short": "sinkhorn_affinity_equivalence",
    "route_ignores_noise": "route_capacity",
    "zero_plan_slots_to_higher_index": "route_equivalence",
    "sinkhorn_default_15_iterations": "defaults_as_users_call_them",
    "sinkhorn_columns_once": "sinkhorn_marginals",
    "token_choice_drops_whole_token": "token_choice_follows_algorithm_1",
    "dropped_tokens_pass_through": "dropped_tokens_get_exactly_zero",
    "noise_at_inference": "inference_is_noise_free_and_key_independent",
    "importance_on_noisy_logits": "layer_in_training_matches_reference",
    "sinkhorn_exp_overflow": "low_precision_inputs_route_like_the_reference",
    # The edges (issue 24): each is killed by its own property alone, in both dtypes (the other properties pass it).
    "noise_std_one_over_sqrt_e": "layer_in_training_matches_reference",
    "load_loss_scale_misplaced": "layer_in_training_matches_reference",
    "route_default_k_2": "route_defaults_as_users_call_them",
    "expert_choice_clips_capacity": "refuses_at_every_entry_point",
    "softmax_without_max_subtraction": "logits_beyond_exp_overflow",
    # In float32 the tie property judges sparse OT's copies in float64 only; a sparse-OT comparison kills it there.
    "sparse_projection_ties_to_higher_index": {"float64": "identical_tokens_tie_exactly",
                                               "float32": "defaults_as_users_call_them"},
    "sinkhorn_stops_on_mean_error": "sinkhorn_stops_where_the_spec_stops",
    "soft_moe_dispatch_without_gradient": "layer_gradients_match_finite_differences",
    "soft_moe_width_refusal_index_error": "rejects_bad_input_like_the_reference",
}


def test_every_mutant_has_its_property():
    assert set(KILLED_BY) == set(MUTANTS)
    named = {v for value in KILLED_BY.values() for v in (value.values() if isinstance(value, dict) else [value])}
    assert named <= {p.name for p in conformance.PROPERTIES}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mutant", MUTANTS)
def test_the_suite_kills_every_mutant(mutant, dtype):
    # float32: the mutant returns its outputs rounded to float32 and is judged with float32 tolerances, as a
    # float32 port with the same bug would be; its error must not hide inside them (sinkhorn_one_iteration_short
    # is the smallest).
    module = importlib.import_module(f"conformance.mutants.{mutant}")
    killer = KILLED_BY[mutant][dtype] if isinstance(KILLED_BY[mutant], dict) else KILLED_BY[mutant]
    outcomes = conformance.run(
        module if dtype == "float64" else float32_port(module), "reference", profile="ci", dtype=dtype,
        properties=(killer,), fail_fast=True, shrink=False,
    )  # fmt: skip
    assert any(o.status == "failed" for o in outcomes), f"{killer} does not catch {mutant} in {dtype}"


def test_cli_prints_table_counterexample_snippet_and_fails():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--impl", "conformance.mutants.capacity_off_by_one",
         "--profile", "dev", "--property", "capacity_function"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "| capacity_function | **FAILED**" in result.stdout
    assert "Reproduce with:" in result.stdout and "impl.capacity(" in result.stdout


def test_the_snippet_replays_the_failing_example_not_the_last_one_run():
    # Hypothesis runs every explicit example even after one fails; the snippet must replay the failing one.
    from hypothesis import strategies as st

    from conformance._properties._base import Property
    from conformance._runner import run_property

    def check(ctx, case, router):
        got, want = ctx.impl.capacity(*case), ctx.ref.capacity(*case)
        assert got == want, f"capacity{case}: {got}, the reference {want}"

    prop = Property("toy_capacity", "toy", check, lambda router: st.just((8, 2, 1)),
                    examples=((12, 4, 1), (10, 4, 1), (16, 4, 1)))  # fmt: skip
    mutant = types.SimpleNamespace(__name__="toy_port", capacity=lambda t, e, f: 4 if t == 10 else t * f // e)
    outcome = run_property(prop, None, mutant, reference, "dev")
    assert outcome.status == "failed"
    # Hypothesis runs them last to first: (16, 4, 1) passes, (10, 4, 1) fails, (12, 4, 1) passes after it
    assert "impl.capacity(10, 4, 1)" in outcome.snippet and "(12, 4, 1)" not in outcome.snippet, outcome.snippet


def test_cli_exitfirst_stops_at_the_first_failure_and_says_so():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--impl", "conformance.mutants.capacity_off_by_one", "--profile", "dev",
         "-x", "--no-progress", "--property", "capacity_function", "--property", "softmax_affinity_equivalence"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stopped early at the first failure (--exitfirst): 1 of 2 checks did not run" in result.stdout


def test_pytest_entry_point_runs_one_test_per_property_and_router():
    # A port's CI: pytest --pyargs conformance, the implementation named by CONFORMANCE_IMPL; -k and -x work.
    env = {**os.environ, "CONFORMANCE_IMPL": "conformance.mutants.capacity_off_by_one", "CONFORMANCE_PROFILE": "dev"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs", "conformance", "-x",
         "-k", "capacity_function or route_capacity"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test_property[route_capacity-softmax_token_choice]" in result.stdout
    assert "1 failed" in result.stdout and "Reproduce with:" in result.stdout


def test_cli_rejects_unknown_router():
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--router", "hash"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 2 and "invalid choice: 'hash'" in result.stderr


# ------------------------------------------------------------------ an implementation that breaks the suite (issue 27)


def _module(name, **names):
    module = types.ModuleType(name)
    module.__dict__.update(names)
    return module


def test_an_implementation_that_hangs_fails_its_property_at_the_time_limit():
    import time

    from conformance.mutants._base import build

    def capacity(t, e, factor):
        while True:
            time.sleep(0.01)

    hangs = build("hangs", "capacity never returns", capacity=capacity)
    start = time.perf_counter()
    [outcome] = conformance.run(hangs, properties=("capacity_function",), limit=1.0)
    assert time.perf_counter() - start < 30
    assert outcome.status == "failed"
    assert outcome.message.startswith("capacity_function [-] did not finish within its time limit of 1 s")
    with pytest.raises(ValueError, match=r"limit must be a number of seconds >= 0 \(0: none\) or None, got -1"):
        conformance.run(hangs, properties=("capacity_function",), limit=-1)


def test_a_module_missing_half_the_api_is_one_list_of_names(tmp_path):
    from conformance._coverage import API

    half = _module("half_port", **{name: getattr(reference, name) for name in API[: len(API) // 2]})
    missing = ", ".join(API[len(API) // 2 :])
    with pytest.raises(ValueError, match=rf"half_port declares no COVERS .* lacks 7 of its 13 names: {missing};"):
        conformance.run(half)
    # the pytest entry point: one message, no failure per property
    (tmp_path / "half_port.py").write_text(
        "from reference import " + ", ".join(API[: len(API) // 2]) + "  # noqa: F401\n"
    )
    env = {**os.environ, "CONFORMANCE_IMPL": "half_port", "PYTHONPATH": f"{tmp_path}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--pyargs", "conformance"],
                            capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"lacks 7 of its 13 names: {missing};" in result.stdout + result.stderr
    assert "failed" not in result.stdout, result.stdout


def test_an_implementation_that_raises_at_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "broken_port.py").write_text("raise RuntimeError('CUDA driver not found')\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(SystemExit, match=r"^importing the implementation 'broken_port' failed: RuntimeError: CUDA "
                       r"driver not found$"):  # fmt: skip
        conformance._runner.load("broken_port")
