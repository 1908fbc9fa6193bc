"""Pairwise distances and similarities in ``keras.ops``, numerically safe at zero.

Every function here works on any Keras backend, under ``jit``/XLA, with a batch size that
is unknown at trace time, and gives finite gradients everywhere, including at zero
distance (identical rows) and for all-zero rows.

Half-precision inputs (float16, bfloat16) are computed in float32; float64 stays float64.
"""

import keras
from keras import ops

from keras_featreg import _utils

METRICS = ("euclidean", "squared_euclidean", "cosine")

# Added under the square root where the squared distance is exactly zero, then the result
# is zeroed again: keeps d sqrt(x)/dx = 1 / (2 sqrt(x)) finite (tensorflow-addons does the
# same in `metric_learning.pairwise_distance`).
_SQRT_EPS = 1e-16
# tf.math.l2_normalize's default epsilon (on the squared norm).
_NORM_EPS = 1e-12


def _as_matrix(x, name):
    return _utils.as_float_tensor(x, name=name, min_rank=2, max_rank=2)


def _same_dtype(x, y):
    dtypes = (keras.backend.standardize_dtype(x.dtype), keras.backend.standardize_dtype(y.dtype))
    if dtypes[0] != dtypes[1]:
        dtype = "float64" if "float64" in dtypes else "float32"
        return ops.cast(x, dtype), ops.cast(y, dtype)
    return x, y


def l2_normalize(x, axis=-1, epsilon=_NORM_EPS):
    """Scales rows of `x` to unit L2 norm: ``x / sqrt(max(sum(x**2), epsilon))``.

    All-zero rows stay zero and have finite gradients (unlike ``x / ||x||``).

    Args:
        x: float tensor.
        axis: axis along which to normalize. Defaults to `-1`.
        epsilon: lower bound on the squared norm. Defaults to `1e-12` (as
            `tf.math.l2_normalize`).

    Returns:
        A tensor of the shape of `x` (float32 for half-precision input).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.distances import l2_normalize
    >>> np.asarray(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), dtype=float).round(6).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = _utils.as_float_tensor(x, name="x", min_rank=1)
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, epsilon))


def pairwise_dot(x, y=None):
    """Matrix of inner products ``S[i, j] = <x_i, y_j>`` (``y`` defaults to ``x``).

    Args:
        x: float tensor of shape `(n, d)`.
        y: optional float tensor of shape `(m, d)`.

    Returns:
        Tensor of shape `(n, m)`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.distances import pairwise_dot
    >>> np.asarray(pairwise_dot(np.array([[1.0, 2.0], [3.0, 4.0]]))).tolist()
    [[5.0, 11.0], [11.0, 25.0]]
    """
    x = _as_matrix(x, "x")
    y = x if y is None else _as_matrix(y, "y")
    x, y = _same_dtype(x, y)
    return ops.matmul(x, ops.transpose(y))


def cosine_similarity_matrix(x, y=None):
    """Matrix of cosine similarities ``<x_i, y_j> / (||x_i|| ||y_j||)``, in [-1, 1].

    Rows are normalized with :func:`l2_normalize`, so an all-zero row has similarity 0
    with everything.

    Args:
        x: float tensor of shape `(n, d)`.
        y: optional float tensor of shape `(m, d)`; defaults to `x`.

    Returns:
        Tensor of shape `(n, m)`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.distances import cosine_similarity_matrix
    >>> np.asarray(cosine_similarity_matrix(np.array([[1.0, 0.0], [1.0, 1.0]])), dtype=float).round(4).tolist()
    [[1.0, 0.7071], [0.7071, 1.0]]
    """
    x = _as_matrix(x, "x")
    y = x if y is None else _as_matrix(y, "y")
    x, y = _same_dtype(x, y)
    return ops.matmul(l2_normalize(x), ops.transpose(l2_normalize(y)))


def _off_diagonal(n, dtype):
    idx = ops.arange(n)
    return ops.cast(ops.not_equal(ops.expand_dims(idx, 1), ops.expand_dims(idx, 0)), dtype)


def pairwise_distances(x, y=None, metric="euclidean"):
    """Matrix of pairwise distances between the rows of `x` and the rows of `y`.

    Formulas (``x_i``, ``y_j`` rows):

    * ``"euclidean"``: ``D[i, j] = ||x_i - y_j||_2``
    * ``"squared_euclidean"``: ``D[i, j] = ||x_i - y_j||_2^2``
    * ``"cosine"``: ``D[i, j] = 1 - cos(x_i, y_j)`` in [0, 2] (rows L2-normalized first;
      same as tensorflow-addons' ``"angular"`` metric)

    The squared distances come from ``||x_i||^2 + ||y_j||^2 - 2 <x_i, y_j>`` (one matmul,
    O(n m) memory), clipped at 0 against rounding. The Euclidean square root is taken as
    ``sqrt(d2 + eps * [d2 == 0]) * [d2 > 0]``: exactly 0 at zero distance **with a zero,
    finite gradient** there (``sqrt`` alone has an infinite derivative at 0). When `y` is
    omitted the diagonal is set to exactly 0. This is the algorithm of
    ``tfa.losses.metric_learning.pairwise_distance``.

    Args:
        x: float tensor of shape `(n, d)`.
        y: optional float tensor of shape `(m, d)`. Defaults to `x` (self-distances).
        metric: one of `"euclidean"`, `"squared_euclidean"`, `"cosine"`.
            Defaults to `"euclidean"`.

    Returns:
        Tensor of shape `(n, m)`, float32 for half-precision inputs.

    Raises:
        ValueError: for an unknown `metric`, an integer input or an input that is not
            rank 2.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.distances import pairwise_distances
    >>> x = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> np.asarray(pairwise_distances(x)).tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    >>> np.asarray(pairwise_distances(x, metric="squared_euclidean")).tolist()
    [[0.0, 25.0], [25.0, 0.0]]
    """
    _utils.check_choice("metric", metric, METRICS)
    x = _as_matrix(x, "x")
    self_distances = y is None
    y = x if self_distances else _as_matrix(y, "y")
    x, y = _same_dtype(x, y)

    if metric == "cosine":
        distances = ops.maximum(1.0 - cosine_similarity_matrix(x, y), 0.0)
        if self_distances:
            distances = distances * _off_diagonal(ops.shape(x)[0], distances.dtype)
        return distances

    x_sq = ops.sum(ops.square(x), axis=1, keepdims=True)  # (n, 1)
    y_sq = ops.sum(ops.square(y), axis=1, keepdims=True)  # (m, 1)
    squared = x_sq + ops.transpose(y_sq) - 2.0 * ops.matmul(x, ops.transpose(y))
    squared = ops.maximum(squared, 0.0)
    if self_distances:
        squared = squared * _off_diagonal(ops.shape(x)[0], squared.dtype)
    if metric == "squared_euclidean":
        return squared
    return safe_sqrt(squared)


def safe_sqrt(x, epsilon=_SQRT_EPS):
    """``sqrt(x)`` for ``x >= 0`` with a finite (zero) gradient where ``x == 0``.

    Computes ``sqrt(x + epsilon * [x <= 0]) * [x > 0]``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.distances import safe_sqrt
    >>> np.asarray(safe_sqrt(np.array([0.0, 4.0]))).tolist()
    [0.0, 2.0]
    """
    x = _utils.as_float_tensor(x, name="x", min_rank=0)
    zero = ops.less_equal(x, 0.0)
    mask = ops.cast(zero, x.dtype)
    return ops.sqrt(ops.maximum(x, 0.0) + mask * epsilon) * (1.0 - mask)


def max_distance_on_unit_sphere(metric):
    """Largest value `metric` takes between two L2-normalized vectors (for loss bounds).

    ``"euclidean"``: 2, ``"squared_euclidean"``: 4, ``"cosine"``: 2.

    Example:

    >>> from keras_featreg.ops.distances import max_distance_on_unit_sphere
    >>> max_distance_on_unit_sphere("squared_euclidean")
    4.0
    """
    _utils.check_choice("metric", metric, METRICS)
    return {"euclidean": 2.0, "squared_euclidean": 4.0, "cosine": 2.0}[metric]
