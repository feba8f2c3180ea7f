"""Training runs: smoke, exact resume, refusals, NaN handling, configs and the CLI (many devices:
test_expert_parallel.py)."""

import dataclasses
import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import train
from train import checkpoint
from train.config import override
from train.presets import resolve
from train.trainer import NonFiniteLossError
from train.workdir import ConfigMismatchError


def saved_params(workdir, config):
    from train.state import init_state

    model, opt_state, _, _ = init_state(config)
    return checkpoint.restore(checkpoint.latest(workdir), (model, opt_state))


def test_one_step_then_resume_to_two(tmp_path, tiny, tiny_data):
    config = tiny.replace(steps=2, checkpoint_every=1, eval_every=1)
    out = train.train_and_evaluate(config, tmp_path, stop_after=1, progress=False, dataset=tiny_data)
    assert out == {"step": 1, "stopped_early": True}
    assert checkpoint.latest(tmp_path)["step"] == 1
    summary = train.train_and_evaluate(config, tmp_path, progress=False, dataset=tiny_data)
    assert checkpoint.latest(tmp_path)["step"] == 2
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["fewshot_accuracy"] <= 1
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(config.to_json())
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 0
    for name in ("expert_usage.png", "routing_maps.png"):  # what the routers do, drawn from the final weights
        assert (tmp_path / "plots" / name).stat().st_size > 0
    assert len(summary["moe_layers"]) == 1 and summary["moe_layers"][0]["block"] == 1


def test_resume_continues_exactly(tmp_path, tiny, tiny_data):
    config = tiny.replace(steps=6, checkpoint_every=3, eval_every=6, log_every=1)
    train.train_and_evaluate(config, tmp_path / "interrupted", stop_after=3, progress=False, dataset=tiny_data)
    train.train_and_evaluate(config, tmp_path / "interrupted", progress=False, dataset=tiny_data)
    train.train_and_evaluate(config, tmp_path / "straight", progress=False, dataset=tiny_data)
    a = jax.tree_util.tree_leaves(saved_params(tmp_path / "interrupted", config))
    b = jax.tree_util.tree_leaves(saved_params(tmp_path / "straight", config))
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    log = lambda d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["loss"] for r in log("interrupted")] == [r["loss"] for r in log("straight")]


def test_a_different_config_is_refused(tmp_path, tiny, tiny_data):
    train.train_and_evaluate(tiny.replace(steps=1), tmp_path, progress=False, dataset=tiny_data)
    with pytest.raises(ConfigMismatchError, match=r"different config.*learning_rate: 0.003 -> 0.01"):
        train.train_and_evaluate(tiny.replace(steps=1, learning_rate=0.01), tmp_path, progress=False)


def test_the_config_is_read_whole_while_process_0_rewrites_it(tmp_path, tiny):
    # With several processes, the others check config.json while process 0 records it; a write that truncates first
    # let a reader see an empty file ("not valid JSON"), which ended a resumed two-process run in CI.
    import threading

    from train.workdir import check_or_write_config

    check_or_write_config(tiny, tmp_path)
    done = threading.Event()

    def rewrite():
        while not done.is_set():
            check_or_write_config(tiny, tmp_path)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for _ in range(3000):
            check_or_write_config(tiny, tmp_path, write=False)
    finally:
        done.set()
        writer.join()


def test_corrupted_checkpoint_is_detected_not_loaded(tmp_path, tiny, tiny_data):
    config = tiny.replace(steps=2, checkpoint_every=1)
    train.train_and_evaluate(config, tmp_path, stop_after=1, progress=False, dataset=tiny_data)
    step_dir = checkpoint.latest(tmp_path)["path"]
    # the largest file of the step: array data (orbax does not checksum it; the SHA-256 record does)
    path = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    name = re.escape(str(path.relative_to(step_dir)))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=rf"checkpoints/1: {name} does not match its recorded "
                       "SHA-256: it is corrupted and was not loaded"):  # fmt: skip
        train.train_and_evaluate(config, tmp_path, progress=False, dataset=tiny_data)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="does not match its recorded SHA-256"):
        train.load_model(tmp_path)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny, tiny_data):
    config = tiny.replace(steps=4, checkpoint_every=2)
    train.train_and_evaluate(config, tmp_path, stop_after=2, progress=False, dataset=tiny_data)
    poisoned = dataclasses.replace(tiny_data, train_images=np.full_like(tiny_data.train_images, np.nan))
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*last good checkpoint \(step 2\)"):
        train.train_and_evaluate(config, tmp_path, progress=False, dataset=poisoned)
    assert checkpoint.latest(tmp_path)["step"] == 2


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"preset_name": "imagenet"}, r"unknown preset 'imagenet'; valid presets: digits, synthetic"),
        ({"router": "switch"}, r"unknown router 'switch'; valid routers: softmax_token_choice"),
        ({"overrides": ("model.widht=3",)}, r"model.widht: unknown key; valid keys: model.image_size"),
        ({"overrides": ("learning_rate=fast",)}, r"learning_rate=fast: expected a value of type float"),
        ({"overrides": ("steps",)}, r"--set expects key=value"),
        ({"batch_size": 60}, r"batch_size 60 must be a multiple of model.group_images 8"),
        ({"overrides": ("learning_rate=nan",)}, r"learning_rate must be a finite number > 0, got nan"),
        ({"overrides": ("learning_rate=-1e-3",)}, r"learning_rate must be a finite number > 0, got -0.001"),
        ({"overrides": ("weight_decay=inf",)}, r"weight_decay must be a finite number in \[0, inf\), got inf"),
        ({"overrides": ("label_smoothing=1.5",)}, r"label_smoothing must be a finite number in \[0, 1\], got 1.5"),
        ({"overrides": ("grad_clip_norm=0",)}, r"grad_clip_norm must be a finite number > 0, got 0"),
        ({"overrides": ("warmup_steps=-1",)}, r"warmup_steps must be >= 0, got -1"),
        ({"overrides": ("model.load_weight=nan",)}, r"load_weight must be a finite number in \[0, inf\), got nan"),
        ({"overrides": ("model.noise_std=-0.5",)}, r"noise_std must be a finite number in \[0, inf\), got -0.5"),
        ({"overrides": ("model.factor=inf",)}, r"factor must be a finite number > 0, got inf"),
    ],
)
def test_bad_options_are_errors_that_list_the_valid_ones(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve(**kwargs)


def test_overrides_parse_types():
    config = resolve("digits")
    config = override(config, "model.factor=2")
    assert config.model.factor == 2 and isinstance(config.model.factor, int)
    assert override(config, "model.noise_std=none").model.noise_std is None
    assert override(config, "model.soft_moe_normalize=true").model.soft_moe_normalize is True
    assert override(config, "data.path=/x").data.path == "/x"


def test_cli_runs_and_prints_the_summary(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", "--preset", "tiny", "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "10-shot" not in result.stdout  # tiny probes 5-shot
    assert "5-shot linear probe" in result.stdout and "block 1" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "train", "--router", "top2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "valid routers" in bad.stderr


def test_fewshot_cli_on_a_trained_workdir(tmp_path, tiny, tiny_data):
    train.train_and_evaluate(tiny.replace(steps=2), tmp_path, progress=False, dataset=tiny_data)
    from train.evaluate import evaluate_run

    result = evaluate_run(tmp_path, accuracy=False)
    probe = result["fewshot"]
    assert result["step"] == 2 and probe["shots"] == 5 and 0 <= probe["accuracy"] <= 1 and "accuracy" not in result
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        evaluate_run(tmp_path / "nothing")


# ------------------------------------------------------------------------- evaluation independent of storage


def test_evaluation_does_not_depend_on_how_the_test_set_is_stored(tmp_path, tiny_data):
    # An Expert Choice model (it routes the best tokens of a whole group of images per expert, so a token's output
    # depends on its group mates), trained a few steps so that its head is not zero.
    from train.evaluators import evaluate_accuracy, in_batches
    from train.evaluators import evaluation_order as order_of
    from train.evaluators import features as features_of
    from train.sharding import batch_sharding, make_mesh

    config = resolve("tiny", router="softmax_expert_choice", steps=6, overrides=("eval_every=6",))
    train.train_and_evaluate(config, tmp_path, progress=False, dataset=tiny_data)
    model = saved_params(tmp_path, config)[0]
    sharding = batch_sharding(make_mesh(config))
    by_class = np.argsort(tiny_data.test_labels, kind="stable")
    shuffled = np.random.default_rng(0).permutation(len(by_class))
    images, labels = tiny_data.test_images, tiny_data.test_labels
    sorted_acc = evaluate_accuracy(model, images[by_class], labels[by_class], config.batch_size, sharding)
    shuffled_acc = evaluate_accuracy(model, images[shuffled], labels[shuffled], config.batch_size, sharding)
    assert abs(sorted_acc - shuffled_acc) <= 0.005  # the promise; in fact the two are equal:
    assert sorted_acc == shuffled_acc
    def in_stored_order(copy_index, features):  # features of images[copy_index], back in the order of `images`
        out = np.full((len(images), *features.shape[1:]), np.nan, features.dtype)
        out[copy_index] = features
        return out

    features = [in_stored_order(idx, in_batches(features_of, model, images[idx], config.batch_size, sharding))
                for idx in (by_class, shuffled)]  # fmt: skip
    np.testing.assert_array_equal(features[0], features[1])
    # ... while walking the two copies in stored order, as evaluation did before, changes the features: the test
    # above would catch an evaluation that groups images by how they are stored.
    full = len(images) - len(images) % config.batch_size
    walked = [in_stored_order(idx[:full], np.concatenate([np.asarray(features_of(model, images[idx[i : i + 8]]))
                                                           for i in range(0, full, 8)]))
              for idx in (by_class, shuffled)]  # fmt: skip
    both = np.isin(np.arange(len(images)), by_class[:full]) & np.isin(np.arange(len(images)), shuffled[:full])
    assert np.abs(walked[0][both] - walked[1][both]).max() > 1e-3
    # the order is a function of the images alone: the same for any copy of the set
    np.testing.assert_array_equal(by_class[order_of(images[by_class])], shuffled[order_of(images[shuffled])])


def test_a_partial_last_batch_is_filled_with_real_images():
    from train.evaluators import in_batches

    images = np.arange(1, 11, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 1), np.float32)
    seen = []

    def fn(model, x):
        seen.append(np.asarray(x))
        return np.asarray(x)[:, 0, 0, 0] * 10

    out = in_batches(fn, None, images, 4, None)  # 10 images in batches of 4: the third batch needs 2 more
    np.testing.assert_array_equal(out, np.arange(1, 11) * 10)  # outputs back in stored order
    assert len(seen) == 3 and all(batch.shape == (4, 2, 2, 1) for batch in seen)
    values = np.concatenate([batch[:, 0, 0, 0] for batch in seen])
    assert set(values.tolist()) == set(range(1, 11))  # no blank image: every image in a batch is a real one
    assert sorted(values[:10].tolist()) == list(range(1, 11)) and len(set(values[10:]) & set(values[:2])) == 2


def test_seed_sets_the_data_order_and_data_seed_the_data(tmp_path, tiny, tiny_data):
    from train.data import BatchOrder

    # the order is drawn from config.seed: two seeds differ, the same seed repeats
    assert not np.array_equal(BatchOrder(100, 10, 0).indices(0), BatchOrder(100, 10, 1).indices(0))
    np.testing.assert_array_equal(BatchOrder(100, 10, 3).indices(7), BatchOrder(100, 10, 3).indices(7))
    a = train.train_and_evaluate(tiny.replace(steps=2, seed=0), tmp_path / "a", progress=False, dataset=tiny_data)
    b = train.train_and_evaluate(tiny.replace(steps=2, seed=1), tmp_path / "b", progress=False, dataset=tiny_data)
    assert a["fewshot_draw_accuracies"] != b["fewshot_draw_accuracies"] or a["final_train_loss"] != b[
        "final_train_loss"]  # fmt: skip
    assert len(a["fewshot_draw_accuracies"]) == tiny.fewshot_draws == 5


def test_frozen_router_gets_no_update(tmp_path, tiny, tiny_data):
    config = tiny.replace(steps=3, model=tiny.model.replace(freeze_router=True, noise_std=0.0))
    train.train_and_evaluate(config, tmp_path, progress=False, dataset=tiny_data)
    from optimized import ViTMoE

    trained = saved_params(tmp_path, config)[0]
    initial = ViTMoE(config.model, key=jax.random.split(jax.random.key(config.seed))[0])
    np.testing.assert_array_equal(trained.blocks[1].moe.router_weight, initial.blocks[1].moe.router_weight)
    assert not np.array_equal(trained.blocks[1].moe.experts.w1, initial.blocks[1].moe.experts.w1)


def test_progress_bar_shows_rate_and_can_be_turned_off(tmp_path, tiny, tiny_data, capsys):
    config = tiny.replace(steps=3)
    train.train_and_evaluate(config, tmp_path / "on", progress=True, dataset=tiny_data)
    err = capsys.readouterr().err
    assert "3/3" in err and "step/s" in err, err  # tqdm's count and rate (a log gets the bar at start and end)
    train.train_and_evaluate(config, tmp_path / "off", progress=False, dataset=tiny_data)
    assert "step" not in capsys.readouterr().err
