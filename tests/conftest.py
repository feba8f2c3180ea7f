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

Many tests train the tiny preset, and each run builds its step function anew, which JAX compiles again (some 40 s
on a loaded 2-core machine). So the session keeps JAX's persistent compilation cache in a temporary directory,
shared by the xdist workers and removed at the end: an identical program (same HLO, options and JAX version) is
compiled once per session and loaded from disk after that; no test sees a different executable. Only compilations
of 1 s or more are stored (JAX's default threshold). A ``JAX_COMPILATION_CACHE_DIR`` already in the environment is
left as it is (an empty value turns the cache off).
"""

import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

collect_ignore = ["multidevice"]

EIGHT_DEVICE_TEST = "test_expert_parallel.py::test_eight_device_suite"
_eight_device_run: dict = {}


_CACHE_VARIABLE = "TESTS_JAX_COMPILATION_CACHE"  # the session's cache directory, inherited by the xdist workers
_made_cache: list[str] = []


def pytest_configure(config):
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    directory = os.environ.get(_CACHE_VARIABLE)
    if directory is None:  # the controller, or a run without xdist; the workers start after this
        directory = tempfile.mkdtemp(prefix="jax-compilation-cache-")
        os.environ[_CACHE_VARIABLE] = directory
        _made_cache.append(directory)
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)


def pytest_unconfigure(config):
    for directory in _made_cache:
        shutil.rmtree(directory, ignore_errors=True)


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
