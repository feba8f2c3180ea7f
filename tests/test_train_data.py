"""train.data: the four datasets, their splits and normalization, deterministic batching, and bad input.

CIFAR-10 and image folders are written by the tests themselves (tiny files in the real formats): nothing is
downloaded.
"""

import doctest
import os
import pickle
import struct

import numpy as np
import pytest

from train import data as D

SMALL_SYNTHETIC = {"num_classes": 12, "heldout_classes": 4, "images_per_class": 15, "test_per_class": 5}


def raw(images, dataset):
    """Undo a dataset's normalization."""
    return images.astype(np.float64) * np.array(dataset.std) + np.array(dataset.mean)


def nearest_class_mean_accuracy(train_images, train_labels, test_images, test_labels, num_classes):
    x = train_images.reshape(len(train_images), -1).astype(np.float64)
    t = test_images.reshape(len(test_images), -1).astype(np.float64)
    means = np.stack([x[train_labels == c].mean(axis=0) for c in range(num_classes)])
    distances = (t**2).sum(1)[:, None] - 2 * t @ means.T + (means**2).sum(1)[None]
    return float(np.mean(distances.argmin(axis=1) == test_labels))


def test_docstring_examples():
    from train.data import arrays, datasets, loader

    results = [doctest.testmod(m, optionflags=doctest.NORMALIZE_WHITESPACE) for m in (arrays, datasets, loader)]
    assert sum(r.attempted for r in results) >= 3 and sum(r.failed for r in results) == 0


# ---------------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return D.load("digits")


def test_digits_shapes_classes_and_normalization(digits):
    assert digits.train_images.shape == (1347, 16, 16, 1) and digits.test_images.shape == (450, 16, 16, 1)
    assert digits.train_images.dtype == np.float32 and digits.train_labels.dtype == np.int32
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    assert digits.image_shape == (16, 16, 1)
    # Normalized on train: zero mean, unit std there; the test split went through the same transform.
    assert abs(digits.train_images.mean()) < 1e-5 and abs(digits.train_images.std() - 1) < 1e-5
    assert abs(digits.test_images.mean()) < 0.1 and abs(digits.test_images.std() - 1) < 0.1
    # Stratified: each class's test share is round(0.25 * its size).
    total = np.bincount(digits.train_labels, minlength=10) + np.bincount(digits.test_labels, minlength=10)
    np.testing.assert_array_equal(np.bincount(digits.test_labels, minlength=10), np.round(0.25 * total))
    # Few-shot probe: same classes, the train split as pool, the test split as test (the same arrays).
    assert digits.fewshot_train_images is digits.train_images and digits.fewshot_test_labels is digits.test_labels
    assert digits.fewshot_num_classes == 10


def test_digits_split_is_a_deterministic_partition_of_the_1797_images():
    from sklearn.datasets import load_digits

    original = load_digits()
    a = D.load("digits", image_size=8, seed=3)
    b = D.load("digits", image_size=8, seed=3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    # Every original image appears exactly once in train + test, with its label (8x8: no resizing).
    pixels = np.concatenate([raw(a.train_images, a), raw(a.test_images, a)]).reshape(-1, 64) * 16
    labels = np.concatenate([a.train_labels, a.test_labels])
    ours = np.concatenate([np.round(pixels), labels[:, None]], axis=1)
    theirs = np.concatenate([original.data, original.target[:, None]], axis=1)
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])
    other = D.load("digits", image_size=8, seed=4)
    assert not np.array_equal(other.test_images, a.test_images)


def test_digits_options_size_channels_fraction():
    d = D.load("digits", image_size=12, channels=3, test_fraction=0.5)
    assert d.train_images.shape[1:] == (12, 12, 3) and len(d.test_labels) in range(880, 920)
    np.testing.assert_array_equal(d.train_images[..., 0], d.train_images[..., 2])  # gray, repeated


def test_resize_weights():
    for n_in, n_out in ((8, 16), (8, 12), (32, 16), (32, 24), (5, 5)):
        weights = D.resize_matrix(n_in, n_out)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)  # a constant image stays constant
        assert (weights >= 0).all()
    # Halving averages 2x2 blocks; doubling with half-pixel centres puts 3/4 on the nearer pixel.
    image = np.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(D.resize_images(image, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(D.resize_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])


# ------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_for_a_seed():
    a = D.load("synthetic", **SMALL_SYNTHETIC, seed=5)
    b = D.load("synthetic", **SMALL_SYNTHETIC, seed=5)
    c = D.load("synthetic", **SMALL_SYNTHETIC, seed=6)
    for name in ("train_images", "train_labels", "test_images", "fewshot_train_images", "fewshot_test_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(a.train_images, c.train_images)


def test_synthetic_class_depends_only_on_seed_and_index():
    # Adding classes changes neither the images of the others nor (after undoing normalization) their values.
    a = D.load("synthetic", **SMALL_SYNTHETIC)
    b = D.load("synthetic", **{**SMALL_SYNTHETIC, "num_classes": 13, "heldout_classes": 5})
    np.testing.assert_allclose(raw(a.train_images, a), raw(b.train_images, b), atol=1e-5)
    assert a.class_names == b.class_names


def test_synthetic_heldout_classes_are_disjoint_from_pretraining():
    d = D.load("synthetic", **SMALL_SYNTHETIC)
    assert d.num_classes == 8 and d.fewshot_num_classes == 4
    assert set(d.class_names).isdisjoint(d.fewshot_class_names)
    assert len(set(d.class_names) | set(d.fewshot_class_names)) == 12
    assert d.train_images.shape == (8 * 15, 16, 16, 1) and d.test_images.shape == (8 * 5, 16, 16, 1)
    assert d.fewshot_train_images.shape == (4 * 15, 16, 16, 1) and d.fewshot_test_images.shape == (4 * 5, 16, 16, 1)
    np.testing.assert_array_equal(np.bincount(d.train_labels), [15] * 8)
    np.testing.assert_array_equal(np.bincount(d.fewshot_train_labels), [15] * 4)
    np.testing.assert_array_equal(np.bincount(d.fewshot_test_labels), [5] * 4)
    # The held-out images are not copies of pre-training images.
    pretrain = d.train_images.reshape(len(d.train_images), -1)
    heldout = d.fewshot_train_images.reshape(len(d.fewshot_train_images), -1)
    assert ((heldout[:, None] - pretrain[None]) ** 2).sum(-1).min() > 1.0
    # Normalization statistics come from the pre-training train split only.
    assert abs(d.train_images.mean()) < 1e-5 and abs(d.train_images.std() - 1) < 1e-4


def test_synthetic_is_learnable_but_not_trivial():
    d = D.load("synthetic")  # the defaults: 80 pre-training classes of 100 + 20 images, 20 held-out classes
    assert d.train_images.shape == (8000, 16, 16, 1) and d.test_images.shape == (1600, 16, 16, 1)
    assert d.fewshot_train_images.shape == (2000, 16, 16, 1) and d.fewshot_num_classes == 20
    accuracy = nearest_class_mean_accuracy(d.train_images, d.train_labels, d.test_images, d.test_labels, 80)
    assert 0.4 < accuracy < 0.95, accuracy  # chance is 1/80; about 0.68 measured
    heldout = nearest_class_mean_accuracy(
        d.fewshot_train_images, d.fewshot_train_labels, d.fewshot_test_images, d.fewshot_test_labels, 20
    )
    assert 0.4 < heldout < 0.98, heldout  # the held-out classes are of the same kind


def test_synthetic_options():
    d = D.load("synthetic", **SMALL_SYNTHETIC, image_size=8, channels=3, noise=0.0)
    assert d.train_images.shape[1:] == (8, 8, 3) and len(d.mean) == 3
    same = D.load("synthetic", **{**SMALL_SYNTHETIC, "heldout_classes": 0})
    assert same.num_classes == 12 and same.fewshot_train_images is same.train_images
    with pytest.raises(ValueError, match="at least 2 classes must remain"):
        D.load("synthetic", num_classes=10, heldout_classes=9)
    with pytest.raises(ValueError, match="heldout_classes"):
        D.load("synthetic", num_classes=10, heldout_classes=1)


# -------------------------------------------------------------------------------------------------- batches


PARTS_SMALL = dict(num_classes=24, heldout_classes=4, images_per_class=40, test_per_class=10, fewshot_pool_per_class=12,
                   image_size=16)  # fmt: skip


def test_parts_shapes_splits_and_determinism():
    a = D.load("parts", **PARTS_SMALL)
    # 20 pre-training classes x 40 train / x 10 test; 4 held-out classes x 12 pool / x 10 test, labels from 0
    assert a.train_images.shape == (800, 16, 16, 1) and a.test_images.shape == (200, 16, 16, 1)
    assert a.fewshot_train_images.shape == (48, 16, 16, 1) and a.fewshot_test_images.shape == (40, 16, 16, 1)
    assert np.bincount(a.train_labels).tolist() == [40] * 20 and np.bincount(a.fewshot_test_labels).tolist() == [10] * 4
    assert a.num_classes == 20 and a.fewshot_num_classes == 4 and a.fewshot_class_names[0] == "parts_020"
    # normalized with the train split's statistics
    assert abs(float(a.train_images.mean())) < 1e-4 and abs(float(a.train_images.std()) - 1) < 1e-3
    b = D.load("parts", **PARTS_SMALL)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.fewshot_test_images, b.fewshot_test_images)
    c = D.load("parts", **{**PARTS_SMALL, "seed": 1})
    assert not np.allclose(a.train_images, c.train_images)


def test_parts_class_depends_only_on_seed_and_index():
    # Class 3's raw images are the same whatever the other classes are: undo each dataset's normalization.
    small = D.load("parts", **PARTS_SMALL)
    more = D.load("parts", **{**PARTS_SMALL, "num_classes": 30, "heldout_classes": 5})
    raw = [d.train_images[d.train_labels == 3] * d.std[0] + d.mean[0] for d in (small, more)]
    np.testing.assert_allclose(raw[0], raw[1], atol=1e-5)


def test_parts_vocabulary_families():
    vocab = D.parts_vocabulary(8, 1, seed=0)
    assert vocab.shape == (D.PARTS_FAMILIES + 1, D.PARTS_VARIANTS, 8, 8, 1)
    np.testing.assert_allclose(np.sqrt(np.mean(vocab**2, axis=(2, 3, 4))), 1.0, rtol=1e-5)  # unit RMS per pixel
    flat = vocab.reshape(D.PARTS_FAMILIES + 1, D.PARTS_VARIANTS, -1)
    flat = flat / np.linalg.norm(flat, axis=-1, keepdims=True)
    within = np.mean([flat[f] @ flat[f].T for f in range(D.PARTS_FAMILIES + 1)], axis=0)[~np.eye(D.PARTS_VARIANTS,
                                                                                              dtype=bool)]  # fmt: skip
    across = np.abs(flat[0] @ flat[1].T)
    # variants of a family share its base pattern (cosine about 1 / (1 + 0.8^2) = 0.61); families are unrelated
    assert within.mean() > 0.4 and across.mean() < 0.3


def test_parts_families_variants_distractors():
    # Per image, the non-background cells are the class's present parts plus the distractors: with 8 families,
    # a drop probability of 0.2 and 4 distractors, 8 x 0.8 + 4 = 10.4 of 16 cells (35% background); the defaults
    # give the default task draw for draw. Count occupied cells on the raw images of a 16 x 16 task without noise.
    options = {**PARTS_SMALL, "noise": 0.0}
    default = D.load("parts", **options)
    np.testing.assert_array_equal(default.train_images, D.load("parts", **options, families=4, variants=16,
                                                               distractors=2).train_images)  # fmt: skip
    for families, distractors in ((4, 2), (8, 4)):
        d = D.load("parts", **options, families=families, variants=32, distractors=distractors)
        raw = d.train_images * d.std[0] + d.mean[0]
        # the one-pixel shift moves a cell's content by at most a pixel: look at the 2 x 2 centre of each cell
        centre = raw[:, :, :, 0].reshape(-1, 4, 4, 4, 4)[:, :, 1:3, :, 1:3]
        occupied = (np.abs(centre).max(axis=(2, 4)) > 1e-6).sum(axis=(1, 2))
        assert occupied.min() >= distractors and occupied.max() <= families + distractors
        assert abs(occupied.mean() - (0.8 * families + distractors)) < 0.25, occupied.mean()
    assert D.parts_vocabulary(4, 1, seed=0, families=8, variants=32).shape == (9, 32, 4, 4, 1)
    with pytest.raises(ValueError, match="families \\+ distractors must be at most"):
        D.load("parts", **options, families=14, distractors=3)
    with pytest.raises(ValueError, match="variants"):
        D.load("parts", **options, variants=0)


def test_parts_classes_are_not_in_pixel_positions():
    # The parts of a class land at random cells of each image: a nearest-class-mean classifier on pixels is near
    # chance (5% for 20 classes). A model has to recognize parts wherever they are.
    d = D.load("parts", **PARTS_SMALL)
    x = d.train_images.reshape(len(d.train_images), -1)
    means = np.stack([x[d.train_labels == c].mean(0) for c in range(d.num_classes)])
    test = d.test_images.reshape(len(d.test_images), -1)
    accuracy = np.mean(np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), 1) == d.test_labels)
    assert accuracy < 0.15


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_size": 18}, "multiple of 4"),
        ({"num_classes": 5, "heldout_classes": 4}, "at least 2 pre-training and 2 held-out"),
        ({"heldout_classes": 1}, "at least 2 pre-training and 2 held-out"),
        ({"fewshot_pool_per_class": 0}, "'fewshot_pool_per_class' must be >= 1"),
    ],
)
def test_parts_options(options, message):
    with pytest.raises(ValueError, match=message):
        D.load("parts", **{**PARTS_SMALL, **options})


def test_batches_are_deterministic_and_cover_each_example_at_most_once_per_epoch():
    n, size = 103, 10
    order = D.BatchOrder(n, size, seed=1)
    assert order.per_epoch == 10  # the remainder (3) is dropped
    epoch0 = [order.indices(step) for step in range(10)]
    seen = np.concatenate(epoch0)
    assert len(np.unique(seen)) == len(seen) == 100
    again = D.BatchOrder(n, size, seed=1)
    for step in range(10):
        np.testing.assert_array_equal(again.indices(step), epoch0[step])
    # The one order, written out: epoch e's permutation default_rng([seed, e]), batch i its slice [iB, (i+1)B).
    np.testing.assert_array_equal(epoch0[3], np.random.default_rng([1, 0]).permutation(n)[30:40])
    np.testing.assert_array_equal(order.indices(14), np.random.default_rng([1, 1]).permutation(n)[40:50])
    epoch1 = np.concatenate([order.indices(step) for step in range(10, 20)])
    other_seed = np.concatenate([D.BatchOrder(n, size, seed=2).indices(step) for step in range(10)])
    assert not np.array_equal(seen, epoch1) and not np.array_equal(seen, other_seed)


def test_resuming_sees_the_same_batches():
    n, size = 50, 8  # 6 batches per epoch
    stream = [D.BatchOrder(n, size, seed=7).indices(step) for step in range(18)]
    for step in (0, 5, 6, 13, 17):  # a fresh order (a restarted run) at any step sees what the stream saw
        np.testing.assert_array_equal(D.BatchOrder(n, size, seed=7).indices(step), stream[step])
    # ... and so does the loader over an in-memory source, batch for batch, from any start step
    images, labels = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.arange(n, dtype=np.int32)
    loader = D.TrainLoader(D.InMemorySource(images, labels), size, seed=7)
    for start in (0, 5, 13):
        for (x, y), expected in zip(loader.batches(start, 18), stream[start:], strict=True):
            np.testing.assert_array_equal(y, expected)
            np.testing.assert_array_equal(x[:, 0, 0, 0], expected)


def test_batches_bad_input():
    with pytest.raises(ValueError, match="batch_size 11 is larger than the 10"):
        D.BatchOrder(10, 11, seed=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        D.BatchOrder(10, 2, seed=-1)
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        D.BatchOrder(10, 2, seed=0).indices(-1)
    source = D.InMemorySource(np.zeros((10, 1, 1, 1), np.float32), np.zeros(10, np.int32))
    with pytest.raises(ValueError, match="start and end"):
        D.TrainLoader(source, 2, seed=0).batches(3, 2)
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        D.TrainLoader(source, 2, seed=0, workers=-1)
    with pytest.raises(ValueError, match="cannot be split evenly over 3 processes"):
        D.TrainLoader(source, 4, seed=0, process_count=3)


# -------------------------------------------------------------------------------------------------- cifar10

CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_pickle(path, obj):
    """A pickle written by this Python (protocol 2, bytes keys) with NumPy 1's module names, as old files have."""
    path.write_bytes(pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def python2_pickle(content: dict) -> bytes:
    """The opcodes Python 2 + NumPy 1 wrote the real CIFAR-10 files with: str keys and the array's raw bytes as
    (Python 2) str, which Python 3 reads as bytes; ``numpy.core.multiarray._reconstruct`` rebuilds the array."""

    def string(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(v):
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    def value(v):
        if isinstance(v, np.ndarray):  # ndarray.__reduce__ of NumPy 1: _reconstruct(ndarray, (0,), 'b'), state
            minus_one = b"J\xff\xff\xff\xff"
            dtype = b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R("  # dtype('u1', 0, 1)
            dtype += integer(3) + string(b"|") + b"NNN" + minus_one + minus_one + integer(0) + b"tb"  # its state
            return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85"
                    + string(b"b") + b"\x87R(" + integer(1) + integer(v.shape[0]) + integer(v.shape[1]) + b"\x86"
                    + dtype + b"\x89" + string(v.tobytes()) + b"tb")  # fmt: skip
        if isinstance(v, bytes):
            return string(v)
        if isinstance(v, int):
            return integer(v)
        return b"](" + b"".join(value(x) for x in v) + b"e"  # a list

    return b"\x80\x02}(" + b"".join(string(k) + value(v) for k, v in content.items()) + b"u."


def write_cifar(directory, per_batch=4, test=3, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        count = test if name == "test_batch" else per_batch
        content = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, count)],
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{k}.png".encode() for k in range(count)],
        }
        if i % 2:
            write_pickle(directory / name, content)
        else:
            (directory / name).write_bytes(python2_pickle(content))
        batches[name] = content
    (directory / "batches.meta").write_bytes(python2_pickle({b"label_names": CIFAR_NAMES}))
    return batches


def test_cifar10_reads_the_python_format(tmp_path):
    batches = write_cifar(tmp_path / "cifar")
    d = D.load("cifar10", path=tmp_path / "cifar")
    assert d.train_images.shape == (20, 32, 32, 3) and d.test_images.shape == (3, 32, 32, 3)
    assert d.class_names == tuple(n.decode() for n in CIFAR_NAMES) and d.num_classes == 10
    expected = np.concatenate([batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)])
    np.testing.assert_array_equal(d.train_labels, expected)
    np.testing.assert_array_equal(d.test_labels, batches["test_batch"][b"labels"])
    # Each row is the R, G, B planes of a 32x32 image, row-major.
    row = batches["data_batch_2"][b"data"][1]  # train image 5
    pixels = np.round(raw(d.train_images, d) * 255)
    for channel, r, c in ((0, 0, 0), (1, 3, 7), (2, 31, 30)):
        assert pixels[5, r, c, channel] == row[channel * 1024 + r * 32 + c]
    assert d.fewshot_train_images is d.train_images and d.fewshot_num_classes == 10


def test_cifar10_options_and_nested_directory(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    d = D.load("cifar10", path=str(tmp_path), image_size=16, channels=1)  # the archive's parent directory
    assert d.train_images.shape == (20, 16, 16, 1)


def test_cifar10_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load("cifar10", path=tmp_path / "nowhere")
    write_cifar(tmp_path / "c")
    os.remove(tmp_path / "c" / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        D.load("cifar10", path=tmp_path / "c")
    os.remove(tmp_path / "c" / "batches.meta")
    with pytest.raises(FileNotFoundError, match=r"batches\.meta"):
        D.load("cifar10", path=tmp_path / "c")
    with pytest.raises(ValueError, match="path"):
        D.load("cifar10")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x80\x02garbage that is not a pickle", "not a readable pickle"),
        ([1, 2, 3], "expected a pickled dict"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "missing key 'labels'"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "3072"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'labels' must be 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels must lie in \[0, 10\)"),
        ({b"data": os.getcwd, b"labels": []}, "refusing to load global"),  # a pickle that names a function
    ],
)
def test_cifar10_malformed_file_names_the_file(tmp_path, content, message):
    write_cifar(tmp_path / "c")
    target = tmp_path / "c" / "data_batch_4"
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        write_pickle(target, content)
    with pytest.raises(ValueError, match=message) as error:
        D.load("cifar10", path=tmp_path / "c")
    assert str(target) in str(error.value)


def test_cifar10_malformed_meta(tmp_path):
    write_cifar(tmp_path / "c")
    write_pickle(tmp_path / "c" / "batches.meta", {b"names": CIFAR_NAMES})
    with pytest.raises(ValueError, match=r"batches\.meta.*label_names"):
        D.load("cifar10", path=tmp_path / "c")


# ---------------------------------------------------------------------------------------------- imagefolder

COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def write_folder(root, per_class=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            shape = (10 + k, 14, 3)  # sizes vary; not square
            pixels = np.clip(np.array(color) * 0.8 + rng.integers(0, 40, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{k}.png")
    (root / "red" / "notes.txt").write_text("not an image: ignored")
    # Other formats: a JPEG and a palette PNG with transparency.
    Image.fromarray(np.full((9, 9, 3), (0, 0, 230), np.uint8)).save(root / "blue" / "extra.jpg")
    palette = Image.fromarray(np.full((8, 8, 3), (0, 220, 0), np.uint8)).convert("P")
    palette.info["transparency"] = 0
    palette.save(root / "green" / "palette.png", transparency=0)


def test_imagefolder_loads_classes_in_sorted_order(tmp_path):
    write_folder(tmp_path)
    d = D.load("imagefolder", path=tmp_path, image_size=8)
    assert d.class_names == ("blue", "green", "red") and d.num_classes == 3
    assert len(d.train_labels) + len(d.test_labels) == 17  # 15 + a JPEG + a palette PNG; notes.txt ignored
    assert d.train_images.shape[1:] == (8, 8, 3) and d.train_images.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(d.test_labels), [2, 2, 1])  # round(0.25 * [6, 6, 5])
    # Labels match the pixels: the dominant channel of every image is its class colour.
    images = np.concatenate([raw(d.train_images, d), raw(d.test_images, d)])
    labels = np.concatenate([d.train_labels, d.test_labels])
    dominant = images.mean(axis=(1, 2)).argmax(axis=1)  # R, G, B -> 0, 1, 2
    np.testing.assert_array_equal(dominant, np.array([2, 1, 0])[labels])
    again = D.load("imagefolder", path=tmp_path, image_size=8)
    np.testing.assert_array_equal(again.test_images, d.test_images)
    gray = D.load("imagefolder", path=str(tmp_path), image_size=6, channels=1, test_fraction=0.5, seed=1)
    assert gray.train_images.shape[1:] == (6, 6, 1) and len(gray.test_labels) == 8


def test_imagefolder_broken_image_is_named(tmp_path):
    write_folder(tmp_path)
    broken = tmp_path / "green" / "broken.png"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="cannot read image") as error:
        D.load("imagefolder", path=tmp_path)
    assert str(broken) in str(error.value)


def test_imagefolder_truncated_image_is_named(tmp_path):
    write_folder(tmp_path)
    target = tmp_path / "red" / "img2.png"
    target.write_bytes(target.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"img2\.png"):
        D.load("imagefolder", path=tmp_path)


def test_imagefolder_bad_directories(tmp_path):
    with pytest.raises(ValueError, match="nowhere does not exist"):
        D.load("imagefolder", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="found 0"):
        D.load("imagefolder", path=tmp_path)
    write_folder(tmp_path / "a")
    (tmp_path / "a" / "empty").mkdir()
    (tmp_path / "a" / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image files") as error:
        D.load("imagefolder", path=tmp_path / "a")
    assert str(tmp_path / "a" / "empty") in str(error.value)


# ----------------------------------------------------------------------------------------------- bad options


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*digits, synthetic, parts, cifar10, imagefolder"):
        D.load("mnist")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("digits", {"path": "/tmp"}, "unknown option.*'path'.*valid options: image_size"),
        ("synthetic", {"num_clases": 3}, "'num_clases'"),
        ("digits", {"image_size": "16"}, "'image_size' must be an integer"),
        ("digits", {"image_size": 0}, "'image_size' must be >= 1"),
        ("digits", {"channels": 2}, "'channels' must be 1 or 3"),
        ("digits", {"seed": True}, "'seed' must be an integer"),
        ("digits", {"test_fraction": 1.0}, "'test_fraction' must lie in"),
        ("synthetic", {"noise": -0.1}, "'noise' must lie in"),
        ("imagefolder", {}, "needs option 'path'"),
    ],
)
def test_bad_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        D.load(name, **options)


def test_dataset_checks_its_arrays():
    images, labels = np.zeros((4, 2, 2, 1), np.float32), np.zeros(4, np.int32)
    fields = dict(name="x", train_images=images, train_labels=labels, test_images=images, test_labels=labels,
                  num_classes=1, class_names=("a",), fewshot_train_images=images, fewshot_train_labels=labels,
                  fewshot_test_images=images, fewshot_test_labels=labels, fewshot_num_classes=1,
                  fewshot_class_names=("a",), mean=(0.0,), std=(1.0,))  # fmt: skip
    D.Dataset(**fields)
    with pytest.raises(ValueError, match="test_labels"):
        D.Dataset(**{**fields, "test_labels": labels.astype(np.int64)})
    with pytest.raises(ValueError, match="train_images"):
        D.Dataset(**{**fields, "train_images": images.astype(np.float64)})
    with pytest.raises(ValueError, match="values must lie in"):
        D.Dataset(**{**fields, "fewshot_test_labels": labels + 1})


def test_from_arrays_normalizes_a_copy_and_checks_its_input():
    train_images = np.arange(4 * 2 * 2, dtype=np.float64).reshape(4, 2, 2, 1)
    d = D.from_arrays(train_images, [0, 1, 2, 1], np.zeros((2, 2, 2, 1)), [0, 2], class_names=["x", "y", "z"])
    assert d.num_classes == 3 and d.class_names == ("x", "y", "z") and d.train_images.dtype == np.float32
    assert abs(float(d.train_images.mean())) < 1e-6 and train_images[0, 0, 0, 0] == 0  # the caller's array untouched
    assert d.fewshot_train_images is d.train_images  # the probe uses the same classes and splits
    bad = [
        (dict(train_images=np.zeros((4, 2, 2))), r"train_images: expected real \(B, H, W, ch\)"),
        (dict(train_labels=[0, 1, 2]), r"train_labels: expected integers of shape \(4,\)"),
        (dict(train_labels=[0.0, 1.0, 2.0, 1.0]), r"train_labels: expected integers"),
        (dict(test_images=np.full((2, 2, 2, 1), np.nan)), r"test_images: 8 values are NaN or infinite"),
        (dict(test_images=np.zeros((2, 3, 3, 1))), r"train_images are \(2, 2, 1\) but test_images \(3, 3, 1\)"),
        (dict(train_labels=[0, -1, 2, 1]), r"train_labels: values must lie in \[0, 3\)"),
        (dict(class_names=["x"]), r"1 class_names for labels up to 2"),
    ]
    base = dict(train_images=train_images, train_labels=[0, 1, 2, 1], test_images=np.zeros((2, 2, 2, 1)),
                test_labels=[0, 2])  # fmt: skip
    for change, message in bad:
        args = base | change
        names = args.pop("class_names", None)
        with pytest.raises(ValueError, match=message):
            D.from_arrays(**args, class_names=names)
