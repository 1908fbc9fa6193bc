"""Tests for keras_featreg.data: p×l class-balanced batches and open-set loaders."""

import os
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from _helpers import write_idx

from keras_featreg.data import (
    FASHION_MNIST_DIRS,
    class_balanced_dataset,
    load_digits_split,
    load_fashion_mnist_split,
    load_tfds_split,
    read_idx,
    split_by_class,
)


def _toy(num_classes=100, per_class=8, dim=3):
    """x[i] holds i in its first column so batches can be traced back to samples."""
    y = np.repeat(np.arange(num_classes), per_class)
    x = np.zeros((y.size, dim), np.float32)
    x[:, 0] = np.arange(y.size)
    return x, y


def _batches(ds, count):
    return [(xb.numpy(), yb.numpy()) for xb, yb in ds.take(count)]


# --------------------------------------------------------------------------- #
# Class-balanced batches
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("p,l", [(24, 6), (72, 2), (36, 4), (1, 1), (5, 8)])
def test_batches_have_p_classes_times_l_grouped(p, l):
    x, y = _toy()
    for xb, yb in _batches(class_balanced_dataset(x, y, p, l, seed=0), 12):
        assert xb.shape == (p * l, 3) and yb.shape == (p * l,)
        groups = yb.reshape(p, l)
        assert np.all(groups == groups[:, :1]), "l consecutive rows must share a label"
        assert len(set(groups[:, 0].tolist())) == p, "p distinct classes"
        idx = xb[:, 0].astype(int)
        assert len(set(idx.tolist())) == p * l, "no sample repeated within a batch"
        np.testing.assert_array_equal(y[idx], yb)  # x and y stay aligned


def test_npair_layout_pairs_rows_2i_and_2i_plus_1():
    x, y = _toy(num_classes=80, per_class=4)
    _, yb = _batches(class_balanced_dataset(x, y, 72, 2, seed=3), 1)[0]
    np.testing.assert_array_equal(yb[0::2], yb[1::2])
    assert len(set(yb[0::2].tolist())) == 72


def test_static_batch_shape_and_dtypes():
    x, y = _toy()
    ds = class_balanced_dataset(x, y.astype(np.int32), 4, 3, seed=0)
    xs, ys = ds.element_spec
    assert tuple(xs.shape) == (12, 3) and xs.dtype == tf.float32
    assert tuple(ys.shape) == (12,) and ys.dtype == tf.int32


def test_same_seed_same_sequence_other_seed_differs():
    x, y = _toy()
    a = _batches(class_balanced_dataset(x, y, 8, 4, seed=7), 10)
    b = _batches(class_balanced_dataset(x, y, 8, 4, seed=7), 10)
    c = _batches(class_balanced_dataset(x, y, 8, 4, seed=8), 10)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_reshuffles_across_epochs_and_covers_classes():
    x, y = _toy(num_classes=20, per_class=6)
    batches = _batches(class_balanced_dataset(x, y, 5, 3, seed=0), 16)
    # One pass over the 20 classes takes 4 batches; passes come in a new order.
    epochs = [np.concatenate([yb for _, yb in batches[i:i + 4]]) for i in (0, 4, 8, 12)]
    for labels in epochs:
        assert set(labels.tolist()) == set(range(20))
    assert len({tuple(e.tolist()) for e in epochs}) == 4
    # Every sample of a class is used before one repeats (6 samples, 3 per visit).
    seen = np.concatenate([xb[:, 0] for xb, _ in batches[:8]]).astype(int)
    assert len(set(seen.tolist())) == seen.size == 120


def test_reiteration_reshuffles_unless_disabled():
    x, y = _toy()
    ds = class_balanced_dataset(x, y, 8, 2, seed=1)
    first, second = _batches(ds, 3), _batches(ds, 3)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(first, second))
    fixed = class_balanced_dataset(x, y, 8, 2, seed=1, reshuffle_each_iteration=False)
    for a, b in zip(_batches(fixed, 3), _batches(fixed, 3)):
        np.testing.assert_array_equal(a[0], b[0])


def test_too_few_samples_raises_naming_class_and_count():
    x, y = _toy(num_classes=6, per_class=5)
    y[y == 4] = 3  # class 4 disappears
    y[0] = 9  # class 9 has 1 sample, class 0 has 4
    with pytest.raises(ValueError, match=r"class 9 has 1.*|class 0 has 4"):
        class_balanced_dataset(x, y, 2, 5)
    with pytest.raises(ValueError, match="class 9 has 1"):
        class_balanced_dataset(x, y, 2, 5)


def test_replace_true_samples_small_classes_with_replacement():
    x, y = _toy(num_classes=4, per_class=5)
    y[0] = 9  # single sample
    ds = class_balanced_dataset(x, y, 5, 3, seed=0, replace=True)
    for xb, yb in _batches(ds, 6):
        groups = yb.reshape(5, 3)
        assert np.all(groups == groups[:, :1])
        rows = xb[yb == 9, 0]
        np.testing.assert_array_equal(rows, [0.0, 0.0, 0.0])
        others = xb[yb != 9, 0]
        assert len(set(others.tolist())) == others.size  # big classes: no repeats


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(classes_per_batch=11, samples_per_class=2), "classes_per_batch.*10"),
        (dict(classes_per_batch=0, samples_per_class=2), "classes_per_batch"),
        (dict(classes_per_batch=2, samples_per_class=0), "samples_per_class"),
        (dict(classes_per_batch=2.5, samples_per_class=2), "classes_per_batch"),
        (dict(classes_per_batch=2, samples_per_class=2, seed=-1), "seed"),
    ],
)
def test_argument_errors(kwargs, match):
    x, y = _toy(num_classes=10)
    with pytest.raises(ValueError, match=match):
        class_balanced_dataset(x, y, **kwargs)


def test_length_and_label_shape_errors():
    x, y = _toy(num_classes=10)
    with pytest.raises(ValueError, match="same number of samples"):
        class_balanced_dataset(x[:-1], y, 2, 2)
    with pytest.raises(ValueError, match="y.shape"):
        class_balanced_dataset(x, np.ones((y.size, 3)), 2, 2)
    with pytest.raises(ValueError, match="`y` is required"):
        class_balanced_dataset(x, None, 2, 2)


def test_nested_inputs_and_column_labels():
    x, y = _toy(num_classes=10)
    ds = class_balanced_dataset({"a": x, "b": x[:, :1] * 2}, y[:, None], 3, 2, seed=0)
    xb, yb = next(iter(ds))
    assert set(xb) == {"a", "b"} and tuple(yb.shape) == (6,)
    np.testing.assert_array_equal(xb["b"].numpy()[:, 0], 2 * xb["a"].numpy()[:, 0])


def test_tf_data_input_unbatched_and_batched():
    x, y = _toy(num_classes=10, per_class=6)
    for source in (
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(7),
    ):
        ds = class_balanced_dataset(source, None, 4, 3, seed=5)
        for xb, yb in _batches(ds, 4):
            groups = yb.reshape(4, 3)
            assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 4
            np.testing.assert_array_equal(y[xb[:, 0].astype(int)], yb)
    # Same seed, array input and dataset input: same stream.
    a = _batches(class_balanced_dataset(x, y, 4, 3, seed=5), 3)
    b = _batches(class_balanced_dataset(tf.data.Dataset.from_tensor_slices((x, y)),
                                        None, 4, 3, seed=5), 3)
    for (xa, _), (xb, _) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)


def test_tf_data_input_errors():
    x, y = _toy(num_classes=10)
    features = tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
    with pytest.raises(ValueError, match="as_supervised"):
        class_balanced_dataset(features, None, 2, 2)
    with pytest.raises(ValueError, match="`y` must be None"):
        class_balanced_dataset(tf.data.Dataset.from_tensor_slices((x, y)), y, 2, 2)
    with pytest.raises(ValueError, match="infinite"):
        class_balanced_dataset(tf.data.Dataset.from_tensor_slices((x, y)).repeat(),
                               None, 2, 2)
    ragged = tf.data.Dataset.from_generator(
        lambda: ((np.zeros(i + 1, np.float32), i) for i in range(4)),
        output_signature=(tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int64)),
    )
    with pytest.raises(ValueError, match="same shape"):
        class_balanced_dataset(ragged, None, 2, 1)


def test_model_fit_consumes_balanced_batches():
    x, y = _toy(num_classes=10, per_class=6, dim=4)
    x = x / x.max()
    ds = class_balanced_dataset(x, y, 4, 2, seed=0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(ds, steps_per_epoch=2, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))


# --------------------------------------------------------------------------- #
# Loaders
# --------------------------------------------------------------------------- #
def test_split_by_class_and_errors():
    x, y = np.arange(12), np.tile([0, 1, 2], 4)
    (xa, ya), (xb, yb) = split_by_class(x, y, [0, 2])
    assert set(ya) == {0, 2} and set(yb) == {1}
    np.testing.assert_array_equal(xa % 3 != 1, True)
    with pytest.raises(ValueError, match="train_classes"):
        split_by_class(x, y, [5])
    with pytest.raises(ValueError, match="at least one class"):
        split_by_class(x, y, [0, 1, 2])
    with pytest.raises(ValueError, match="train_classes"):
        split_by_class(x, y, [])


def test_load_digits_split():
    (x_tr, y_tr), (x_te, y_te) = load_digits_split()
    assert x_tr.shape[1:] == (8, 8, 1) and x_tr.dtype == np.float32
    assert len(x_tr) + len(x_te) == 1797
    assert set(y_tr.tolist()) == set(range(5)) and set(y_te.tolist()) == set(range(5, 10))
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    (x_tr, _), (x_te, y_te) = load_digits_split(train_classes=[1, 3], flatten=True)
    assert x_tr.shape[1] == 64 and set(y_te.tolist()) == {0, 2, 4, 5, 6, 7, 8, 9}


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([1, -2, 70000], np.int32)
    write_idx(tmp_path / "a", images, compress)
    write_idx(tmp_path / "b", ints, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8), False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_synthetic_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 30), ("t10k", 20)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), True)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte",
                  (np.arange(n) % 10).astype(np.uint8), False)
    (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist_split(path=str(tmp_path))
    assert len(x_tr) + len(x_te) == 50 and x_tr.shape[1:] == (28, 28, 1)
    (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist_split(path=str(tmp_path), pool=False)
    assert len(x_tr) == 15 and len(x_te) == 10
    assert set(y_tr.tolist()).isdisjoint(y_te.tolist())


def test_fashion_mnist_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_split(path=str(tmp_path), allow_download=False)


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIRS[0], "train-labels-idx1-ubyte.gz")),
    reason="needs the real Fashion-MNIST in /usr/share/datasets/fashion-mnist: install Debian's "
    "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) to run it",
)
def test_fashion_mnist_from_debian_package():
    (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist_split(allow_download=False)
    assert x_tr.shape == (35000, 28, 28, 1) and x_te.shape == (35000, 28, 28, 1)
    assert set(y_tr.tolist()) == set(range(5)) and set(y_te.tolist()) == set(range(5, 10))
    assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() == 1.0
    assert np.all(np.bincount(y_te)[5:] == 7000)


@pytest.mark.parametrize("name", ["cars196", "caltech_birds2011", "stanford_online_products"])
def test_load_tfds_split_with_mock_data(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=16):
        (x_tr, y_tr), (x_te, y_te) = load_tfds_split(name, image_size=(12, 10))
        train_ds, _ = load_tfds_split(name, image_size=(12, 10), as_dataset=True)
        x0, _ = next(iter(train_ds))
    assert x_tr.shape[1:] == (12, 10, 3) and x_tr.dtype == np.uint8
    assert x_te.shape[1:] == (12, 10, 3) and len(x_tr) == len(y_tr) > 0
    assert tuple(x0.shape) == (12, 10, 3)
    if name != "stanford_online_products":  # mock SOP reuses one generator per split
        half = {"cars196": 98, "caltech_birds2011": 100}[name]
        assert y_tr.max() < half <= y_te.min()


def test_load_tfds_split_without_tensorflow_datasets(monkeypatch):
    """tensorflow-datasets is an extra: the error names it (`import` of a None entry in
    sys.modules raises ImportError, as if the package were not installed)."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=re.escape('pip install "keras-featreg[tfds]"')):
        load_tfds_split("cars196", image_size=(12, 10))


def test_load_tfds_split_argument_errors():
    with pytest.raises(ValueError, match="name"):
        load_tfds_split("mnist")
    with pytest.raises(ValueError, match="image_size"):
        load_tfds_split("cars196", image_size=224)
