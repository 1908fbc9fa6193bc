"""Input validation and dtype handling shared by every public entry point.

Errors name the argument, what was expected and what was received.  Half-precision
inputs are promoted to float32: no backend has a float16 SVD/eigh, and batch statistics
(variances, Gram matrices) overflow or lose all precision in float16.

Non-finite inputs: every public regularizer, loss and metric returns NaN when its input
holds a NaN or an infinity anywhere (:func:`propagate_nonfinite`), never a finite number
that a ``where``/``max``/``exp`` happened to produce from it.
"""

import numbers

import keras
import numpy as np
from keras import ops

PACKAGE = "keras_featreg"  # the package of every register_keras_serializable
_HALF = ("float16", "bfloat16")


def standardize_dtype(x):
    return keras.backend.standardize_dtype(getattr(x, "dtype", None) or np.asarray(x).dtype)


def compute_dtype(x):
    """The dtype the math runs in: float32 for half inputs, float64 kept, else float32."""
    dtype = standardize_dtype(x)
    return "float64" if dtype == "float64" else "float32"


def as_float_tensor(x, name="embeddings", min_rank=2, max_rank=None):
    """Converts `x` to a float tensor of at least `min_rank`, promoting half precision.

    Raises:
        ValueError: if `x` has an integer/bool/complex dtype or a known rank below
            `min_rank` (or above `max_rank`), or is an empty batch (``min_rank >= 2`` and
            0 rows known while tracing).
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    try:
        dtype = standardize_dtype(x)
    except ValueError:  # strings, objects: no Keras dtype
        dtype = str(getattr(x, "dtype", type(x).__name__))
    if "float" not in dtype:
        raise ValueError(
            f"`{name}` must have a floating dtype (float16, bfloat16, float32 or "
            f"float64). Received: {name}.dtype={dtype}"
        )
    rank = len(x.shape)
    if rank < min_rank:
        raise ValueError(
            f"`{name}` must have rank >= {min_rank} (a batch of vectors, shape "
            f"(batch_size, dim)). Received: {name}.shape={tuple(x.shape)} (rank {rank})"
        )
    if max_rank is not None and rank > max_rank:
        raise ValueError(
            f"`{name}` must have rank <= {max_rank}. Received: "
            f"{name}.shape={tuple(x.shape)} (rank {rank})"
        )
    if min_rank >= 2 and x.shape[0] == 0:
        raise ValueError(
            f"`{name}` must hold at least one sample (an empty batch has no value). "
            f"Received: {name}.shape={tuple(x.shape)}"
        )
    return ops.cast(ops.convert_to_tensor(x), compute_dtype(x))


def check_number(name, value, minimum=None, strict=False, maximum=None):
    """Validates a scalar hyperparameter; returns it as a Python float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number. Received: {name}={value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value!r}")
    if minimum is not None:
        if strict and value <= minimum:
            raise ValueError(f"`{name}` must be > {minimum}. Received: {name}={value!r}")
        if not strict and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}. Received: {name}={value!r}")
    return value


def check_int(name, value, minimum=1):
    """Validates an integer argument (``bool`` refused); returns it as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_optional_int(name, value, minimum=1):
    """:func:`check_int`, or None."""
    return None if value is None else check_int(name, value, minimum)


def check_bool(name, value):
    """Validates a bool argument (``0``, ``1``, ``"no"`` refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool (True or False). Received: {name}={value!r}")
    return value


def check_positive(name, value):
    """:func:`check_number` with ``value > 0``."""
    return check_number(name, value, minimum=0.0, strict=True)


def check_choice(name, value, choices):
    """Validates that `value` is one of `choices` (an unhashable value is refused too)."""
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. Received: {name}={value!r}"
        )
    return value


def class_id_vector(labels, name="labels"):
    """``labels`` as a 1-D NumPy array: ``(n,)`` or ``(n, 1)`` tensors and arrays accepted."""
    if not isinstance(labels, (np.ndarray, list, tuple)) and hasattr(labels, "shape"):
        labels = ops.convert_to_numpy(labels)  # a backend tensor
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"`{name}` must be a vector of class ids, shape (num_samples,). "
            f"Received: {name}.shape={labels.shape}"
        )
    return labels


def check_same_shape(name_a, a, name_b, b):
    """Raises a ValueError naming both arguments when their static shapes differ.

    Compares the ranks and every dimension known on both sides; unknown (``None``)
    dimensions are left to the run-time checks of the backend.
    """
    shape_a, shape_b = tuple(a.shape), tuple(b.shape)
    same = len(shape_a) == len(shape_b) and all(
        static_size(da) is None or static_size(db) is None or int(da) == int(db)
        for da, db in zip(shape_a, shape_b)
    )
    if not same:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape: the same batch size and the "
            f"same embedding dimension. Received: {name_a}.shape={shape_a}, "
            f"{name_b}.shape={shape_b}"
        )


def all_finite(*tensors):
    """Scalar boolean tensor: True when no entry of any of ``tensors`` is NaN or infinite."""
    finite = None
    for tensor in tensors:
        ok = ops.all(ops.isfinite(tensor))
        finite = ok if finite is None else ops.logical_and(finite, ok)
    return finite


def propagate_nonfinite(value, *inputs):
    """``value`` when every entry of ``inputs`` is finite, else NaN (same shape and dtype).

    The library's NaN policy, applied once at each public entry point: a NaN or an
    infinity anywhere in the batch gives NaN, where ``relu``, ``max``, ``where`` or a
    masked reduction could otherwise turn it into a finite number (the bounded SVMax of
    an all-NaN batch would be ``factor * e^0``).  A ``where`` on one scalar predicate: an
    ``O(b d)`` ``isfinite`` pass, no host synchronization, valid under ``jit``/XLA; the
    gradient is unchanged for finite inputs (the NaN branch is a constant, so it has no
    gradient to leak).
    """
    return nan_unless(all_finite(*inputs), value)


def nan_unless(finite, value):
    """``value`` where the scalar boolean ``finite`` is True, else NaN of its shape and dtype."""
    value = ops.convert_to_tensor(value)
    return ops.where(finite, value, ops.full_like(value, float("nan")))


def mean(x, axis=None, keepdims=False):
    """``keras.ops.mean`` that keeps float64 precision on every backend.

    Keras 3's JAX ``mean`` accumulates in ``result_type(x.dtype, "float32")``, which Keras
    clamps to 32 bits: a float64 mean comes back as float64 with a float32 error (about
    1e-7 relative).  A sum divided by the count is what every backend's mean does
    internally, in the input's own dtype.
    """
    total = ops.sum(x, axis=axis, keepdims=keepdims)
    if axis is None:
        axes = range(len(x.shape))
    else:
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    count = 1
    for a in axes:
        dim = static_dim(x, a)
        count = count * (dim if dim is not None else ops.cast(ops.shape(x)[a], x.dtype))
    return total / (float(count) if isinstance(count, int) else count)


def static_size(dim):
    """A dimension of a static shape as a Python int, or None when it is not a known integer.

    Unknown means ``None`` (a ``tf.function`` or ``keras.Input`` batch dimension) or a
    symbolic dimension: ``model.export()`` on the JAX backend traces with
    ``jax.export``/``jax2tf`` shape polymorphism, where the batch dimension is a symbolic
    expression that is neither None nor an int (``int()`` of it raises, and ``<`` against an
    int is "inconclusive").  Such a dimension is treated as unknown, so the caller takes its
    dynamic-shape path (``ops.shape(x)[axis]`` as a tensor).

    Example:

    >>> from keras_featreg._utils import static_size
    >>> static_size(3), static_size(None)
    (3, None)
    """
    if isinstance(dim, numbers.Integral) and not isinstance(dim, bool):
        return int(dim)
    return None


def static_dim(x, axis):
    """The static size of `x` along `axis`, or None when unknown at trace time (a ``None``
    dimension or a symbolic one, see :func:`static_size`)."""
    return static_size(x.shape[axis])


def batch_size_as(x, dtype="float32"):
    """The (possibly dynamic) batch size of `x` as a scalar tensor of `dtype`."""
    return ops.cast(ops.shape(x)[0], dtype)
