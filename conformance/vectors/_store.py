"""Writing the vectors (``generate``), reading them back and replaying them through an implementation (``check``)."""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import io
import json
import platform
import types
import zipfile
from pathlib import Path

import numpy as np
import scipy

import reference

from .._checks import TOLERANCES, assert_close, assert_equal, host
from ._cases import Call, Case, Ref, all_cases

FORMAT = "vision-moe-routers golden vectors"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ encoding


def encode(value, prefix: str):
    """A case argument as JSON: arrays by their npz key, nested calls as objects, scalars inline."""
    if isinstance(value, Ref):
        return {"array": f"{prefix}/{value.name}"}
    if isinstance(value, Call):
        return {"call": value.function, "args": [encode(a, prefix) for a in value.args]}
    if isinstance(value, np.ndarray):
        raise TypeError(f"case {prefix}: pass arrays as Ref(name), not inline")
    return value


def case_entry(case: Case) -> dict:
    entry = {
        "name": case.name,
        "function": case.function,
        "file": f"{case.function}.npz",
        "args": [encode(a, case.name) for a in case.args],
        "kwargs": {key: encode(value, case.name) for key, value in case.kwargs.items()},
    }
    if case.apply is not None:
        entry["apply"] = [[encode(a, case.name) for a in args] for args in case.apply]
    entry["outputs"] = [{"key": f"{case.name}/{name}", "compare": compare} for name, compare in case.outputs]
    entry["seed"] = case.seed
    if case.note:
        entry["note"] = case.note
    return entry


def versions() -> dict:
    try:
        project = importlib.metadata.version("vision-moe-routers")
    except importlib.metadata.PackageNotFoundError:
        project = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "vision-moe-routers": project,
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so unchanged vectors regenerate byte for byte."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def as_stored(value) -> np.ndarray:
    """An output as stored: float64 arrays, Python ints as int64 scalars, Python floats as float64 scalars."""
    if isinstance(value, bool):
        raise TypeError(f"unexpected boolean output {value!r}")
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int64)
    return np.asarray(value, dtype=np.float64)


def generate(out_dir=None) -> dict:
    """Regenerate every case from ``reference`` and write ``<function>.npz`` files and ``manifest.json``.

    Returns the manifest (also written to ``out_dir / "manifest.json"``); ``out_dir`` defaults to this package's
    folder, where the stored vectors live.
    """
    out_dir = HERE if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, np.ndarray]] = {}
    entries = []
    for case in all_cases():
        entry = case_entry(case)
        arrays = files.setdefault(entry["file"], {})
        for name, value in case.arrays.items():
            arrays[f"{case.name}/{name}"] = np.asarray(value, dtype=np.float64)
        results = run_case(entry, arrays, reference)
        for output, value in zip(entry["outputs"], results, strict=True):
            arrays[output["key"]] = as_stored(value)
        entries.append(entry)
    for name, arrays in files.items():
        write_npz(out_dir / name, arrays)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generated": {
            "date": datetime.date.today().isoformat(),
            "by": "python -m conformance.vectors",
            "versions": versions(),
        },
        "tolerances": {str(dtype): tol for dtype, tol in TOLERANCES.items()},
        "cases": entries,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------ replay


def load(vectors_dir=None) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and every stored array by its key (``"<case>/<name>"``)."""
    vectors_dir = HERE if vectors_dir is None else Path(vectors_dir)
    manifest = json.loads((vectors_dir / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{vectors_dir / MANIFEST} is not format {FORMAT!r} version {FORMAT_VERSION}")
    arrays = {}
    for name in sorted({case["file"] for case in manifest["cases"]}):
        with np.load(vectors_dir / name, allow_pickle=False) as npz:
            arrays.update({key: npz[key] for key in npz.files})
    return manifest, arrays


def resolve(value, arrays: dict[str, np.ndarray], impl):
    """A manifest argument as a Python value: a fresh NumPy array, the result of a nested call, or the scalar."""
    if isinstance(value, dict):
        if "array" in value:
            return np.array(arrays[value["array"]])
        if "call" in value:
            return getattr(impl, value["call"])(*[resolve(a, arrays, impl) for a in value["args"]])
        raise ValueError(f"unknown argument encoding {value!r}")
    return value


def run_case(entry: dict, arrays: dict[str, np.ndarray], impl) -> list:
    """Call ``impl`` as the manifest entry says; returns its outputs in the order of ``entry["outputs"]``."""
    args = [resolve(a, arrays, impl) for a in entry["args"]]
    kwargs = {key: resolve(value, arrays, impl) for key, value in entry["kwargs"].items()}
    result = getattr(impl, entry["function"])(*args, **kwargs)
    if "apply" in entry:
        return [result(*[resolve(a, arrays, impl) for a in call]) for call in entry["apply"]]
    if len(entry["outputs"]) == 1:
        return [result]
    return list(result)


def reproduce(entry: dict, impl_name: str, vectors_dir: Path) -> str:
    """A one-line call that reproduces the case (arrays loaded from the stored npz)."""

    def show(value):
        if isinstance(value, dict) and "array" in value:
            return f"npz[{value['array']!r}]"
        if isinstance(value, dict) and "call" in value:
            return f"impl.{value['call']}({', '.join(show(a) for a in value['args'])})"
        return repr(value)

    parts = [show(a) for a in entry["args"]] + [f"{k}={show(v)}" for k, v in entry["kwargs"].items()]
    call = f"impl.{entry['function']}({', '.join(parts)})"
    if "apply" in entry:
        call += " then called with " + "; ".join(f"({', '.join(show(a) for a in args)})" for args in entry["apply"])
    return f"impl = {impl_name}; npz = numpy.load({str(vectors_dir / entry['file'])!r}); {call}"


def replay(impl, vectors_dir=None) -> tuple[list[str], set[str]]:
    """``check``, also returning the dtypes of the real outputs the implementation produced."""
    if isinstance(impl, str):
        impl = importlib.import_module(impl)
    impl_name = impl.__name__ if isinstance(impl, types.ModuleType) else "impl"
    vectors_dir = HERE if vectors_dir is None else Path(vectors_dir)
    manifest, arrays = load(vectors_dir)
    failures, dtypes = [], set()
    for entry in manifest["cases"]:
        name = entry["name"]
        try:
            results = run_case(entry, arrays, impl)
            if len(results) != len(entry["outputs"]):
                raise AssertionError(f"returned {len(results)} outputs, expected {len(entry['outputs'])}")
        except Exception as err:  # anything the implementation raises is its failure
            failures.append(
                f"{name}: {type(err).__name__}: {err}\n  reproduce: {reproduce(entry, impl_name, vectors_dir)}"
            )
            continue
        for output, actual in zip(entry["outputs"], results, strict=True):
            key = output["key"]
            if output["compare"] == "close":
                dtypes.add(str(host(actual).dtype))
            compare = assert_equal if output["compare"] == "exact" else assert_close
            try:
                compare(key, actual, arrays[key])
            except AssertionError as err:
                failures.append(f"{name}: {err}\n  reproduce: {reproduce(entry, impl_name, vectors_dir)}")
    return failures, dtypes


def check(impl, vectors_dir=None) -> list[str]:
    """Replay every stored case through ``impl`` (a module or its import name); returns the failures.

    Discrete outputs (``"compare": "exact"``) must equal the stored values exactly; real ones
    (``"close"``) must be within the tolerance of the implementation's output dtype
    (``conformance._checks.TOLERANCES``). An exception raised by the implementation is a failure too.
    An empty list means every case matched. Each failure names the case and the output, and ends with a
    line that reproduces the call.
    """
    return replay(impl, vectors_dir)[0]
