"""train.data's streaming pipeline: ops, order, per-process shares, shards and their manifest, resume, bad input,
and one tiny training run on an image folder. Every image folder is written here (a few dozen small files)."""

import json
import os

import jax
import numpy as np
import pytest

from train import data as D
from train.prepare import write_shards

COLORS = ((220, 30, 30), (30, 200, 30), (40, 40, 230))


def write_folder(root, per_class=6, size=20):
    """Three classes of small images, PNG and JPEG, of varying shapes; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, color in enumerate(COLORS):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            shape = (size + k, size + 2 * (k % 3), 3)
            pixels = np.clip(np.array(color) * 0.8 + rng.integers(0, 50, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{k}.{'png' if k % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder"))


def record(folder, index=0):
    files = D.read_image_folder(folder).train_files
    with open(files[index], "rb") as f:
        return f.read()


def test_augmentation_is_a_pure_function_of_seed_index_and_epoch(folder):
    ops = D.train_ops(12, 3, augment=True)
    assert ops.names == ("decode", "inception_crop", "resize", "flip_lr", "value_range") and ops.random
    data = record(folder)
    a = ops(data, D.example_rng(0, 5, 1))
    np.testing.assert_array_equal(a, ops(data, D.example_rng(0, 5, 1)))
    assert a.shape == (12, 12, 3) and a.dtype == np.float32 and -1 <= a.min() and a.max() <= 1
    # another epoch, index or seed draws another crop (a continuous draw: equal crops would be a coincidence)
    for other in ((0, 5, 2), (0, 6, 1), (1, 5, 1)):
        assert not np.array_equal(ops(data, D.example_rng(*other)), a), other
    evaluation = D.eval_ops(12, 3)
    assert evaluation.names == ("decode", "resize_central_crop", "value_range") and not evaluation.random
    np.testing.assert_array_equal(evaluation(data, D.example_rng(0, 0, 0)), evaluation(data, D.example_rng(1, 2, 3)))
    assert D.train_ops(12, 3, augment=False).names == evaluation.names


def test_process_shares_are_disjoint_and_make_up_the_global_batch(folder):
    order = D.BatchOrder(100, 8, seed=3)
    for step in (0, 11, 12, 40):
        batch = order.indices(step)
        shares = [D.process_share(batch, p, 2) for p in range(2)]
        assert not set(shares[0]) & set(shares[1])
        np.testing.assert_array_equal(np.concatenate(shares), batch)
    # Two simulated processes of the streaming loader read, together, what one process reads (pixels included).
    folder_data = D.read_image_folder(folder)
    source = D.ImageFolderSource(folder_data.train_files, folder_data.train_labels)
    ops = D.train_ops(8, 3, augment=True)
    one = D.TrainLoader(source, 4, seed=1, preprocess=ops)
    two = [D.TrainLoader(source, 4, seed=1, preprocess=ops, process_index=p, process_count=2) for p in range(2)]
    for step in (0, 5):
        images, labels = one.batch(step)
        halves = [loader.batch(step) for loader in two]
        np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), images)
        np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), labels)
    with pytest.raises(ValueError, match="process_index must be an integer in"):
        D.process_share(np.arange(4), 2, 2)


def test_resume_mid_epoch_on_the_streaming_path_gives_the_same_batches(folder):
    folder_data = D.read_image_folder(folder)
    source = D.ImageFolderSource(folder_data.train_files, folder_data.train_labels)  # 12 train images: 3 per epoch
    loader = D.TrainLoader(source, 4, seed=2, preprocess=D.train_ops(8, 3, augment=True))
    straight = list(loader.batches(0, 8))
    assert not np.array_equal(straight[1][0], straight[4][0])  # epochs differ
    for start in (4, 5):  # a restart mid-epoch (step 4 is batch 1 of epoch 1)
        for (x, y), (x0, y0) in zip(loader.batches(start, 8), straight[start:], strict=True):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)
    # in a grain worker process: the same pixels
    workers = D.TrainLoader(source, 4, seed=2, preprocess=D.train_ops(8, 3, augment=True), workers=1)
    for (x, y), (x0, y0) in zip(workers.batches(5, 8), straight[5:], strict=True):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)


def test_converter_round_trip_and_shards_read_like_the_folder(folder, tmp_path):
    manifest = write_shards(folder, tmp_path / "shards", shards=2)
    assert manifest["class_names"] == ["c0", "c1", "c2"] and manifest["splits"]["train"]["count"] == 12
    assert [s["count"] for s in manifest["splits"]["test"]["shards"]] == [3, 3]
    checked = D.read_manifest(tmp_path / "shards")
    folder_data = D.read_image_folder(folder)
    for split in ("train", "test"):
        shards = D.ArrayRecordSource.open(tmp_path / "shards", split, checked)
        files, labels = getattr(folder_data, f"{split}_files"), getattr(folder_data, f"{split}_labels")
        np.testing.assert_array_equal(shards.labels, labels)
        for i, file in enumerate(files):
            with open(file, "rb") as f:
                assert shards.read(i) == (f.read(), int(labels[i]))  # the same bytes, the same label
    # the loader reads shards and folder alike: same batches, pixel for pixel
    ops = D.train_ops(8, 3, augment=True)
    a = D.TrainLoader(D.ArrayRecordSource.open(tmp_path / "shards", "train", checked), 4, seed=0, preprocess=ops)
    b = D.TrainLoader(D.ImageFolderSource(folder_data.train_files, folder_data.train_labels), 4, seed=0,
                      preprocess=ops)  # fmt: skip
    for (x, y), (x0, y0) in zip(a.batches(0, 4), b.batches(0, 4), strict=True):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
    with pytest.raises(ValueError, match=r"already holds a manifest\.json"):
        write_shards(folder, tmp_path / "shards")


def test_a_manifest_that_does_not_match_its_shards_is_refused(folder, tmp_path):
    write_shards(folder, tmp_path / "s", shards=2)
    manifest_file = tmp_path / "s" / "manifest.json"
    original = json.loads(manifest_file.read_text())
    shard = tmp_path / "s" / original["splits"]["train"]["shards"][1]["file"]
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF
    shard.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"train-00001-of-00002.array_record does not match its SHA-256"):
        D.read_manifest(tmp_path / "s")
    with pytest.raises(ValueError, match=r"train-00001-of-00002.array_record is not a readable ArrayRecord"):
        D.read_manifest(tmp_path / "s", verify=False)  # without the checksums, the damage is still found
    write_shards(folder, tmp_path / "t", shards=2)
    changed = json.loads((tmp_path / "t" / "manifest.json").read_text())
    changed["splits"]["test"]["shards"][0]["count"] += 1
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match=r"test-00000-of-00002.array_record holds 3 records but .* says 4"):
        D.read_manifest(tmp_path / "t")
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(original | {"source": "elsewhere"}))
    os.remove(tmp_path / "t" / changed["splits"]["test"]["shards"][1]["file"])
    with pytest.raises(ValueError, match=r"test-00001-of-00002.array_record listed in .* does not exist"):
        D.read_manifest(tmp_path / "t")
    with pytest.raises(ValueError, match=r"no manifest.json"):
        D.read_manifest(tmp_path)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("splits"), r"missing key 'splits' \(expected an object of splits\)"),
    (lambda m: m["splits"]["train"].pop("labels"), r"missing key 'splits.train.labels'"),
    (lambda m: m["splits"]["test"]["shards"][0].pop("sha256"), r"missing key 'splits.test.shards\[0\].sha256'"),
    (lambda m: m["splits"]["train"]["labels"].pop("sha256"), r"missing key 'splits.train.labels.sha256'"),
    (lambda m: m["splits"].update(train=None), r"splits.train is null, expected an object with count, shards"),
    (lambda m: m.update(class_names=None), r"class_names is null, expected a list of class names"),
])  # fmt: skip
def test_a_manifest_missing_a_key_is_one_line_naming_it(folder, tmp_path_factory, edit, message):
    out = tmp_path_factory.getbasetemp() / "shards-for-keys"
    if not out.exists():
        write_shards(folder, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    broken = tmp_path_factory.mktemp("edited")
    for f in out.iterdir():
        os.symlink(f, broken / f.name)
    (broken / "manifest.json").unlink()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"^{broken / 'manifest.json'}: {message}") as error:
        D.read_manifest(broken)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("existing", [False, True])
def test_prepare_on_a_full_disk_is_one_line_and_removes_what_it_wrote(folder, tmp_path, monkeypatch, capsys, existing):
    import errno

    import train.prepare

    out = tmp_path / "out"
    if existing:  # an empty directory the user made: it stays, emptied of what prepare wrote
        out.mkdir()

    def full(file, *args, **kwargs):  # the train split's shard is written; its labels file meets a full disk
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(train.prepare.np, "save", full)
    with pytest.raises(SystemExit):
        train.prepare.main(["--from", str(folder), "--to", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"python -m train.prepare: error: writing shards failed at {out / 'train-labels.npy'}: No space "
                   f"left on device; the partial output was removed ("
                   + (f"2 file(s) in {out})" if existing else f"the directory {out})"))  # fmt: skip
    assert (list(out.iterdir()) == []) if existing else not out.exists()


def test_more_workers_than_cores_is_a_warning_naming_the_count(folder, capsys):
    from train.data.loader import available_cores

    source = D.ImageFolderSource(*(lambda f: (f.train_files, f.train_labels))(D.read_image_folder(folder)))
    cores = available_cores()
    D.TrainLoader(source, 4, 0, D.eval_ops(8, 3), workers=cores)
    assert capsys.readouterr().err == ""
    D.TrainLoader(source, 4, 0, D.eval_ops(8, 3), workers=cores + 1)
    assert capsys.readouterr().err == (f"warning: data.workers = {cores + 1} is more than the {cores} core(s) this "
                                       "process may use: the workers compete for them and reading slows down (set "
                                       f"--set data.workers={cores} or fewer)\n")  # fmt: skip


def test_bad_image_folders_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"image folder .*nowhere does not exist"):
        D.read_image_folder(tmp_path / "nowhere")
    root = write_folder(tmp_path / "a", per_class=3)
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty holds no image files"):
        D.read_image_folder(root)
    os.rmdir(root / "empty")
    broken = root / "c1" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        D.read_image_folder(root)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        write_shards(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
    os.remove(broken)
    # A JPEG whose pixel data is cut short passes the header check, and stops the run when it is decoded, naming
    # the file.
    from PIL import Image

    jpeg = root / "c0" / "0.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[: 2 * jpeg.stat().st_size // 3])
    folder_data = D.read_image_folder(root)
    files = folder_data.train_files + folder_data.test_files
    source = D.ImageFolderSource(files, np.concatenate([folder_data.train_labels, folder_data.test_labels]))
    with pytest.raises(ValueError, match=r"0\.jpg.*cannot read image"):
        D.loader.read_examples(source, np.array([files.index(str(jpeg))]), D.eval_ops(8, 3), seed=0, epoch=0)


def test_a_cut_jpeg_in_the_test_split_is_refused_before_training(tmp_path):
    # issue 27, fault 6: the header check passes it, and the run used to die at its first evaluation
    import train
    from train.presets import resolve

    write_folder(tmp_path / "data" / "train", per_class=4)
    write_folder(tmp_path / "data" / "test", per_class=2)
    jpeg = tmp_path / "data" / "test" / "c1" / "0.jpg"
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[: 2 * jpeg.stat().st_size // 3])
    overrides = ("data.name=imagefolder", f"data.path={tmp_path / 'data'}", "data.channels=3", "model.channels=3",
                 "model.num_classes=3", "fewshot_shots=1", "fewshot_draws=1")  # fmt: skip
    config = resolve("tiny", steps=2, batch_size=4, overrides=overrides)
    with pytest.raises(ValueError, match=rf"^cannot read image {jpeg}: OSError: image file is truncated") as error:
        train.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_and_test_sub_folders_are_the_splits(tmp_path):
    write_folder(tmp_path / "train", per_class=4)
    write_folder(tmp_path / "val", per_class=2)
    folder = D.read_image_folder(tmp_path, test_fraction=0.5)
    assert folder.layout == "split" and folder.class_names == ("c0", "c1", "c2")
    assert len(folder.train_files) == 12 and len(folder.test_files) == 6
    assert all(os.sep + "val" + os.sep in f for f in folder.test_files)


def test_training_on_an_image_folder_end_to_end_and_resuming_exactly(folder, tmp_path, monkeypatch):
    import train
    from train import checkpoint
    from train.input_pipeline import load_data
    from train.presets import resolve

    overrides = ("data.name=imagefolder", f"data.path={folder}", "data.channels=3", "model.channels=3",
                 "model.num_classes=3", "data.augment=true", "fewshot_shots=2", "fewshot_draws=1",
                 "checkpoint_every=1")  # fmt: skip
    config = resolve("tiny", steps=3, batch_size=4, overrides=overrides)  # 12 train images: a new epoch at step 3
    assert train.train_and_evaluate(config, tmp_path / "cut", stop_after=2, progress=False)["stopped_early"]
    summary = train.train_and_evaluate(config, tmp_path / "cut", progress=False)  # resumed mid-epoch
    assert summary["steps"] == 3 and 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["fewshot_accuracy"] <= 1
    assert summary["num_test"] == 6  # round(0.25 * 6) per class
    # killed at step 2 and resumed, or straight through: the same weights, bit for bit
    train.train_and_evaluate(config, tmp_path / "straight", stop_after=3, progress=False)
    cut, straight = checkpoint.latest(tmp_path / "cut"), checkpoint.latest(tmp_path / "straight")
    assert cut["step"] == straight["step"] == 3
    from train.state import init_state

    like = tuple(init_state(config)[:2])
    for a, b in zip(jax.tree.leaves(checkpoint.restore(cut, like)), jax.tree.leaves(checkpoint.restore(straight, like)),
                    strict=True):  # weights and optimizer state, every array bit for bit
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # predicting on a streamed run reads no image of its data (it used to scan and verify the whole folder)
    from train import predict

    jpeg = next(f for f in D.read_image_folder(folder).test_files if f.endswith(".jpg"))

    def opened(*args, **kwargs):
        raise AssertionError("train.predict opened the run's data")

    monkeypatch.setattr(D.sources, "read_image_folder", opened)
    monkeypatch.setattr(D.sources, "check_image_file", opened)
    monkeypatch.setattr(D.splits, "read_image_folder", opened)
    [top] = predict.predict(tmp_path / "cut", [jpeg], top=3)
    assert len(top) == 3 and {name for _, name, _ in top} <= {"c0", "c1", "c2"}
    monkeypatch.undo()
    # the routing plots of a streamed run decode a bounded part of its test split: the first 4 of evaluation order
    from train.visualize import visualize_run

    usage, maps = visualize_run(tmp_path / "cut", num_images=2, progress=False, max_streamed=4)
    assert usage.stat().st_size > 0 and maps.stat().st_size > 0
    images, labels = D.test_arrays(load_data(config), 4)
    assert images.shape == (4, 8, 8, 3) and images.min() >= -1 and images.max() <= 1 and labels.shape == (4,)
    with pytest.raises(ValueError, match=r"model.num_classes = 10 but the imagefolder data has 3 classes"):
        load_data(config.replace(model=config.model.replace(num_classes=10)))
    with pytest.raises(ValueError, match=r"data.augment is for image sources"):
        load_data(resolve("tiny", overrides=("data.augment=true",)))


def test_evaluation_batches_are_the_same_read_here_or_in_a_worker(folder):
    folder_data = D.read_image_folder(folder)
    source = D.ImageFolderSource(folder_data.test_files, folder_data.test_labels)  # 6 test images
    batches = D.EvalBatches(source, 4, D.eval_ops(8, 3))  # the second batch wraps around to 2 images of the first
    assert len(batches) == 2 and sorted(set(np.concatenate([batches.indices(0), batches.indices(1)]))) == [*range(6)]
    here = list(batches.batches())
    for (x, y), (x0, y0) in zip(batches.batches(workers=1), here, strict=True):
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
    # the order depends on the files' bytes alone: a reversed listing is evaluated in the same order
    reversed_source = D.ImageFolderSource(folder_data.test_files[::-1], folder_data.test_labels[::-1])
    np.testing.assert_array_equal(D.EvalBatches(reversed_source, 4).order, 5 - batches.order)
