"""Two processes on this machine, 4 simulated CPU devices each, train one run on one 8-device mesh
(``python -m train --coordinator ... --num-processes 2 --process-id I``): the same losses as one process with
8 devices, and a checkpoint the two wrote loads in this (one-device) process. SIGTERM to one of the two stops
both after the same step (JAX's preemption sync point), and the run resumes on a 2 x 4 mesh as one process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np

import train

STEPS = 3
OPTIONS = ("log_every=1", "eval_every=1000", "checkpoint_every=3", "fewshot_draws=1")


def _command(workdir, *extra):
    sets = [a for o in OPTIONS for a in ("--set", o)]
    return [sys.executable, "-m", "train", "--preset", "tiny", "--steps", str(STEPS), "--batch-size", "16",
            "--workdir", str(workdir), "--no-progress", *sets, *extra]  # fmt: skip


def _env(devices):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # gloo: the CPU collectives across processes (JAX's config option, set from the environment)
    return env | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                  "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_as_one_with_eight_devices(tmp_path):
    one = subprocess.Popen(_command(tmp_path / "one"), env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    port = _free_port()
    procs = [subprocess.Popen(_command(tmp_path / "two", "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                       "--process-id", str(i)), env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(2)]  # fmt: skip
    outputs = []
    for proc in [one, *procs]:
        try:
            outputs.append(proc.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for p in [one, *procs]:
                p.kill()
            raise
    for proc, (_, err) in zip([one, *procs], outputs, strict=True):
        assert proc.returncode == 0, err
    # process 0 prints the summary, process 1 nothing (gloo's own connection lines aside)
    assert "test accuracy" in outputs[1][0] and "test accuracy" not in outputs[2][0]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5)
    assert len(_losses(tmp_path / "two")) == STEPS
    # the checkpoint written by two processes (each its shards) restores here, on one device
    two, config = train.load_model(tmp_path / "two")
    single, _ = train.load_model(tmp_path / "one")
    assert config.batch_size == 16
    import equinox as eqx

    for a, b in zip(jax.tree.leaves(eqx.filter(two, eqx.is_array)), jax.tree.leaves(eqx.filter(single, eqx.is_array)),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _start(workdir, steps, options, devices, process=None, port=None):
    sets = [a for o in options for a in ("--set", o)]
    command = [sys.executable, "-m", "train", "--preset", "tiny", "--steps", str(steps), "--batch-size", "16",
               "--workdir", str(workdir), "--no-progress", *sets]  # fmt: skip
    if process is not None:
        command += ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(process)]
    return subprocess.Popen(command, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs, timeout=300):
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    return [(proc.returncode, _all_errors(procs, outputs, i)) for i, proc in enumerate(procs)]


def _all_errors(procs, outputs, i) -> str:
    """Process i's stderr, then the others' exit statuses and stderr: when one process of a run fails, another
    often shows only the consequence (a collective or jax.distributed's shutdown barrier that timed out)."""
    others = [f"--- process {j} (exit {p.returncode}) stderr:\n{outputs[j][1]}" for j, p in enumerate(procs) if j != i]
    return "\n".join([outputs[i][1], *others])


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_a_2x4_mesh_trains_as_one_process(tmp_path):
    """Two processes on a 2 x 4 (data x expert) mesh, 4 devices each. SIGTERM to process 1 alone: JAX's preemption
    sync point stops both after the same step, which both save, and both exit 75 (no per-step collective decides
    it); the same commands resume and end bit for bit as two processes never interrupted. And two processes on
    the 2 x 4 mesh train as one process on 8 devices (to float summation order)."""
    import time

    import equinox as eqx

    from train import checkpoint
    from train.presets import resolve
    from train.state import init_state

    steps = 40
    options = ("log_every=1", "eval_every=100000", "checkpoint_every=100000", "fewshot_draws=1", "mesh.data=2",
               "mesh.expert=4")  # fmt: skip
    one = _start(tmp_path / "one", steps, options, 8)
    first = _free_port()
    ports = first, next(p for p in iter(_free_port, None) if p != first)
    straight = [_start(tmp_path / "straight", steps, options, 4, i, ports[0]) for i in range(2)]
    cut = [_start(tmp_path / "cut", steps, options, 4, i, ports[1]) for i in range(2)]
    # Signalled once the workdir is locked (JAX's notifier is installed; the first step is still compiling): the
    # sync point, the largest step of the two + 1, is set within a second (JAX's notifier polls), long before
    # the end. (A signal to a process that has not yet initialized JAX's distributed runtime kills it.)
    deadline = time.monotonic() + 600
    while not (tmp_path / "cut" / "lock").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in cut), [p.poll() for p in cut]
        time.sleep(0.05)
    cut[1].send_signal(signal.SIGTERM)
    (status0, err0), (status1, err1) = _finish(cut, timeout=900)
    assert (status0, status1) == (75, 75), err0 + err1
    stopped = {int(re.search(r"stopped after step (\d+)", err).group(1)) for err in (err0, err1)}
    assert len(stopped) == 1, stopped  # both saved the same step
    [step] = stopped
    assert 1 <= step < steps and checkpoint.latest(tmp_path / "cut")["step"] == step
    before = _lines(tmp_path / "cut")
    assert len(before) == step
    for status, err in _finish([*straight, one], timeout=900):
        assert status == 0, err
    # resumed alone, after the others (not needed for the verdict; fewer processes on the cores). The resume's two
    # failures in CI, jax.distributed's shutdown barrier timing out, fit process 1 reading config.json while
    # process 0 rewrote it ("not valid JSON", exit 1), process 0 left waiting in a collective: the file is now
    # replaced whole (test_train.py, test_the_config_is_read_whole_while_process_0_rewrites_it)
    port = _free_port()
    cut = [_start(tmp_path / "cut", steps, options, 4, i, port) for i in range(2)]
    for status, err in _finish(cut, timeout=900):
        assert status == 0, err
    # resumed, not restarted: the lines of the first start are kept as written (their measured images_per_second)
    assert _lines(tmp_path / "cut")[:step] == before
    config = resolve("tiny", steps=steps, batch_size=16, overrides=options)
    like = tuple(init_state(config)[:2])
    resumed, uninterrupted = (checkpoint.restore(checkpoint.latest(tmp_path / d), like) for d in ("cut", "straight"))
    for a, b in zip(jax.tree.leaves(eqx.filter(resumed, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(uninterrupted, eqx.is_array)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # weights and optimizer state, bit for bit
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "straight")
    # two processes on the 2 x 4 mesh train as one on 8 devices: the same losses and weights up to the order of
    # float sums (Adam magnifies it in parameters whose gradients are near zero: 2e-4 measured after 40 steps)
    np.testing.assert_allclose(_losses(tmp_path / "straight"), _losses(tmp_path / "one"), rtol=1e-5)
    two_model, one_model = train.load_model(tmp_path / "straight")[0], train.load_model(tmp_path / "one")[0]
    for a, b in zip(jax.tree.leaves(eqx.filter(two_model, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(one_model, eqx.is_array)), strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)


def _lines(workdir):
    return (workdir / "metrics.jsonl").read_text().splitlines()


def test_with_several_processes_the_step_check_is_the_preemption_sync_point_not_a_collective(monkeypatch):
    """The per-step check asks JAX's preemption sync point (a local check); the all-gather is only for the checks
    outside the training loop. (The two-process run above shows the sync point at work.)"""
    from jax.experimental import multihost_utils

    from train import preemption

    def collective(*args, **kwargs):
        raise AssertionError("a collective in the per-step check")

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption, "_sync_manager", lambda: object(), raising=False)
    monkeypatch.setattr(multihost_utils, "process_allgather", collective)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 3)
    with preemption.SignalGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) is not guard._handle  # SIGTERM is left to JAX's notifier
        assert [guard.should_stop(step) for step in (1, 2, 3)] == [False, False, True]
        monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([x, 1]))
        assert guard.should_stop()  # outside the loop: one all-gather of what each process saw
