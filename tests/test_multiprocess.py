"""Two processes on this machine, 4 simulated CPU devices each, train one run on one 8-device mesh
(``python -m train --coordinator ... --num-processes 2 --process-id I``): the same losses as one process with
8 devices, and a checkpoint the two wrote loads in this (one-device) process."""

import json
import os
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
