"""Embedding extraction: run a model over arrays, datasets or batch iterables."""

import math

import keras
import numpy as np

from keras_featreg._utils import check_int


# --------------------------------------------------------------------------- #
# Embedding extraction
# --------------------------------------------------------------------------- #
def is_tf_dataset(data):
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - tensorflow is a hard dependency
        return False
    return isinstance(data, tf.data.Dataset)


def _split_batch(batch):
    """(x, y) from a batch that is x, (x,), (x, y) or (x, y, sample_weight)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) in (2, 3):
            return batch[0], batch[1]
        raise ValueError(
            "Each batch must be x, (x,), (x, y) or (x, y, sample_weight). Received a "
            f"tuple of length {len(batch)}."
        )
    return batch, None


def _array_batches(x, y, batch_size):
    n = len(keras.tree.flatten(x)[0])
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        xb = keras.tree.map_structure(lambda a: a[sl], x)
        yield (xb, None if y is None else y[sl])


def _batches(data, batch_size):
    """(iterator over (x, y) batches, number of batches or None)."""
    if is_tf_dataset(data):
        import tensorflow as tf

        cardinality = int(data.cardinality())
        if cardinality == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "`data` is an infinite tf.data.Dataset (e.g. a class-balanced training "
                "stream); pass a finite one, e.g. `data.take(num_batches)`."
            )
        total = cardinality if cardinality >= 0 else None
        return (_split_batch(b) for b in data.as_numpy_iterator()), total
    if isinstance(data, (tuple, list)) and len(data) == 2 and not np.isscalar(data[0]):
        x, y = data
        n = len(keras.tree.flatten(x)[0])
        return _array_batches(x, np.asarray(y), batch_size), math.ceil(n / batch_size)
    if isinstance(data, (np.ndarray, dict)) or hasattr(data, "shape"):
        n = len(keras.tree.flatten(data)[0])
        return _array_batches(data, None, batch_size), math.ceil(n / batch_size)
    if hasattr(data, "__iter__"):
        total = len(data) if hasattr(data, "__len__") else None
        return (_split_batch(b) for b in data), total
    raise ValueError(
        "`data` must be a NumPy array or tensor, an (x, y) tuple of arrays, a batched "
        f"tf.data.Dataset or an iterable of batches. Received: {type(data).__name__}"
    )


def _predictor(model):
    if isinstance(model, keras.Model):
        return model.predict_on_batch
    if callable(model):
        return lambda xb: model(xb)
    raise ValueError(f"`model` must be a keras.Model or a callable. Received: {model!r}")


def embed(model, data, batch_size=256, verbose=1):
    """Runs `model` over `data` and returns all embeddings (and labels) as NumPy.

    Args:
        model: a `keras.Model` (run with `predict_on_batch`, i.e. inference mode) or
            any callable mapping a batch to a (batch, dim) output.
        data: a NumPy array / tensor of inputs; an ``(x, y)`` tuple of arrays; a
            *batched* `tf.data.Dataset` (like `model.predict`, one element = one
            batch) of ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``; or
            any finite iterable of such batches.
        batch_size: batch size for array inputs (ignored for datasets/iterables).
        verbose: 1 shows a `keras.utils.Progbar`, 0 is silent.

    Returns:
        ``embeddings`` (n, dim) when `data` has no labels, else
        ``(embeddings, labels)``.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> emb, lab = embed(model, (np.zeros((10, 4)), np.arange(10)), verbose=0)
    >>> emb.shape, lab.shape
    ((10, 2), (10,))
    """
    batch_size = check_int("batch_size", batch_size)
    predict = _predictor(model)
    batches, total = _batches(data, batch_size)
    progbar = keras.utils.Progbar(total, verbose=1 if verbose else 0, unit_name="batch")
    outputs, labels = [], []
    for step, (xb, yb) in enumerate(batches, start=1):
        out = keras.ops.convert_to_numpy(predict(xb))
        outputs.append(np.asarray(out))
        if yb is not None:
            labels.append(np.asarray(keras.ops.convert_to_numpy(yb)))
        progbar.update(step)
    if not outputs:
        raise ValueError("`data` yielded no batches.")
    embeddings = np.concatenate(outputs, axis=0)
    if not labels:
        return embeddings
    if len(labels) != len(outputs):
        raise ValueError("Some batches of `data` have labels and some do not.")
    return embeddings, np.concatenate(labels, axis=0)
