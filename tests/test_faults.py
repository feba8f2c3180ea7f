"""The faults a cluster and a careless user produce (issue 27): a kill between two saves, a workdir without its
``config.json``, an edited ``sha256.json``, two trainings on one workdir, ``metrics.jsonl`` cut by a full disk.
Each is checked at the function it concerns (``train.checkpoint``, ``train.workdir``), or refused before any
training, so every test takes seconds."""

import json
import os
import re
import shutil
import socket
import time

import jax.numpy as jnp
import pytest

import train
from train import checkpoint
from train import workdir as files
from train.workdir import ConfigMismatchError


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny, tiny_data):
    """A tiny run stopped at step 2 with checkpoints at steps 1 and 2."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny.replace(steps=4, checkpoint_every=1, eval_every=100, log_every=1)
    train.train_and_evaluate(config, workdir, stop_after=2, progress=False, dataset=tiny_data)
    return workdir, config


@pytest.fixture
def copy(run, tmp_path):
    source, config = run
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
    path.write_text(whole.replace('"step": 1', '"step" 1'))  # not a cut: a damaged line in the middle
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


def test_a_step_is_saved_before_it_is_evaluated(tmp_path, tiny, tiny_data, monkeypatch):
    import train.trainer

    def broken(*args, **kwargs):  # a test image that passed the checks at opening, unreadable at evaluation
        raise OSError("image file is truncated")

    monkeypatch.setattr(train.trainer, "evaluate_accuracy", broken)
    config = tiny.replace(steps=4, eval_every=2, checkpoint_every=2, log_every=1)
    with pytest.raises(OSError, match="truncated"):
        train.train_and_evaluate(config, tmp_path, progress=False, dataset=tiny_data)
    assert checkpoint.complete_steps(tmp_path) == [2]  # the training of steps 1-2 is kept
    assert [r["step"] for r in files.read_metrics(tmp_path)] == [1, 2]


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
