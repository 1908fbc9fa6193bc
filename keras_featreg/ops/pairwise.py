"""Pairwise distances and similarities in ``keras.ops``, numerically safe at zero.

Every function here works on any Keras backend, under ``jit``/XLA, with a batch size that
is unknown at trace time, and gives finite gradients everywhere, including at zero
distance (identical rows) and for all-zero rows.

Half-precision inputs (float16, bfloat16) are computed in float32; float64 stays float64.
"""

import keras
import numpy as np
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend

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
    >>> from keras_featreg.ops.pairwise import l2_normalize
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
    >>> from keras_featreg.ops.pairwise import pairwise_dot
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
    >>> from keras_featreg.ops.pairwise import cosine_similarity_matrix
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


# How many entries per row `squared_euclidean_matrix` recomputes exactly (the ones with
# the most cancellation in the expansion). Static, so the computation compiles under XLA.
REFINED_PER_ROW = 8


def unit_roundoff(dtype):
    """Unit roundoff ``u = eps / 2`` of a float dtype (``2**-24`` for float32).

    Example:

    >>> from keras_featreg.ops.pairwise import unit_roundoff
    >>> unit_roundoff("float32") == 2.0**-24, unit_roundoff("float64") == 2.0**-53
    (True, True)
    """
    return float(np.finfo(keras.backend.standardize_dtype(dtype)).eps) / 2.0


def expansion_error_coefficient(num_features, dtype):
    """``c`` such that the expansion ``|x|^2 + |y|^2 - 2<x, y>`` is within ``c (|x|^2 + |y|^2)``.

    The classical rounding bound of a dot product of length ``k`` in any summation order,
    fused multiply-adds or not, is ``gamma_k = k u / (1 - k u)`` times ``sum |x_i y_i|``
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5). The three
    terms of the expansion sum to at most ``2 (|x|^2 + |y|^2)`` in magnitude, and two more
    additions are rounded, so ``c = 2 gamma_{d + 2}``. The bound holds on every CPU and
    BLAS (it assumes nothing about the order of the sum), but not for matrix products run
    in reduced precision (TF32 on NVIDIA GPUs): there the refined entries are still exact.

    Args:
        num_features: the length ``d`` of the rows.
        dtype: the float dtype of the computation.

    Example:

    >>> from keras_featreg.ops.pairwise import expansion_error_coefficient
    >>> round(expansion_error_coefficient(128, "float32") / 2.0**-24, 1)
    260.0
    """
    k = int(num_features) + 2
    ku = k * unit_roundoff(dtype)
    return 2.0 * ku / (1.0 - ku)


def _centre(x, y):
    """Subtracts one common point (the mean of all rows) from `x` and `y`.

    Distances are translation invariant, and centring shrinks the norms that the
    expansion's rounding error scales with (a collapsed cloud far from the origin has
    tiny centred norms). The centre is a constant for the gradient: the distance does not
    depend on it, so its derivative through the centre is exactly zero.
    """
    rows = x if y is None else ops.concatenate([x, y], axis=0)
    centre = ops.stop_gradient(_utils.mean(rows, axis=0, keepdims=True))
    return x - centre, (None if y is None else y - centre)


def _scatter_rows(matrix, columns, values):
    """``matrix`` with ``matrix[i, columns[i, k]] = values[i, k]`` (distinct per row)."""
    n, k = ops.shape(columns)[0], ops.shape(columns)[1]
    rows = ops.repeat(ops.expand_dims(ops.arange(n, dtype="int32"), 1), k, axis=1)
    indices = ops.stack([rows, ops.cast(columns, "int32")], axis=-1)
    return ops.scatter_update(matrix, ops.reshape(indices, (-1, 2)), ops.reshape(values, (-1,)))


def _refine(squared, x, y, ratio, refine):
    """Replaces the `refine` entries of each row with the smallest `ratio` by the exact
    ``sum_k (x_ik - y_jk)^2`` (a gather of `refine` rows of `y` per row of `x`)."""
    m_static = _utils.static_dim(y, 0)
    if m_static is not None and m_static <= refine:
        refine, padding = m_static, 0
    else:
        padding = 0 if m_static is not None else refine
    if padding:
        # Unknown number of columns at trace time: pad with `refine` dummy columns that are
        # chosen last, so that top_k always has enough distinct candidates.
        m = ops.shape(y)[0]
        squared = ops.pad(squared, [[0, 0], [0, padding]])
        ratio = ops.pad(ratio, [[0, 0], [0, padding]], constant_values=float("inf"))
        y = ops.pad(y, [[0, padding], [0, 0]])
    _, columns = _backend.top_k(-ops.stop_gradient(ratio), k=refine, sorted=False)
    partners = ops.take(y, ops.reshape(columns, (-1,)), axis=0)
    partners = ops.reshape(partners, (ops.shape(x)[0], refine, ops.shape(x)[1]))
    exact = ops.sum(ops.square(ops.expand_dims(x, 1) - partners), axis=-1)
    # Rows closer than a few units of roundoff of their norms are the same point written
    # twice (e.g. an XLA fusion that recomputes a normalization with another rsqrt
    # rounding): exactly 0, with a zero gradient.
    resolution = (4.0 * unit_roundoff(x.dtype)) ** 2 * (
        ops.expand_dims(ops.sum(ops.square(x), axis=1), 1) + ops.sum(ops.square(partners), axis=-1)
    )
    exact = ops.where(ops.greater(exact, resolution), exact, ops.zeros_like(exact))
    squared = _scatter_rows(squared, columns, exact)
    if padding:
        squared = squared[:, :m]
    return squared


def squared_euclidean_matrix(x, y=None, refine=REFINED_PER_ROW):
    """Matrix of squared Euclidean distances ``||x_i - y_j||^2``, exact where it matters.

    The one distance primitive of keras-featreg (losses, miners and, in NumPy, the
    retrieval evaluation use this algorithm). Three steps:

    1. Centre both sets on their common mean (distances are translation invariant).
    2. Expand ``|x_i|^2 + |y_j|^2 - 2 <x_i, y_j>`` (one matmul, O(n m) memory). Its
       rounding error is at most ``c (|x_i|^2 + |y_j|^2)`` with
       ``c = expansion_error_coefficient(d, dtype)`` (``2 gamma_{d+2}``); an entry within
       that bound is indistinguishable from 0 and **is** 0.
    3. In each row, the `refine` entries with the most cancellation (smallest expansion
       relative to ``|x_i|^2 + |y_j|^2``: the near pairs) are recomputed as
       ``sum_k (x_ik - y_jk)^2`` from the differences of the input rows (exact for rows
       within a factor 2 of each other, Sterbenz's lemma).

    A refined entry at most ``(4 u)^2 (|x_i|^2 + |y_j|^2)`` (``u`` the unit roundoff:
    rows equal to a few roundings of their norm, e.g. one normalization rounded twice by
    a compiler) is 0 as well. So identical rows give exactly 0 with a zero gradient, on
    every CPU, backend and compiler; small distances keep the relative
    accuracy of the inputs (unit rows at distance 1e-2: relative error ~1e-7 in float32,
    where the expansion alone has ~1e-3); large distances carry the expansion's error,
    relative ``c (|x_i|^2 + |y_j|^2) / D_ij``. A row with more than `refine` near partners
    has its other near entries from step 2 (within the bound, 0 below it).

    Args:
        x: float tensor of shape `(n, d)`.
        y: optional float tensor of shape `(m, d)`. Defaults to `x`; the diagonal is then 0.
        refine: entries per row recomputed exactly (static). Defaults to 8.

    Returns:
        Tensor of shape `(n, m)`, float32 for half-precision inputs.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.pairwise import squared_euclidean_matrix
    >>> x = np.array([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], "float32")
    >>> np.asarray(squared_euclidean_matrix(x)).tolist()
    [[0.0, 0.0, 25.0], [0.0, 0.0, 25.0], [25.0, 25.0, 0.0]]
    """
    x = _as_matrix(x, "x")
    self_distances = y is None
    if not self_distances:
        y = _as_matrix(y, "y")
        x, y = _same_dtype(x, y)
        _check_same_features(x, y)
    refine = int(refine)
    if refine < 0:
        raise ValueError(f"`refine` must be >= 0. Received: refine={refine}")
    xc, yc = _centre(x, y)
    y, yc = (x, xc) if self_distances else (y, yc)
    norms = (ops.expand_dims(ops.sum(ops.square(xc), axis=1), 1)
             + ops.expand_dims(ops.sum(ops.square(yc), axis=1), 0))
    expansion = norms - 2.0 * ops.matmul(xc, ops.transpose(yc))
    d = _utils.static_dim(x, 1)
    bound = expansion_error_coefficient(d if d is not None else 1024, x.dtype) * norms
    squared = ops.where(ops.greater(expansion, bound), expansion, ops.zeros_like(expansion))
    if refine:
        ratio = expansion / ops.maximum(norms, ops.cast(np.finfo(np.float32).tiny, x.dtype))
        # Differences of the inputs themselves: exact for near rows (Sterbenz), where the
        # centred rows carry the centring's rounding.
        squared = _refine(squared, x, y, ratio, refine)
    if self_distances:
        squared = squared * _off_diagonal(ops.shape(x)[0], squared.dtype)
    return squared


def _check_same_features(x, y):
    dx, dy = _utils.static_dim(x, 1), _utils.static_dim(y, 1)
    if dx is not None and dy is not None and dx != dy:
        raise ValueError(
            "`x` and `y` must have the same number of features (columns). "
            f"Received: x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
        )


def pairwise_distances(x, y=None, metric="euclidean"):
    """Matrix of pairwise distances between the rows of `x` and the rows of `y`.

    Formulas (``x_i``, ``y_j`` rows):

    * ``"euclidean"``: ``D[i, j] = ||x_i - y_j||_2``
    * ``"squared_euclidean"``: ``D[i, j] = ||x_i - y_j||_2^2``
    * ``"cosine"``: ``D[i, j] = 1 - cos(x_i, y_j)`` in [0, 2] (same as tensorflow-addons'
      ``"angular"`` metric), computed as ``||x^_i - y^_j||^2 / 2`` of the L2-normalized
      rows (plus 1/2 for each all-zero row, whose cosine is 0)

    All three come from :func:`squared_euclidean_matrix`: identical rows give exactly 0
    with a zero gradient on every CPU and backend, near pairs are computed from the
    differences of the rows (exact to the inputs' precision), entries within the
    expansion's rounding bound of 0 are 0. The Euclidean square root is taken as
    ``sqrt(d2 + eps * [d2 == 0]) * [d2 > 0]``: exactly 0 at zero distance **with a zero,
    finite gradient** there (``sqrt`` alone has an infinite derivative at 0). When `y` is
    omitted the diagonal is exactly 0.

    Args:
        x: float tensor of shape `(n, d)`.
        y: optional float tensor of shape `(m, d)`. Defaults to `x` (self-distances).
        metric: one of `"euclidean"`, `"squared_euclidean"`, `"cosine"`.
            Defaults to `"euclidean"`.

    Returns:
        Tensor of shape `(n, m)`, float32 for half-precision inputs.

    Raises:
        ValueError: for an unknown `metric`, an integer input, an input that is not
            rank 2, or `x` and `y` with different numbers of columns.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.pairwise import pairwise_distances
    >>> x = np.array([[0.0, 0.0], [3.0, 4.0]])
    >>> np.asarray(pairwise_distances(x)).tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    >>> np.asarray(pairwise_distances(x, metric="squared_euclidean")).tolist()
    [[0.0, 25.0], [25.0, 0.0]]
    """
    _utils.check_choice("metric", metric, METRICS)
    x = _as_matrix(x, "x")
    self_distances = y is None
    if not self_distances:
        y = _as_matrix(y, "y")
        x, y = _same_dtype(x, y)

    if metric == "cosine":
        x_unit = l2_normalize(x)
        y_unit = None if self_distances else l2_normalize(y)
        distances = 0.5 * squared_euclidean_matrix(x_unit, y_unit)
        # An all-zero row stays zero under l2_normalize: its cosine with anything is 0.
        x_zero = ops.cast(ops.all(ops.equal(x, 0.0), axis=1), distances.dtype)
        y_zero = x_zero if self_distances else ops.cast(
            ops.all(ops.equal(y, 0.0), axis=1), distances.dtype)
        distances = distances + 0.5 * (ops.expand_dims(x_zero, 1) + ops.expand_dims(y_zero, 0))
        if self_distances:
            distances = distances * _off_diagonal(ops.shape(x)[0], distances.dtype)
        return distances

    squared = squared_euclidean_matrix(x, y)
    if metric == "squared_euclidean":
        return squared
    return safe_sqrt(squared)


def safe_sqrt(x, epsilon=_SQRT_EPS):
    """``sqrt(x)`` for ``x >= 0`` with a finite (zero) gradient where ``x == 0``.

    Computes ``sqrt(x + epsilon * [x <= 0]) * [x > 0]``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.pairwise import safe_sqrt
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

    >>> from keras_featreg.ops.pairwise import max_distance_on_unit_sphere
    >>> max_distance_on_unit_sphere("squared_euclidean")
    4.0
    """
    _utils.check_choice("metric", metric, METRICS)
    return {"euclidean": 2.0, "squared_euclidean": 4.0, "cosine": 2.0}[metric]
