"""Class-balanced (p × l) batches and open-set dataset loaders.

Metric-learning losses need several samples of each class in a batch. The papers
this library follows use p classes × l samples per batch: 24 × 6 (triplet),
72 × 2 (N-pair, angular), 36 × 4 (contrastive). `class_balanced_dataset` builds
such a `tf.data.Dataset`; it works as `model.fit` input under the TensorFlow and the
JAX backends (give `steps_per_epoch`, the stream is infinite).

The loaders return NumPy arrays ``(x_train, y_train), (x_test, y_test)`` for the
open-set retrieval protocol: the test classes are disjoint from the training ones.
Labels keep their original class ids.
"""

import gzip
import itertools
import numbers
import os

import numpy as np

from keras_featreg._utils import class_id_vector

__all__ = [
    "class_balanced_dataset",
    "load_digits_split",
    "load_fashion_mnist_split",
    "load_tfds_split",
    "read_idx",
    "split_by_class",
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


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _check_seed(seed):
    if seed is None:
        return None
    return _check_int("seed", seed, minimum=0)


def _leaves(x):
    import tensorflow as tf

    return tf.nest.flatten(x)


def _check_arrays(x, y):
    """Converts x (array or nested structure of arrays) and y to NumPy; checks lengths."""
    import tensorflow as tf

    x = tf.nest.map_structure(np.asarray, x)
    y = class_id_vector(y, "y")
    for leaf in _leaves(x):
        if leaf.ndim == 0 or leaf.shape[0] != y.shape[0]:
            raise ValueError(
                "`x` and `y` must have the same number of samples. Received: "
                f"x.shape={leaf.shape}, y.shape={y.shape}"
            )
    return x, y


# --------------------------------------------------------------------------- #
# Class-balanced sampling
# --------------------------------------------------------------------------- #
class _BalancedSampler:
    """Index batches of p distinct classes × l samples, grouped by class.

    Classes are visited in reshuffled passes (every class once per pass), and the
    samples of each class in reshuffled passes too, so every sample is seen about
    equally often and the order changes from pass to pass.
    """

    def __init__(self, labels, classes_per_batch, samples_per_class, replace, rng):
        _, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse)
        self.members = np.split(order, np.cumsum(counts)[:-1])
        self.p, self.l = classes_per_batch, samples_per_class
        self.replace = replace
        self.rng = rng
        self._class_queue = np.empty(0, dtype=np.int64)
        self._sample_queues = [np.empty(0, dtype=np.int64) for _ in self.members]

    def _take(self, queue, k, population):
        """k distinct items from `queue`, refilled by a new permutation when short."""
        if queue.size >= k:
            return queue[:k], queue[k:]
        fresh = self.rng.permutation(population)
        fresh = fresh[~np.isin(fresh, queue)]
        need = k - queue.size
        taken = np.concatenate([queue, fresh[:need]])
        return taken, np.concatenate([fresh[need:], self.rng.permutation(queue)])

    def _samples(self, c):
        members = self.members[c]
        if members.size < self.l:  # only reachable with replace=True
            return self.rng.choice(members, size=self.l, replace=True)
        taken, self._sample_queues[c] = self._take(self._sample_queues[c], self.l, members)
        return taken

    def next_batch(self):
        classes, self._class_queue = self._take(
            self._class_queue, self.p, np.arange(len(self.members))
        )
        return np.concatenate([self._samples(c) for c in classes])


def _check_class_sizes(labels, classes_per_batch, samples_per_class, replace):
    classes, counts = np.unique(labels, return_counts=True)
    if classes_per_batch > classes.size:
        raise ValueError(
            f"`classes_per_batch` must be <= the number of classes ({classes.size}). "
            f"Received: classes_per_batch={classes_per_batch}"
        )
    small = np.flatnonzero(counts < samples_per_class)
    if small.size and not replace:
        listed = ", ".join(f"class {classes[i].item()!r} has {counts[i]}" for i in small[:10])
        more = f" (and {small.size - 10} more classes)" if small.size > 10 else ""
        raise ValueError(
            f"`samples_per_class`={samples_per_class} but {small.size} classes have "
            f"fewer samples: {listed}{more}. Pass `replace=True` to sample those "
            "classes with replacement, or drop them."
        )


def _tensor_spec(array, batch_size):
    import tensorflow as tf

    dtype = tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)
    return tf.TensorSpec(shape=(batch_size,) + array.shape[1:], dtype=dtype)


def _materialize(dataset):
    """Reads a finite tf.data.Dataset of (x, y) examples (or batches) into NumPy."""
    import tensorflow as tf

    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise ValueError(
            "A `x` tf.data.Dataset must yield (x, y) tuples, e.g. tfds.load(..., "
            "as_supervised=True) or dataset.map(lambda ex: (ex['image'], "
            f"ex['label'])). Received element_spec={spec}"
        )
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise ValueError("`x` is an infinite tf.data.Dataset; pass a finite one.")
    rank = spec[1].shape.rank
    if rank == 1:
        dataset = dataset.unbatch()
    elif rank != 0:
        raise ValueError(
            "The labels of the `x` dataset must be scalars (or vectors for batched "
            f"datasets). Received label spec {spec[1]}"
        )
    dataset = dataset.map(lambda *e: (e[0], e[1]))
    xs, ys = [], []
    try:
        for xb, yb in dataset.batch(1024).as_numpy_iterator():
            xs.append(xb)
            ys.append(yb)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(
            "Could not stack the elements of the `x` dataset: all inputs must have the "
            "same shape (resize images first, e.g. dataset.map(lambda x, y: "
            "(tf.image.resize(x, (224, 224)), y))), or pass encoded bytes/paths and "
            f"decode after batching. Original error: {err.message}"
        ) from None
    if not ys:
        raise ValueError("The `x` tf.data.Dataset is empty.")
    x = tf.nest.map_structure(lambda *parts: np.concatenate(parts), *xs)
    return x, np.concatenate(ys)


def class_balanced_dataset(
    x,
    y,
    classes_per_batch,
    samples_per_class,
    seed=None,
    replace=False,
    reshuffle_each_iteration=True,
    prefetch=2,
):
    """An infinite `tf.data.Dataset` of batches with p classes × l samples each.

    Every batch holds `classes_per_batch` (p) distinct classes and
    `samples_per_class` (l) samples of each, p·l in all, **grouped by class**: rows
    ``[i·l, (i+1)·l)`` share one label. With l = 2, rows 2i and 2i+1 form the
    anchor/positive pairs of N-pair and angular losses. Classes and samples are
    drawn in reshuffled passes (every class once per pass over the classes, every
    sample of a class once per pass over that class), so batches keep changing from
    epoch to epoch. The stream repeats forever: use ``model.fit(...,
    steps_per_epoch=...)``.

    Reproducibility: with an int `seed`, two datasets built the same way yield
    identical batch sequences. Iterating the *same* dataset object again (a new
    `iter()` or a new `model.fit`) gives a new, still deterministic, sequence when
    `reshuffle_each_iteration` is True (like `tf.data.Dataset.shuffle`), and the
    same sequence when it is False. A Keras `fit` keeps one iterator across epochs
    when `steps_per_epoch` is given.

    Input from a `tf.data.Dataset`: the dataset (of ``(x, y)`` examples, or of
    batches, which are unbatched) is read **once into memory** as NumPy arrays, then
    indexed by label. Memory is the size of the whole dataset: for large image sets
    store uint8 pixels at the training resolution, or yield encoded JPEG bytes
    (``tfds.decode.SkipDecoding()``) / file paths and decode after batching with
    ``.map``.

    Args:
        x: inputs: a NumPy array (or a list/tuple/dict of arrays with the same first
            dimension), or a finite `tf.data.Dataset` of ``(x, y)`` (then `y` must
            be None).
        y: class ids, shape (n,) (or (n, 1)); None when `x` is a dataset.
        classes_per_batch: p, number of distinct classes per batch (1 <= p <=
            number of classes).
        samples_per_class: l, samples of each class per batch (>= 1).
        seed: None (fresh randomness) or an int >= 0.
        replace: if False (default), a class with fewer than l samples raises a
            ValueError naming it; if True, such classes are sampled with replacement
            (their l rows may repeat samples). Classes with >= l samples are always
            drawn without replacement within a batch.
        reshuffle_each_iteration: see "Reproducibility" above.
        prefetch: number of batches to prefetch (0 disables).

    Returns:
        A `tf.data.Dataset` of ``(x_batch, y_batch)`` with static batch size p·l,
        where `y_batch` has the dtype of `y`.

    Raises:
        ValueError: bad sizes, too few classes, or a class with fewer than l samples
            when ``replace=False``.

    Example:
    >>> x = np.arange(40, dtype="float32").reshape(20, 2)
    >>> y = np.repeat(np.arange(5), 4)
    >>> ds = class_balanced_dataset(x, y, classes_per_batch=3, samples_per_class=2, seed=0)
    >>> xb, yb = next(iter(ds))
    >>> tuple(xb.shape), len(set(yb.numpy().tolist()))
    ((6, 2), 3)
    """
    import tensorflow as tf

    p = _check_int("classes_per_batch", classes_per_batch)
    l = _check_int("samples_per_class", samples_per_class)
    seed = _check_seed(seed)
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(
                "When `x` is a tf.data.Dataset of (x, y), `y` must be None. Received "
                f"y of type {type(y).__name__}."
            )
        x, y = _materialize(x)
    elif y is None:
        raise ValueError("`y` is required when `x` is an array.")
    x, y = _check_arrays(x, y)
    _check_class_sizes(y, p, l, replace)

    batch = p * l
    signature = (
        tf.nest.map_structure(lambda a: _tensor_spec(a, batch), x),
        _tensor_spec(y, batch),
    )
    iterations = itertools.count()

    def generate():
        iteration = next(iterations) if reshuffle_each_iteration else 0
        rng = np.random.default_rng(None if seed is None else [seed, iteration])
        sampler = _BalancedSampler(y, p, l, replace, rng)
        while True:
            idx = sampler.next_batch()
            yield tf.nest.map_structure(lambda a: a[idx], x), y[idx]

    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    if prefetch:
        dataset = dataset.prefetch(_check_int("prefetch", prefetch, minimum=0))
    return dataset


# --------------------------------------------------------------------------- #
# Open-set splits
# --------------------------------------------------------------------------- #
def split_by_class(x, y, train_classes):
    """Splits (x, y) into training classes and all the other (test) classes.

    Args:
        x: array (n, ...).
        y: array (n,) of class ids.
        train_classes: iterable of the class ids used for training; every other class
            goes to the test set.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``.

    Example:
    >>> (xa, ya), (xb, yb) = split_by_class(np.arange(6), np.array([0, 1, 2, 0, 1, 2]), [0])
    >>> ya.tolist(), yb.tolist()
    ([0, 0], [1, 2, 1, 2])
    """
    y = np.asarray(y)
    train_classes = np.unique(np.asarray(list(train_classes)))
    present = np.unique(y)
    unknown = np.setdiff1d(train_classes, present)
    if train_classes.size == 0 or unknown.size:
        raise ValueError(
            "`train_classes` must be a non-empty subset of the classes "
            f"{present.tolist()}. Received: train_classes={train_classes.tolist()}"
        )
    if np.setdiff1d(present, train_classes).size == 0:
        raise ValueError(
            "`train_classes` must leave at least one class for the test set. "
            f"Received: train_classes={train_classes.tolist()}"
        )
    mask = np.isin(y, train_classes)
    return (x[mask], y[mask]), (x[~mask], y[~mask])


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
    from keras_featreg._utils import check_choice

    check_choice("name", name, tuple(_TFDS_DATASETS))
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
               for s in image_size)
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
