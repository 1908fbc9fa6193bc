"""Class-balanced (p × l) batches and class-disjoint (open-set) splits.

Metric-learning losses need several samples of each class in a batch. The papers
this library follows use p classes × l samples per batch: 24 × 6 (triplet),
72 × 2 (N-pair, angular), 36 × 4 (contrastive). `class_balanced_dataset` builds
such a `tf.data.Dataset`; it works as `model.fit` input under the TensorFlow and the
JAX backends (give `steps_per_epoch`, the stream is infinite). `split_by_class`
splits arrays into training classes and disjoint test classes.
"""

import itertools

import numpy as np

from keras_featreg._utils import check_int
from keras_featreg.ops.labels import check_labels

__all__ = ["class_balanced_dataset", "split_by_class"]


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _check_seed(seed):
    if seed is None:
        return None
    return check_int("seed", seed, minimum=0)


def _leaves(x):
    import tensorflow as tf

    return tf.nest.flatten(x)


def _check_arrays(x, y):
    """Converts x (array or nested structure of arrays) and y to NumPy; checks lengths."""
    import tensorflow as tf

    x = tf.nest.map_structure(np.asarray, x)
    y = np.asarray(check_labels(np.asarray(y), name="y"))
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

    p = check_int("classes_per_batch", classes_per_batch)
    l = check_int("samples_per_class", samples_per_class)
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
        dataset = dataset.prefetch(check_int("prefetch", prefetch, minimum=0))
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
