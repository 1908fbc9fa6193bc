"""Class labels: the one input check, and the pair masks every loss and miner builds on.

The input contract of every loss, miner and metric that takes labels
(:func:`check_labels`):

* labels are integer-valued, one per sample, shape ``(b,)`` or ``(b, 1)``: an integer
  dtype, or a float dtype holding whole numbers (``[0., 1., 1.]``);
* a float label that is not a whole number, a string or an object raises ``ValueError``
  naming the argument (``y_true``) -- eagerly, when the values can be read; inside a
  compiled function (``tf.function``, ``jax.jit``) a non-integer float label makes the
  result NaN instead, never a finite number;
* the number of labels must equal the number of embeddings: a ``ValueError`` when both
  are known while tracing, NaN when they differ only at run time;
* an empty batch (0 samples, known while tracing) raises ``ValueError``.

Pair masks: a *positive pair* ``(i, j)`` has ``label_i == label_j`` and ``i != j``; a
*negative pair* has ``label_i != label_j``.
"""

import keras
import numpy as np
from keras import ops

from keras_featreg import backend as _backend

_LABEL_KINDS = ("int", "uint", "float", "bool")


def _dtype_name(x):
    dtype = getattr(x, "dtype", None)
    try:
        return keras.backend.standardize_dtype(dtype)
    except (ValueError, TypeError, AttributeError):
        return str(dtype)


def _as_label_tensor(labels, name):
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        try:
            labels = np.asarray(labels)
        except (ValueError, TypeError) as error:  # ragged lists
            raise ValueError(
                f"`{name}` must hold one integer label per sample. Received: {name}={labels!r}"
            ) from error
    dtype = _dtype_name(labels)
    if not dtype.startswith(_LABEL_KINDS):
        raise ValueError(
            f"`{name}` must hold integer class labels (an integer dtype, or floats that are "
            f"whole numbers). Received: {name}.dtype={dtype}"
        )
    rank = len(labels.shape)
    if rank > 2 or (rank == 2 and labels.shape[-1] not in (1, None)) or rank == 0:
        raise ValueError(
            f"`{name}` must hold one integer label per sample, shape (batch_size,) or "
            f"(batch_size, 1). Received: {name}.shape={tuple(labels.shape)}"
        )
    if dtype == "bool":
        labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    return ops.reshape(ops.convert_to_tensor(labels), (-1,)), dtype


def _whole(labels):
    """Scalar bool tensor: every float label is finite and a whole number."""
    return ops.all(ops.logical_and(ops.isfinite(labels), ops.equal(labels, ops.floor(labels))))


def check_labels(labels, rows=None, name="y_true", rows_name="y_pred"):
    """The labels of a batch, validated; `rows` poisoned with NaN where that is only known late.

    Args:
        labels: ``(b,)`` or ``(b, 1)`` integer-valued labels.
        rows: optional float tensor whose first axis is the batch (embeddings, a distance
            matrix, cosines); its batch size is checked against the labels'.
        name, rows_name: the argument names used in errors.

    Returns:
        ``labels`` as a ``(b,)`` tensor (dtype kept; bool as int32) when `rows` is None,
        else ``(labels, rows)``: when a condition can only be decided at run time (float
        labels inside a compiled function, a batch size unknown while tracing), `rows`
        comes back as NaN where it fails, so every value computed from it is NaN; the
        labels then have `rows`' length.

    Raises:
        ValueError: naming `name`, for a wrong dtype or shape, float labels that are not
            whole numbers (when readable), a length different from `rows`' (when both
            are known while tracing) or an empty batch.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.labels import check_labels
    >>> np.asarray(check_labels(np.array([[1.0], [2.0]]))).tolist()
    [1.0, 2.0]
    >>> check_labels(np.array([0.5, 1.0]))
    Traceback (most recent call last):
        ...
    ValueError: `y_true` must hold integer class labels; 1 of 2 are not whole numbers (e.g. 0.5). Received: y_true.dtype=float64
    """
    labels, dtype = _as_label_tensor(labels, name)
    valid = None
    if dtype.startswith("float"):
        if _backend.is_concrete(labels):
            values = np.asarray(ops.convert_to_numpy(labels))
            bad = ~(np.isfinite(values) & (values == np.floor(values)))
            if bad.any():
                raise ValueError(
                    f"`{name}` must hold integer class labels; {int(bad.sum())} of "
                    f"{values.size} are not whole numbers (e.g. {float(values[bad][0])!r}). "
                    f"Received: {name}.dtype={dtype}"
                )
        else:
            valid = _whole(labels)
    n_labels = labels.shape[0]
    if n_labels == 0:
        raise ValueError(
            f"`{name}` must hold at least one label (an empty batch has no loss). "
            f"Received: {name}.shape={tuple(labels.shape)}"
        )
    if rows is None:
        return labels if valid is None else _poison_labels(labels, valid)
    n_rows = rows.shape[0]
    if n_rows == 0:
        raise ValueError(
            f"`{rows_name}` must hold at least one sample (an empty batch has no loss). "
            f"Received: {rows_name}.shape={tuple(rows.shape)}"
        )
    if n_labels is not None and n_rows is not None:
        if int(n_labels) != int(n_rows):
            raise ValueError(
                f"`{name}` and `{rows_name}` must have the same batch size. Received: "
                f"{name}.shape={tuple(labels.shape)}, {rows_name}.shape={tuple(rows.shape)}"
            )
    else:
        # Known only at run time: labels of rows' length, NaN rows if the lengths differ.
        n_labels, n_rows = ops.shape(labels)[0], ops.shape(rows)[0]
        same = ops.equal(n_labels, n_rows)
        index = ops.minimum(ops.arange(n_rows), ops.maximum(n_labels - 1, 0))
        labels = ops.take(labels, index, axis=0)
        valid = same if valid is None else ops.logical_and(valid, same)
    if valid is not None:
        rows = ops.where(valid, rows, ops.cast(float("nan"), rows.dtype))
    return labels, rows


def _poison_labels(labels, valid):
    # Without rows to poison: the labels themselves become NaN (float labels only).
    return ops.where(valid, labels, ops.cast(float("nan"), labels.dtype))


def _equal_matrix(labels, ref_labels=None):
    ref = labels if ref_labels is None else ref_labels
    return ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(ref, 0))


def _not_eye(n):
    idx = ops.arange(n)
    return ops.not_equal(ops.expand_dims(idx, 1), ops.expand_dims(idx, 0))


def pair_masks(labels, ref_labels=None, same_sample=None):
    """Boolean ``(b, m)`` masks of the positive and negative pairs.

    ``positive[i, j] = labels[i] == ref_labels[j] and not same_sample[i, j]``,
    ``negative[i, j] = labels[i] != ref_labels[j]``. Without `ref_labels` the references
    are the batch itself and `same_sample` defaults to the diagonal.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.labels import pair_masks
    >>> pos, neg = pair_masks(np.array([0, 0, 1]))
    >>> np.asarray(pos).astype(int)
    array([[0, 1, 0],
           [1, 0, 0],
           [0, 0, 0]])
    >>> np.asarray(neg).astype(int)
    array([[0, 0, 1],
           [0, 0, 1],
           [1, 1, 0]])
    """
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    if ref_labels is not None:
        ref_labels = ops.reshape(ops.convert_to_tensor(ref_labels), (-1,))
    same = _equal_matrix(labels, ref_labels)
    if same_sample is None and ref_labels is None:
        positive = ops.logical_and(same, _not_eye(ops.shape(same)[0]))
    elif same_sample is None:
        positive = same
    else:
        positive = ops.logical_and(same, ops.logical_not(same_sample))
    return positive, ops.logical_not(same)


def triplet_mask(labels):
    """Boolean ``(b, b, b)`` mask, ``[a, p, n]`` True iff ``(a, p, n)`` is a valid triplet.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.labels import triplet_mask
    >>> int(np.asarray(triplet_mask(np.array([0, 0, 1]))).sum())  # (0,1,2) and (1,0,2)
    2
    """
    positive, negative = pair_masks(labels)
    return ops.logical_and(ops.expand_dims(positive, 2), ops.expand_dims(negative, 1))
