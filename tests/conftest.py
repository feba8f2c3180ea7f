"""Test-session hooks.

``tests/multidevice`` needs 8 simulated CPU devices, which XLA fixes when it starts, so it is not collected
here: ``test_expert_parallel.py::test_eight_device_suite`` runs it in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. That subprocess is started as soon as collection
finishes (when the test is selected), so that it runs beside the rest of the suite on a second core; the test
waits for it and reports its output. Under pytest-xdist (``tox`` runs ``-n 2``) the test starts it.

Every compiled XLA executable holds a few memory mappings (about 3 on CPU) until JAX's caches drop it, and Linux
caps a process at ``vm.max_map_count`` mappings (65530 by default). The whole suite in one process compiles
some 17,000 executables (the conformance properties alone compile each function per shape, dtype and
precision mode), and when a compilation's ``mmap`` fails, XLA's CPU compiler crashes with SIGSEGV instead of
raising. So the caches are cleared after every test module (``jax.clear_caches``): each module compiles what
it uses, and the count of mappings stays far below the cap.
"""

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

collect_ignore = ["multidevice"]

EIGHT_DEVICE_TEST = "test_expert_parallel.py::test_eight_device_suite"
_eight_device_run: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    yield
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def tiny():
    """The ``tiny`` preset: the seconds-long configuration the training tests run."""
    from train.presets import resolve

    return resolve("tiny")


@pytest.fixture(scope="module")
def tiny_data(tiny):
    from train.input_pipeline import load_data

    return load_data(tiny)


def start_eight_device_suite() -> subprocess.Popen:
    if "process" not in _eight_device_run:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"multidevice-{os.getpid()}.log", "w+")
        _eight_device_run["log"] = log
        suite = str(root / "tests" / "multidevice")
        _eight_device_run["process"] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-W", "error", "-q", "-p", "no:cacheprovider", suite],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    return _eight_device_run["process"]


def eight_device_output() -> str:
    log = _eight_device_run["log"]
    log.flush()
    log.seek(0)
    return log.read()


def pytest_collection_finish(session):
    # Under pytest-xdist every worker collects every test, so the suite is started by the test itself, in the
    # one worker that runs it (the other workers keep the second core busy meanwhile).
    if os.environ.get("PYTEST_XDIST_WORKER") is None and any(
        item.nodeid.endswith(EIGHT_DEVICE_TEST) for item in session.items
    ):
        start_eight_device_suite()


def pytest_sessionfinish(session, exitstatus):
    process = _eight_device_run.get("process")
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
    log = _eight_device_run.get("log")
    if log is not None:
        log.close()
        Path(log.name).unlink(missing_ok=True)
