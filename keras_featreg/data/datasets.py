"""Open-set dataset loaders: scikit-learn digits, Fashion-MNIST (IDX files), tfds.

The loaders return NumPy arrays ``(x_train, y_train), (x_test, y_test)`` for the
open-set retrieval protocol: the test classes are disjoint from the training ones.
Labels keep their original class ids.
"""

import gzip
import os

import numpy as np

from keras_featreg.data.samplers import split_by_class

__all__ = [
    "load_digits_split",
    "load_fashion_mnist_split",
    "load_tfds_split",
    "read_idx",
]

FASHION_MNIST_DIRS = (
    "/usr/share/datasets/fashion-mnist",  # Debian/Ubuntu package dataset-fashion-mnist
    os.path.join(os.path.expanduser("~"), ".keras", "datasets", "fashion-mnist"),
)
_FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# tfds name -> (label feature, how to split into train/test classes)
_TFDS_DATASETS = {
    "cars196": ("label", "halves"),  # 196 classes: first 98 train, last 98 test
    "caltech_birds2011": ("label", "halves"),  # CUB-200-2011: 100 / 100
    "stanford_online_products": ("class_id", "splits"),  # own class-disjoint splits
}


def _image_output(images, flatten):
    """uint8/float images (n, h, w) -> float32 in [0, 1], (n, h, w, 1) or (n, h·w)."""
    images = images.astype(np.float32)
    if flatten:
        return images.reshape(len(images), -1)
    return images[..., None]


def load_digits_split(train_classes=range(5), flatten=False):
    """scikit-learn's bundled 8×8 digits, split into disjoint train/test classes.

    1 797 images, 10 classes, no download. Pixel values are scaled to [0, 1].

    Args:
        train_classes: digit classes used for training (default 0–4); the others
            (default 5–9) form the test set.
        flatten: return (n, 64) vectors instead of (n, 8, 8, 1) images.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 images, int64 labels.

    Example:
    >>> (x_tr, y_tr), (x_te, y_te) = load_digits_split()
    >>> x_tr.shape[1:], sorted(set(y_te.tolist()))
    ((8, 8, 1), [5, 6, 7, 8, 9])
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = _image_output(digits.images / 16.0, flatten)
    return split_by_class(x, digits.target.astype(np.int64), train_classes)


_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Reads an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Args:
        path: file path; gzip compression is detected from the content.

    Returns:
        A NumPy array with the file's shape and (native-endian) dtype.

    Example:
    >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
    >>> labels.shape  # doctest: +SKIP
    (10000,)
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number {data[:4]!r}).")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path!r} is truncated or corrupt: header says shape {dims} "
            f"({expected} bytes of data), file has {len(data) - offset}."
        )
    array = np.frombuffer(data, dtype, offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find_idx(directory, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _read_fashion_dir(directory):
    paths = {key: _find_idx(directory, stem) for key, stem in _FASHION_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    arrays = {key: read_idx(p) for key, p in paths.items()}
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _load_fashion_mnist_raw(path, allow_download):
    directories = [path] if path is not None else list(FASHION_MNIST_DIRS)
    for directory in directories:
        found = _read_fashion_dir(directory)
        if found is not None:
            return found
    tried = ", ".join(directories)
    if path is None and allow_download:
        import keras

        try:
            return keras.datasets.fashion_mnist.load_data()
        except Exception as err:  # no network, proxy, etc.
            reason = f"keras.datasets.fashion_mnist.load_data() failed: {err}"
    else:
        reason = "download not attempted"
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found (looked in: {tried}; {reason}). Install "
        "them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files in "
        "/usr/share/datasets/fashion-mnist), or download train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/"
        "fashion-mnist and pass `path=` to their folder."
    )


def load_fashion_mnist_split(train_classes=range(5), path=None, pool=True, flatten=False,
                             allow_download=True):
    """Fashion-MNIST (28×28, 10 classes) split into disjoint train/test classes.

    Reads the IDX files (gzipped or not) from `path`, else from Debian's package
    (``/usr/share/datasets/fashion-mnist``, `apt-get install dataset-fashion-mnist`)
    or the Keras cache (``~/.keras/datasets/fashion-mnist``); then, if allowed,
    falls back to `keras.datasets.fashion_mnist.load_data()` (needs network).

    Args:
        train_classes: classes used for training (default 0–4: T-shirt, trouser,
            pullover, dress, coat); the other classes form the test set.
        path: folder holding the four IDX files.
        pool: if True (default), pool the official 60 000 training and 10 000 test
            images before splitting by class (7 000 images per class); if False, the
            training classes come from the official training images and the test
            classes from the official test images.
        flatten: return (n, 784) vectors instead of (n, 28, 28, 1) images.
        allow_download: allow the Keras download fallback.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 images in [0, 1], int64
        labels.

    Raises:
        FileNotFoundError: the files cannot be found or downloaded (the message says
            how to get them).

    Example:
    >>> (x_tr, y_tr), (x_te, y_te) = load_fashion_mnist_split()  # doctest: +SKIP
    >>> x_tr.shape, x_te.shape  # doctest: +SKIP
    ((35000, 28, 28, 1), (35000, 28, 28, 1))
    """
    (x_train, y_train), (x_test, y_test) = _load_fashion_mnist_raw(path, allow_download)
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    if pool:
        x = _image_output(np.concatenate([x_train, x_test]) / np.float32(255), flatten)
        return split_by_class(x, np.concatenate([y_train, y_test]), train_classes)
    x_train = _image_output(x_train / np.float32(255), flatten)
    x_test = _image_output(x_test / np.float32(255), flatten)
    train, _ = split_by_class(x_train, y_train, train_classes)
    _, test = split_by_class(x_test, y_test, train_classes)
    return train, test


def _resize_uint8(image, image_size):
    import tensorflow as tf

    resized = tf.image.resize(image, image_size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _dataset_to_numpy(dataset, image_size):
    xs, ys = [], []
    for xb, yb in dataset.batch(256).as_numpy_iterator():
        xs.append(xb)
        ys.append(yb)
    if not xs:
        return np.zeros((0,) + tuple(image_size) + (3,), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def load_tfds_split(name, image_size=(224, 224), data_dir=None, download=True,
                    as_dataset=False):
    """CUB-200-2011, CARS196 or Stanford Online Products with the open-set split.

    Uses tensorflow-datasets (the ``tfds`` extra: ``pip install "keras-featreg[tfds]"``).
    Splits as in the metric-learning literature:
    ``caltech_birds2011`` (CUB): classes 0–99 train, 100–199 test (tfds train and
    test splits pooled); ``cars196``: classes 0–97 train, 98–195 test (pooled);
    ``stanford_online_products``: the dataset's own train/test splits, which have
    disjoint classes (labels are the `class_id` feature). Images are resized to
    `image_size` (bilinear with antialiasing, aspect ratio not kept) and stored as
    uint8 in [0, 255]; apply your model's preprocessing afterwards.

    Memory: NumPy output holds every image, n·h·w·3 bytes (CUB at 224²: ~1.8 GB,
    SOP: ~18 GB); use ``as_dataset=True`` to stream instead.

    Args:
        name: "caltech_birds2011", "cars196" or "stanford_online_products".
        image_size: (height, width) of the output images.
        data_dir: tfds data folder (default: tfds's, ~/tensorflow_datasets).
        download: let tfds download and prepare the data if missing (needs network).
        as_dataset: return unbatched `tf.data.Dataset`s of (image, label) instead of
            NumPy arrays.

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` NumPy arrays (uint8 images (n, h, w,
        3), int64 labels), or ``(train_dataset, test_dataset)``.

    Example:
    >>> (x_tr, y_tr), (x_te, y_te) = load_tfds_split("cars196", (128, 128))  # doctest: +SKIP
    """
    from keras_featreg._utils import check_choice, check_int  # noqa: F401

    check_choice("name", name, tuple(_TFDS_DATASETS))
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(_is_positive_int(s) for s in image_size)
    ):
        raise ValueError(
            "`image_size` must be a (height, width) pair of positive integers. "
            f"Received: image_size={image_size!r}"
        )
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "load_tfds_split needs tensorflow-datasets, which is not installed: "
            'pip install "keras-featreg[tfds]" (or pip install tensorflow-datasets)'
        ) from err

    image_size = tuple(int(s) for s in image_size)
    label_key, protocol = _TFDS_DATASETS[name]

    def load(split):
        ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
        return ds.map(
            lambda ex: (_resize_uint8(ex["image"], image_size), ex[label_key]),
            num_parallel_calls=4,
        )

    if protocol == "splits":
        train, test = load("train"), load("test")
    else:
        builder = tfds.builder(name, data_dir=data_dir)
        half = builder.info.features[label_key].num_classes // 2
        pooled = load("train+test")
        train = pooled.filter(lambda x, y: y < half)
        test = pooled.filter(lambda x, y: y >= half)
    if as_dataset:
        return train, test
    return _dataset_to_numpy(train, image_size), _dataset_to_numpy(test, image_size)


def _is_positive_int(value):
    from keras_featreg._utils import check_int

    try:
        check_int("image_size", value)
    except ValueError:
        return False
    return True
