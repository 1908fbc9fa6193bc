"""Host-side (NumPy) primitives shared by :mod:`keras_featreg.evaluation` and
:mod:`keras_featreg.search`: the checks of embedding matrices and labels, the ranking a
distance name stands for, and the distance blocks both compute.

Distances between two sets of rows are computed by one algorithm, the one of
:func:`keras_featreg.ops.pairwise.squared_euclidean_matrix`: centre (translation
invariance), expand ``|a|^2 + |b|^2 - 2 a.b`` as one matrix product of two factors, and set
every entry within the expansion's rounding bound ``c (|a|^2 + |b|^2)`` to exactly 0, so
duplicates are at distance exactly 0 on every CPU and tie with each other.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from keras_featreg import distances as distances_lib
from keras_featreg._utils import check_int
from keras_featreg.ops.labels import check_labels
from keras_featreg.ops.pairwise import expansion_error_coefficient

RANKINGS = ("euclidean", "cosine", "dot_product")


def ranking_of(metric, name="metric"):
    """The ranking of a :mod:`keras_featreg.distances` name or object (its
    ``evaluation_metric``: ``"euclidean"``, ``"cosine"`` or ``"dot_product"``): the
    losses' distances and their one table of names serve evaluation and search too."""
    distance = distances_lib.get(metric, arg=name)
    if distance is None or distance.evaluation_metric is None:
        raise ValueError(
            f"`{name}` must be one of {list(distances_lib.NAMES)} or a distance with an "
            f"equivalent ranking. Received: {name}={metric!r}"
        )
    return distance.evaluation_metric


def to_numpy(x):
    """A NumPy array from an array-like or any backend's tensor."""
    if not isinstance(x, np.ndarray) and (hasattr(x, "numpy") or hasattr(x, "shape")):
        x = keras.ops.convert_to_numpy(x)
    return np.asarray(x)


def check_embeddings(embeddings, name="embeddings", min_rows=2, dim=None):
    """Returns `embeddings` as a finite float32/float64 NumPy matrix of shape (n, d).

    float64 stays float64; every other numeric dtype becomes float32.
    """
    embeddings = to_numpy(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(
            f"`{name}` must have rank 2, shape (num_samples, dim). "
            f"Received: {name}.shape={embeddings.shape}"
        )
    if embeddings.dtype.kind not in "fiub":
        raise ValueError(
            f"`{name}` must be numeric. Received: {name}.dtype={embeddings.dtype}"
        )
    dtype = np.float64 if embeddings.dtype == np.float64 else np.float32
    embeddings = np.asarray(embeddings, dtype=dtype)
    if embeddings.shape[0] < min_rows:
        raise ValueError(
            f"`{name}` needs at least {min_rows} sample{'s' if min_rows != 1 else ''}. "
            f"Received: {name}.shape={embeddings.shape}"
        )
    if dim is not None and embeddings.shape[1] != dim:
        raise ValueError(
            f"`{name}` must have {dim} columns (the dimension of the embeddings it is "
            f"compared with). Received: {name}.shape={embeddings.shape}"
        )
    if not np.all(np.isfinite(embeddings)):
        bad = int(np.count_nonzero(~np.isfinite(embeddings).all(axis=1)))
        raise ValueError(f"`{name}` contains NaN or Inf values (in {bad} rows).")
    return embeddings


def check_label_array(labels, num_samples, name="labels", of="embeddings"):
    """Returns `labels` as a 1-D NumPy array of length `num_samples`
    (:func:`keras_featreg.ops.labels.check_labels`: integer-valued, one per sample)."""
    labels = np.asarray(check_labels(to_numpy(labels), name=name))
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"`{of}` and `{name}` must have the same length. Received: "
            f"len({of})={num_samples}, len({name})={labels.shape[0]}"
        )
    return labels


class Factored:
    """Rows prepared so that distances to other prepared rows are one matrix product.

    For ``"euclidean"`` and ``"cosine"`` the rows (unit-normalized first for cosine) are
    shifted by ``shift`` (default: their mean; two sets compared with each other must
    share it) and factored so that ``left(a) @ right(b).T`` is the squared Euclidean
    distance ``|a|^2 + |b|^2 - 2 a.b``; entries within the expansion's rounding bound are
    set to exactly 0 by :meth:`block`. For cosine, ``|a^ - b^|^2 = 2 - 2 cos`` (an all-zero
    row has cosine 0 with everything: it counts 1 more in its squared norm). For
    ``"dot_product"`` the product is ``-a.b``. The block is a *ranking* value;
    :func:`to_distance` turns it into the metric's distance.

    Args:
        x: finite float32/float64 matrix (n, d) (see :func:`check_embeddings`).
        metric: ``"euclidean"``, ``"cosine"`` or ``"dot_product"``.
        shift: the (d,) vector subtracted from every row, or None for their mean.
        keep: the factors computed (and kept: (n, d + 2) each): the queries of a search
            need only ``"left"``, its gallery only ``"right"``.
    """

    def __init__(self, x, metric, shift=None, keep=("left", "right")):
        self.metric = metric
        self.dtype = x.dtype
        self.n = x.shape[0]
        self.sq = self.shift = None
        if metric == "dot_product":
            self._left = x if "left" in keep else None
            self._right = -x if "right" in keep else None
            return
        zero_rows = np.zeros(x.shape[0], dtype=x.dtype)
        if metric == "cosine":
            x, zero_rows = unit_rows(x)
        if shift is None:
            shift = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
        self.shift = np.asarray(shift, dtype=x.dtype)
        x = x - self.shift
        self.sq = np.einsum("ij,ij->i", x, x)
        extra = (self.sq + zero_rows)[:, None]
        ones = np.ones_like(extra)
        self.coefficient = expansion_error_coefficient(x.shape[1], x.dtype)
        self._left = np.concatenate([x, ones, extra], axis=1) if "left" in keep else None
        self._right = np.concatenate([-2 * x, extra, ones], axis=1) if "right" in keep else None

    def __len__(self):
        return self.n

    def left(self, rows=slice(None)):
        """The left factor of these rows (a view)."""
        return self._left[rows]

    def right(self, cols=slice(None)):
        """The right factor of these rows (a view)."""
        return self._right[cols]

    def block(self, other, rows=slice(None), cols=slice(None)):
        """The (rows × cols) block of ranking values between `self` rows and `other` rows."""
        d = self.left(rows) @ other.right(cols).T
        if self.sq is not None:
            zero_within_bound(d, self.sq[rows], other.sq[cols], self.coefficient)
        return d


def unit_rows(x):
    """Rows scaled to unit norm (all-zero rows kept) and the indicator of all-zero rows."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero_rows = (norms[:, 0] == 0).astype(x.dtype)
    return x / np.where(norms > 0, norms, 1).astype(x.dtype), zero_rows


def zero_within_bound(d, sq_rows, sq_cols, coefficient):
    """Sets the entries of `d` within the expansion's rounding bound to exactly 0, in place.

    Only rows whose smallest entry is within their largest bound are compared entry by
    entry (with spread-out embeddings, few rows).
    """
    limit = coefficient * (sq_rows + sq_cols.max(initial=0))
    candidates = np.flatnonzero(d.min(axis=1, initial=np.inf) <= limit)
    if candidates.size:
        sub = d[candidates]
        sub[sub <= coefficient * (sq_rows[candidates, None] + sq_cols[None, :])] = 0.0
        d[candidates] = sub


def to_distance(values, metric):
    """The metric's distance from :class:`Factored` ranking values (any shape).

    ``"euclidean"``: the Euclidean distance; ``"cosine"``: ``1 - cos`` (in [0, 2]);
    ``"dot_product"``: ``-a.b`` (smaller is closer, like every distance here).
    """
    if metric == "euclidean":
        return np.sqrt(np.maximum(values, 0))
    if metric == "cosine":
        return np.maximum(values, 0) / 2
    return values


def from_distance(distance, metric):
    """The inverse of :func:`to_distance` (thresholds in ranking values)."""
    if metric == "euclidean":
        return np.square(distance)
    if metric == "cosine":
        return 2 * np.asarray(distance)
    return distance


def num_threads_of(num_threads):
    """`num_threads` checked, or the default: the number of usable CPUs, at most 8."""
    if num_threads is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, 8))
    return check_int("num_threads", num_threads)


def run_blocks(work, items, num_threads):
    """Yields `work(item)` for each item, in order, in `num_threads` threads with
    single-threaded BLAS each (NumPy releases the GIL in its products and reductions)."""
    if num_threads == 1:
        for item in items:
            yield work(item)
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        with ThreadPoolExecutor(num_threads) as pool:
            yield from pool.map(work, items)
