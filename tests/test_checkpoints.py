"""Checkpoints (orbax): incomplete saves passed over, the model loaded alone, the old format refused and converted,
preemption by SIGTERM and by kill -9 (``python -m train`` in a subprocess), gradient accumulation, and the faults
of a cluster and a careless user (issue 27): a kill between two saves, a lost ``config.json``, an edited
``sha256.json``, two trainings in one workdir, a cut ``metrics.jsonl``, a full disk, checks before training."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train
from optimized import with_layout
from train import checkpoint
from train import workdir as files
from train.preemption import EXIT_STATUS
from train.presets import resolve
from train.state import init_state
from train.workdir import ConfigMismatchError


def _like(config):
    return tuple(init_state(config)[:2])


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def _assert_same(a, b):
    a, b = _leaves(a), _leaves(b)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny, tiny_data):
    """A tiny run stopped at step 2 with checkpoints at steps 1 and 2."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny.replace(steps=4, checkpoint_every=1, eval_every=100)
    train.train_and_evaluate(config, workdir, stop_after=2, progress=False, dataset=tiny_data)
    assert checkpoint.complete_steps(workdir) == [1, 2]
    return workdir, config


def test_a_relative_workdir_saves_and_loads(two_checkpoints, tmp_path, monkeypatch, tiny_data):
    # `python -m train` takes a relative --workdir (its default is workdirs/NAME); orbax refuses relative paths
    source, config = two_checkpoints
    shutil.copytree(source, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    model, _ = train.load_model("run")
    checkpoint.save("copy", 2, model, _like(config)[1])
    assert checkpoint.complete_steps("copy") == [2]
    _assert_same(train.load_model("copy", config=config)[0], model)


@pytest.mark.parametrize("damage", ["no commit marker", "no SHA-256 record", "temporary directory"])
def test_an_interrupted_save_is_passed_over_and_the_run_says_so(two_checkpoints, tmp_path, tiny_data, damage, capsys):
    source, config = two_checkpoints
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    step_dir = workdir / "checkpoints" / "2"
    if damage == "no commit marker":
        (step_dir / checkpoint.COMMIT).unlink()
    elif damage == "no SHA-256 record":
        (step_dir / checkpoint.SIDECAR).unlink()
    else:  # orbax writes a step under a temporary name and renames it at the commit
        step_dir.rename(step_dir.with_name("2.orbax-checkpoint-tmp-1234"))
    assert checkpoint.latest(workdir)["step"] == 1
    model, _ = train.load_model(workdir)
    _assert_same(model, train.load_model(source, 1)[0])
    assert "passing over incomplete checkpoint(s) 2" in capsys.readouterr().err
    if damage == "no commit marker":  # resuming starts from step 1 (and saves step 2 again)
        kept = config.replace(keep_checkpoints_every=2)  # the newest 2, and every even step
        train.train_and_evaluate(kept, workdir, progress=False, dataset=tiny_data)
        assert "resuming from step 1" in capsys.readouterr().err
        assert checkpoint.complete_steps(workdir) == [2, 3, 4]
        assert [p.name.split("-")[0] for p in (workdir / "checkpoints" / "incomplete").iterdir()] == ["2"]


def test_the_model_loads_without_the_optimizer_state(two_checkpoints, tmp_path):
    source, config = two_checkpoints
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    model, _ = checkpoint.restore(checkpoint.latest(workdir), _like(config))
    for step_dir in (workdir / "checkpoints").iterdir():
        shutil.rmtree(step_dir / "opt_state")  # using a model never reads the optimizer's item
    loaded, loaded_config = train.load_model(workdir)
    assert loaded_config == config
    _assert_same(loaded, model)
    first, _ = train.load_model(workdir, step=1)
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(first), _leaves(model), strict=True))
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint of step 7 .*complete: \[1, 2\]"):
        train.load_model(workdir, step=7)
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"is missing opt_state/"):
        checkpoint.restore(checkpoint.latest(workdir), _like(config))  # resuming needs it, and says so


def test_old_format_is_refused_with_how_to_convert_and_converts(two_checkpoints, tmp_path, tiny_data):
    source, config = two_checkpoints
    workdir = tmp_path / "old"
    workdir.mkdir()
    shutil.copy(source / "config.json", workdir / "config.json")
    (workdir / "checkpoints").mkdir()
    # a checkpoint as the equinox-format train/checkpoint.py wrote it: step_*.eqx + a .json record
    state = checkpoint.restore(checkpoint.latest(source), _like(config))
    path = workdir / "checkpoints" / "step_00000002.eqx"
    eqx.tree_serialise_leaves(path, with_layout(state, "stacked"))  # that format predates the sequence layout
    record = {"step": 2, "sha256": checkpoint.digest(path), "file": path.name}
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"old format .*`python -m train.convert_checkpoints"):
        train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
    from train.convert_checkpoints import main as convert

    assert convert([str(workdir)]) == 0
    assert (workdir / "checkpoints" / "eqx-format" / path.name).exists()
    _assert_same(checkpoint.restore(checkpoint.latest(workdir), _like(config)), state)


def test_a_checkpoint_in_the_stacked_layout_loads_and_resumes_in_the_sequence_layout(two_checkpoints, tmp_path,
                                                                                    tiny_data):
    # every checkpoint written before the sequence layout became the default holds Every-2's stacked pairs
    source, config = two_checkpoints
    state = checkpoint.restore(checkpoint.latest(source), _like(config))
    assert state[0].layout == "sequence"
    workdir = tmp_path / "stacked"
    workdir.mkdir()
    shutil.copy(source / "config.json", workdir / "config.json")
    stacked = with_layout(state, "stacked")
    assert stacked[0].layout == "stacked"
    assert [a.shape for a in _leaves(stacked)] != [a.shape for a in _leaves(state)]  # (1, ...): one pair stacked
    checkpoint.save(workdir, 2, *stacked)
    _assert_same(checkpoint.restore(checkpoint.latest(workdir), _like(config)), state)
    model, _ = train.load_model(workdir)
    assert model.layout == "sequence"
    _assert_same(model, state[0])
    # resumed from the stacked checkpoint, the run ends where the one resumed from its own checkpoint ends
    train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
    reference = tmp_path / "reference"
    shutil.copytree(source, reference)
    train.train_and_evaluate(config, reference, progress=False, dataset=tiny_data)
    _assert_same(train.load_model(workdir)[0], train.load_model(reference)[0])


# ------------------------------------------------------------------------------------------------ preemption


def _wait_for(condition, proc, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigterm_and_kill_9_resume_to_the_weights_of_an_uninterrupted_run(tmp_path, tiny_data):
    steps, options = 150, ("checkpoint_every=25", "eval_every=1000", "log_every=1", "fewshot_draws=1")
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "train", "--preset", "tiny", "--steps", str(steps), "--workdir", str(workdir),
               "--no-progress", *[a for o in options for a in ("--set", o)]]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def start():
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    # SIGTERM: the step in flight finishes, a checkpoint of it is committed, status 75
    proc = start()
    _wait_for(lambda: _logged_steps(workdir) >= 3, proc, "3 logged steps")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STATUS, err
    stopped = checkpoint.latest(workdir)["step"]
    assert f"SIGTERM received: stopped after step {stopped}, checkpoint saved" in err and "Traceback" not in err
    assert 3 <= stopped < steps and _logged_steps(workdir) == stopped
    # kill -9 after a later checkpoint: the next start resumes from the last complete one
    proc = start()
    _wait_for(lambda: (checkpoint.complete_steps(workdir) or [0])[-1] > stopped, proc, "a new checkpoint")
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    config = resolve("tiny", steps=steps, overrides=options)
    # the same command would resume; the function it calls, in this process, saves a third start-up
    train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
    train.train_and_evaluate(config, tmp_path / "straight", progress=False, dataset=tiny_data)
    like = _like(config)
    _assert_same(checkpoint.restore(checkpoint.latest(workdir), like),
                 checkpoint.restore(checkpoint.latest(tmp_path / "straight"), like))  # fmt: skip
    log = lambda d: [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert log(workdir) == log(tmp_path / "straight")


# ------------------------------------------------------------------------------------------ a trained model


def test_evaluate_and_predict_clis(two_checkpoints, tmp_path, capsys):
    from PIL import Image

    from train import evaluate, predict

    workdir, _ = two_checkpoints
    assert evaluate.main(["--workdir", str(workdir), "--capacity-factor", "2"]) == 0
    out = capsys.readouterr().out
    assert "step 2 at capacity factor 2: test accuracy" in out and "5-shot linear probe" in out
    result = evaluate.evaluate_run(workdir, split="train", probe=False)
    assert result["split"] == "train" and result["num_images"] > 1000 and 0 <= result["accuracy"] <= 1
    assert evaluate.main(["--workdir", str(workdir), "--set", "learning_rate=1"]) == 1
    assert "can change mesh.data and mesh.expert only" in capsys.readouterr().err
    assert evaluate.main(["--workdir", str(workdir), "--set", "model.factor=2"]) == 1  # one spelling: said which
    assert "the capacity of an evaluation is --capacity-factor 2" in capsys.readouterr().err
    # a digit drawn as the digits data has them (light on dark), a second image, and a file that is not an image
    digit = np.zeros((8, 8), np.uint8)
    digit[1:7, 3:5] = 255  # a "1"
    Image.fromarray(digit).save(tmp_path / "one.png")
    Image.fromarray(255 - digit).save(tmp_path / "paper.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert predict.main(["--workdir", str(workdir), str(tmp_path / "one.png"), str(tmp_path / "paper.png"),
                         "--invert"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("one.png") and len(out) == 12 and "(class " in out[1]
    top = predict.predict(workdir, [tmp_path / "one.png", tmp_path / "paper.png"])
    assert len(top) == 2 and all(len(t) == 5 for t in top)
    probabilities = [p for *_, p in top[0]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    inverted = predict.predict(workdir, [tmp_path / "paper.png"], invert=True)
    assert inverted[0][0][:2] == predict.predict(workdir, [tmp_path / "one.png"])[0][0][:2]
    assert predict.main(["--workdir", str(workdir), str(tmp_path / "notes.txt")]) == 1
    assert f"error: {tmp_path / 'notes.txt'}: not a readable image" in capsys.readouterr().err


def test_evaluating_a_checkpoint_of_another_model_is_one_line(copy):
    # config.json edited (or copied from another run): the checkpoints hold another model than it describes
    workdir, _ = copy
    saved = json.loads((workdir / "config.json").read_text())
    saved["model"]["mlp_dim"] = 48
    (workdir / "config.json").write_text(json.dumps(saved))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-m", "train.evaluate", "--workdir", str(workdir), "--no-probe"],
                            capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [  # one line: no traceback, no asyncio noise at exit
        f"error: checkpoint {workdir / 'checkpoints' / '2'} holds a model of another config than the one given (its "
        "config.json -> given: model.mlp_dim: 64 -> 48); evaluate it with the config it was trained with"
    ], result.stderr


# ------------------------------------------------------------------------------------- gradient accumulation


def test_gradient_accumulation_equals_the_large_batch_step(tiny_data):
    from train.sharding import batch_sharding, make_mesh
    from train.trainer import make_step

    config = resolve("tiny", batch_size=16, overrides=("model.noise_std=0",))
    mesh = make_mesh(config)

    def run(accumulate):
        model, opt_state, optimizer, _ = init_state(config)
        step_fn = make_step(optimizer, 0.0, config.model.num_classes, accumulate, mesh.size)
        losses = []
        with jax.set_mesh(mesh):
            for step in range(3):
                images = jax.device_put(tiny_data.train_images[16 * step : 16 * step + 16], batch_sharding(mesh))
                labels = jax.device_put(tiny_data.train_labels[16 * step : 16 * step + 16], batch_sharding(mesh))
                model, opt_state, metrics = step_fn((images, labels, jax.random.key(step)), model, opt_state)
                losses.append(float(metrics["loss"]))
        return losses, _leaves(model)

    losses, params = run(1)
    for accumulate in (2,):  # (4 compiles another step: 15 s more for the same property)
        losses_n, params_n = run(accumulate)
        np.testing.assert_allclose(losses_n, losses, rtol=1e-5, err_msg=f"accumulate_steps={accumulate}")
        for a, b in zip(params_n, params, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"accumulate_steps={accumulate}")
    with pytest.raises(ValueError, match=r"batch_size 16 must be a multiple of accumulate_steps x model.group_images"
                       r" = 3 x 2"):  # fmt: skip
        resolve("tiny", batch_size=16, overrides=("accumulate_steps=3",))
    with pytest.raises(ValueError, match=r"accumulate_steps must be >= 1, got 0"):
        resolve("tiny", overrides=("accumulate_steps=0",))


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_written(tmp_path, tiny, tiny_data):
    small = train.data.from_arrays(
        tiny_data.train_images[:8], tiny_data.train_labels[:8], tiny_data.test_images[:8], tiny_data.test_labels[:8]
    )
    with pytest.raises(ValueError, match=r"batch_size 16 is larger than the 8 training examples"):
        train.train_and_evaluate(tiny.replace(batch_size=16), tmp_path / "run", progress=False, dataset=small)
    assert not (tmp_path / "run").exists()  # nothing written: the same workdir takes the corrected command


# ------------------------------------------------------------------------------------------------------------------
# The faults a cluster and a careless user produce (issue 27): a kill between two saves, a workdir without its
# config.json, an edited sha256.json, two trainings on one workdir, metrics.jsonl cut by a full disk. Each is
# checked at the function it concerns (train.checkpoint, train.workdir), or refused before any training.


@pytest.fixture
def copy(two_checkpoints, tmp_path):
    source, config = two_checkpoints
    shutil.copytree(source, tmp_path / "run")
    return tmp_path / "run", config


def _state(step):
    return {"w": jnp.full((64, 64), float(step))}, {"m": jnp.full((64,), float(step))}


# ------------------------------------------------------------------------- 1: a kill between two saves


@pytest.mark.parametrize("keep", [1, 2])
def test_a_committed_step_is_recorded_at_once_and_the_older_ones_outlive_it(tmp_path, keep):
    """At every moment of a save, ``keep`` complete steps are on disk (once ``keep`` were saved): a kill at any
    moment then resumes from a complete step. Nothing here calls ``finish`` (the next save, the end of the run)."""
    saver = checkpoint.Checkpoints(tmp_path, keep=keep, config_json='{"seed": 0}')
    for step in range(1, keep + 1):
        saver.save(step, *_state(step))
    saver.finish()
    assert checkpoint.complete_steps(tmp_path) == list(range(1, keep + 1))
    saver.save(keep + 1, *_state(keep + 1))  # returns before the files are written
    seen, deadline = [], time.monotonic() + 60
    while checkpoint.complete_steps(tmp_path)[-1:] != [keep + 1]:  # recorded with no further call
        seen.append(checkpoint.complete_steps(tmp_path))
        assert time.monotonic() < deadline, f"step {keep + 1} was never recorded; seen {seen[-1]}"
        time.sleep(0.005)
    assert all(len(steps) >= keep for steps in seen), seen
    saver.close()
    assert checkpoint.complete_steps(tmp_path) == list(range(2, keep + 2))  # then the oldest goes
    step_dir = tmp_path / "checkpoints" / str(keep + 1)
    record = json.loads((step_dir / checkpoint.SIDECAR).read_text())
    on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()} - {checkpoint.SIDECAR}
    assert set(record) == on_disk and "config.json" in record  # every file of the step, the config among them


@pytest.mark.parametrize("damage", ["cut", "not JSON", "not a record"])
def test_a_partial_or_unreadable_record_is_never_taken_for_a_complete_step(copy, damage, capsys):
    workdir, _ = copy
    sidecar = workdir / "checkpoints" / "2" / checkpoint.SIDECAR
    text = sidecar.read_text()
    sidecar.write_text({"cut": text[: len(text) // 2], "not JSON": "\x01" + text, "not a record": "[1, 2]"}[damage])
    assert checkpoint.complete_steps(workdir, report=True) == [1]
    err = capsys.readouterr().err
    assert f"{sidecar} is unreadable" in err and "step 2 is passed over" in err
    with pytest.raises(checkpoint.CorruptCheckpointError, match=rf"{re.escape(str(sidecar))} is unreadable"):
        checkpoint.restore({"step": 2, "path": sidecar.parent}, train.load_model(workdir, 1)[0], ("model",))


# --------------------------------------------------------------------- 2: the config lives with the checkpoints


def test_without_config_json_another_config_cannot_continue_the_checkpoints(copy, tiny_data):
    workdir, config = copy
    (workdir / "config.json").unlink()
    with pytest.raises(ConfigMismatchError, match=r"checkpoints/2 .*different config.*learning_rate: 0.003 -> 0.01"):
        train.train_and_evaluate(config.replace(learning_rate=0.01), workdir, progress=False, dataset=tiny_data)
    assert not (workdir / "config.json").exists()  # refused before anything was written
    assert checkpoint.complete_steps(workdir) == [1, 2]
    # a field that cannot change a result may differ from the checkpoint's copy
    recorded = checkpoint.recorded_config(checkpoint.latest(workdir))
    workers = config.data.__class__(**{**config.data.__dict__, "workers": 2})
    files.check_config(config.replace(checkpoint_every=3, keep_checkpoints=5, data=workers), recorded, "here")
    with pytest.raises(ConfigMismatchError, match=r"here holds .*log_every: 1 -> 2"):  # changes what is logged
        files.check_config(config.replace(log_every=2), recorded, "here")


# ------------------------------------------------------------------ 3: an edited record does not switch it off


@pytest.mark.parametrize("edit", ["unlisted", "added file"])
def test_an_edited_record_cannot_switch_the_integrity_check_off(copy, edit):
    workdir, _ = copy
    step_dir = workdir / "checkpoints" / "2"
    sidecar = step_dir / checkpoint.SIDECAR
    record = json.loads(sidecar.read_text())
    if edit == "unlisted":  # corrupt the largest array file, and drop it from the record
        name = max(record, key=lambda n: (step_dir / n).stat().st_size)
        data = bytearray((step_dir / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (step_dir / name).write_bytes(bytes(data))
        del record[name]
        sidecar.write_text(json.dumps(record))
    else:
        name = "model/extra"
        (step_dir / name).write_bytes(b"\0" * 16)
    unlisted = rf"{re.escape(name)} is not in its {checkpoint.SIDECAR}"
    with pytest.raises(checkpoint.CorruptCheckpointError, match=unlisted):
        train.load_model(workdir)
    assert train.load_model(workdir, 1)[0] is not None  # the other step is untouched


# ----------------------------------------------------------------------- 4: one training per workdir


def test_a_second_training_is_refused_naming_the_holder(copy, tiny_data):
    workdir, config = copy
    held = files.WorkdirLock(workdir)
    held.acquire()
    try:
        metrics = (workdir / "metrics.jsonl").read_text()
        pattern = rf"{re.escape(str(workdir))} is in use by .*pid {os.getpid()} on {re.escape(socket.gethostname())}"
        with pytest.raises(files.WorkdirInUseError, match=pattern):
            train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
        assert (workdir / "metrics.jsonl").read_text() == metrics and checkpoint.complete_steps(workdir) == [1, 2]
    finally:
        held.release()


def test_a_read_only_workdir_is_one_line(copy, tiny_data, monkeypatch):
    import errno

    workdir, config = copy

    def read_only(file, mode="r", *args, **kwargs):  # a read-only mount (root ignores chmod: simulated here)
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", read_only, raising=False)
    before = sorted(p.name for p in workdir.iterdir())
    with pytest.raises(ValueError, match=rf"^--workdir {re.escape(str(workdir))}: cannot write in it \(Read-only file "
                       r"system\)$"):  # fmt: skip
        train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    (tmp_path / files.LOCK).write_text(json.dumps({"pid": 2**22 + 7, "host": "node-3", "since": "yesterday"}))
    lock = files.WorkdirLock(tmp_path)
    lock.acquire()
    assert "taking over the lock of pid 4194311 on node-3" in capsys.readouterr().err
    assert json.loads((tmp_path / files.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    again = files.WorkdirLock(tmp_path)
    again.acquire()  # released: no note
    again.release()
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- 5: metrics.jsonl cut by a full disk


def test_a_cut_last_line_of_the_metrics_is_dropped_with_a_note(copy, capsys):
    workdir, _ = copy
    path = files.metrics_path(workdir)
    whole = path.read_text()
    path.write_text(whole + '{"step": 3, "lo')  # the write of step 3 cut by a full disk
    assert files.read_metrics(workdir) == [json.loads(line) for line in whole.splitlines()]
    assert f"{path}: dropping its last line, cut short" in capsys.readouterr().err
    files.truncate_metrics(workdir, 2)  # what a resumed run does first
    assert path.read_text() == whole
    path.write_text(whole.replace('"step": ', '"step" ', 1))  # not a cut: a damaged line before the last
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}, line 1 is not a JSON record"):
        files.read_metrics(workdir)


# ------------------------------------------------------------- what can be checked before training is checked


@pytest.mark.parametrize(("change", "pattern"), [
    ({"fewshot_shots": 1000}, r"fewshot_shots 1000 needs 1001 examples of every class in the probe's pool, but class "
                              r"\d+ has \d+: set --set fewshot_shots=N with N <= \d+"),
    ({"router": "softmax_token_choice", "factor": 1.5}, r"model config refused: factor must be an integer"),
    ({"workdir": "a file"}, r"--workdir .*a file is a file, not a directory"),
])  # fmt: skip
def test_a_start_is_refused_before_anything_is_written(tmp_path, tiny, tiny_data, change, pattern):
    config, workdir = tiny, tmp_path / "run"
    if "fewshot_shots" in change:
        config = tiny.replace(fewshot_shots=change["fewshot_shots"])
    elif "router" in change:
        config = tiny.replace(model=tiny.model.__class__(**{**tiny.model.__dict__, **change}))
    else:
        workdir = tmp_path / change["workdir"]
        workdir.write_text("")
    with pytest.raises(ValueError, match=pattern):
        train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
    assert not (tmp_path / "run").exists()  # the corrected command starts afresh in the same workdir
    with pytest.raises(ValueError, match=r"steps must be < 2\*\*31 = 2147483648, got 100000000000000000000000"):
        train.resolve("tiny", steps=10**23)


def test_a_step_is_saved_before_it_is_evaluated(copy, tiny_data, monkeypatch):
    import train.trainer

    def broken(*args, **kwargs):  # a test image that passed the checks at opening, unreadable at evaluation
        raise OSError("image file is truncated")

    monkeypatch.setattr(train.trainer, "evaluate_accuracy", broken)
    workdir, config = copy  # steps 1 and 2 saved; steps 3 and 4 to go, 4 saved and evaluated
    with pytest.raises(OSError, match="truncated"):
        train.train_and_evaluate(config, workdir, progress=False, dataset=tiny_data)
    assert checkpoint.complete_steps(workdir) == [3, 4]  # the training of steps 3-4 is kept
    assert [r["step"] for r in files.read_metrics(workdir)] == [1, 2, 3, 4]


def test_a_save_on_a_full_disk_is_one_line_and_removes_what_it_half_wrote(tmp_path, monkeypatch):
    import errno

    saver = checkpoint.Checkpoints(tmp_path)
    saver.save(1, *_state(1))
    saver.finish()

    def full(step_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(step_dir / checkpoint.SIDECAR))

    monkeypatch.setattr(checkpoint, "_write_sidecar", full)
    saver.save(2, *_state(2))
    pattern = (r"could not write checkpoint 2 in .*checkpoints \(No space left on device: .*2/sha256.json\); its "
               r"partial files were removed. The last complete checkpoint is step 1.")  # fmt: skip
    with pytest.raises(checkpoint.CheckpointWriteError, match=pattern):
        saver.finish()
    saver.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_step_deleted_while_it_is_read_is_not_an_error(copy, monkeypatch):
    # a training in the workdir deletes its oldest step once a newer one is recorded (train.evaluate meanwhile)
    workdir, _ = copy
    restore, calls = checkpoint.restore, []

    def deleted_under_the_reader(meta, like, items):
        calls.append(meta["step"])
        if len(calls) == 1:
            shutil.rmtree(meta["path"])
            raise FileNotFoundError(meta["path"] / "model")
        return restore(meta, like, items)

    monkeypatch.setattr(checkpoint, "restore", deleted_under_the_reader)
    from train.trained import load_trained

    _, _, step = load_trained(workdir)
    assert calls == [2, 1] and step == 1
