"""The golden vectors: they replay cleanly, they are what the reference gives today, and they can fail."""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import optimized
import reference
from conformance import vectors
from conformance.mutants import MUTANTS

VECTORS = Path(vectors.__file__).resolve().parent
API = (
    "ROUTERS",
    "capacity",
    "softmax_affinity",
    "sinkhorn_affinity",
    "sparse_ot_affinity",
    "token_choice_allocation",
    "expert_choice_allocation",
    "soft_moe_routing",
    "route",
    "mlp_experts",
    "moe_layer",
    "importance_loss",
    "load_loss",
)


def stored_manifest() -> dict:
    return json.loads((VECTORS / "manifest.json").read_text())


def array_refs(value):
    """Every npz key an encoded argument refers to, nested calls included."""
    if isinstance(value, dict) and "array" in value:
        yield value["array"]
    elif isinstance(value, dict) and "call" in value:
        for arg in value["args"]:
            yield from array_refs(arg)
    elif isinstance(value, list):
        for arg in value:
            yield from array_refs(arg)


@pytest.fixture(scope="module")
def float64_replay():
    """``python -m conformance.vectors --check optimized --dtype float64``, started as soon as a test asks for it.

    It runs in its own process so that its XLA compilations (float64 programs are new programs) overlap the
    float32 replay of ``test_optimized_float32_replays_cleanly`` on the second core.
    """
    command = [sys.executable, "-W", "error", "-m", "conformance.vectors", "--check", "optimized", "--dtype", "float64"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_manifest_records_cases_versions_and_date():
    manifest = stored_manifest()
    assert manifest["format"] == "vision-moe-routers golden vectors" and manifest["format_version"] == 1
    generated = manifest["generated"]
    assert len(generated["date"]) == 10 and set(generated["versions"]) == {
        "python",
        "numpy",
        "scipy",
        "vision-moe-routers",
    }
    cases = manifest["cases"]
    assert len({case["name"] for case in cases}) == len(cases)
    functions = {case["function"] for case in cases}
    assert functions == set(API) - {"ROUTERS"}, functions
    routed = {(case["args"][0], case["kwargs"].get("factor")) for case in cases if case["function"] == "route"}
    expected = {(r, f) for r in reference.ROUTERS for f in (1, 2) if not (r == "soft_moe" and f == 2)}
    assert routed == expected
    assert any("noise" in case["kwargs"] for case in cases if case["function"] == "route")
    size = sum(path.stat().st_size for path in VECTORS.iterdir() if path.suffix in (".npz", ".json"))
    assert size < 1_000_000, f"the vectors take {size} bytes"


def test_inputs_are_exact_in_float32():
    """Every input is a multiple of 1/16 of moderate size, except moe_layer's routing tensors (route's outputs)."""
    manifest, arrays = vectors.load()
    for case in manifest["cases"]:
        encoded = [case["args"], list(case["kwargs"].values()), case.get("apply", [])]
        for key in array_refs(encoded):
            assert key in arrays, f"{case['name']}: no array {key!r} in {case['file']}"
            if case["function"] == "moe_layer" and key.rsplit("/", 1)[1] in ("dispatch", "combine"):
                continue
            value = arrays[key]
            assert value.dtype == np.float64 and np.array_equal(value * 16, np.round(value * 16)), key
            assert np.abs(value).max() <= 128 and np.array_equal(value.astype(np.float32), value), key
        for output in case["outputs"]:
            assert output["key"] in arrays and output["compare"] in ("exact", "close"), output


def test_reference_replays_cleanly():
    failures, dtypes = vectors.replay(reference)
    assert failures == [], "\n".join(failures)
    assert dtypes == {"float64"}


def test_optimized_float32_replays_cleanly(float64_replay):
    failures, dtypes = vectors.replay(optimized)
    assert failures == [], "\n".join(failures)
    assert dtypes == {"float32"}


def test_optimized_float64_replays_cleanly(float64_replay):
    stdout, stderr = float64_replay.communicate(timeout=600)
    assert float64_replay.returncode == 0, stdout + stderr
    assert "all cases match (real outputs computed in float64)" in stdout, stdout + stderr


def test_regenerating_reproduces_the_stored_vectors(tmp_path):
    manifest = vectors.generate(tmp_path)
    stored = stored_manifest()
    assert manifest["cases"] == stored["cases"], "the case list (arguments, seeds, outputs) has drifted"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in VECTORS.iterdir() if p.suffix in (".npz", ".json")
    )
    _, fresh = vectors.load(tmp_path)
    _, kept = vectors.load()
    assert sorted(fresh) == sorted(kept)
    for key, value in kept.items():
        assert fresh[key].dtype == value.dtype and fresh[key].shape == value.shape, key
        np.testing.assert_allclose(fresh[key], value, rtol=1e-12, atol=1e-12, err_msg=key)
    assert vectors.check(reference, tmp_path) == []


def test_check_reports_a_broken_capacity():
    broken = types.SimpleNamespace(**{name: getattr(reference, name) for name in API})
    broken.capacity = lambda num_tokens, num_experts, factor: reference.capacity(num_tokens, num_experts, factor) + 1
    failures = vectors.check(broken)
    capacity_cases = [c["name"] for c in stored_manifest()["cases"] if c["function"] == "capacity"]
    assert len(failures) == len(capacity_cases) >= 5
    assert all(f.startswith("capacity-") and "/capacity: 1 entries differ" in f for f in failures), failures


# Mutants only the Hypothesis suite catches, and why the vectors cannot: a fixed case with exact zero-plan ties
# in Sparsity-Constrained Expert Choice would need a sparse-OT solve whose zeros sit exactly at the projection
# threshold's far side in every dtype, which the vectors' guards (no near-ties) reject by design. The vectors
# replay the spec's functions on float64 inputs: a trainable layer's bugs (noise at inference, importance on
# the noisy logits) are outside their API, and an overflow in float16 needs float16 inputs.
HYPOTHESIS_ONLY = {
    "zero_plan_slots_to_higher_index", "noise_at_inference", "importance_on_noisy_logits", "sinkhorn_exp_overflow",
    # The classes of issue 24, each killed by its own property (tests/test_conformance.py), none by the vectors:
    # the layer in training and its gradients are outside the replayed API, and the vectors hold no default-argument
    # call, no refusal through route, no logit past exp's range and no exactly duplicated token.
    "noise_std_one_over_sqrt_e", "load_loss_scale_misplaced", "soft_moe_dispatch_without_gradient", "route_default_k_2",
    "expert_choice_clips_capacity", "softmax_without_max_subtraction", "sparse_projection_ties_to_higher_index",
    # A refusal's message that raises IndexError instead of ValueError: the vectors hold no bad input at all.
    "soft_moe_width_refusal_index_error",
}  # fmt: skip


@pytest.mark.parametrize("mutant", [m for m in MUTANTS if m not in HYPOTHESIS_ONLY])
def test_check_catches_every_mutant(mutant):
    assert vectors.check(f"conformance.mutants.{mutant}"), f"the golden vectors do not catch {mutant}"


def test_cli_prints_failures_and_exits_nonzero():
    command = ["-W", "error", "-m", "conformance.vectors", "--check", "conformance.mutants.ties_to_higher_index"]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED token_choice_allocation-k2-C4-ties: " in result.stdout and "reproduce: impl = " in result.stdout
