"""Retrieval evaluation: Recall@K, MAP@R, NMI, embedding extraction and a Keras callback.

Everything here is evaluation code that runs on the host in NumPy (BLAS matrix
products, chunked), not inside the training graph, so it behaves the same under
every Keras backend.

Conventions shared by `recall_at_k` and `map_at_r`:

* The query itself is excluded from its own neighbours; every other sample is in
  the gallery (the usual "leave-one-out" protocol of metric-learning papers).
* Distances: ``metric="euclidean"`` (default; ranks by squared Euclidean distance,
  which gives the same ranking as Euclidean), ``"cosine"`` (rows L2-normalized
  first; for L2-normalized embeddings this is the same ranking as Euclidean) or
  ``"inner_product"`` (larger dot product = closer).
* Distances use the algorithm of :func:`keras_featreg.ops.distances.squared_euclidean_matrix`
  (centred expansion; entries within its rounding bound are exactly 0), so duplicates
  are at distance exactly 0 on every CPU and tie with each other; the exact recomputation
  of near pairs is left out here (it changes only the order of pairs closer than the
  bound, about ``sqrt(2 gamma_{d+2})`` times the spread of the data).
* Ties are broken pessimistically: a different-label sample at exactly the same
  distance as a same-label one is ranked first. Collapsed (all-equal) embeddings
  therefore score 0, never 1.
* Computation is in float32 (float64 when the embeddings are float64), in blocks of
  ``chunk_size`` samples, so memory stays O(n·d + chunk_size²) (O(n·chunk) for
  MAP@R) instead of the O(n²) of a full distance matrix.
"""

import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from keras_featreg._utils import check_choice, class_id_vector
from keras_featreg.ops.distances import expansion_error_coefficient

__all__ = [
    "recall_at_k",
    "map_at_r",
    "nmi",
    "embed",
    "evaluate_retrieval",
    "RetrievalEvaluation",
]

_METRICS = ("euclidean", "cosine", "inner_product")
_MAP_ELEMENTS = 2**25  # rows × n of one MAP@R chunk: 128 MiB in float32.


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _check_embeddings(embeddings, name="embeddings"):
    """Returns `embeddings` as a finite float32/float64 NumPy matrix of shape (n, d)."""
    if hasattr(embeddings, "numpy") or not isinstance(embeddings, np.ndarray):
        embeddings = keras.ops.convert_to_numpy(embeddings)
    embeddings = np.asarray(embeddings)
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
    if embeddings.shape[0] < 2:
        raise ValueError(
            f"`{name}` needs at least 2 samples. Received: {name}.shape={embeddings.shape}"
        )
    if not np.all(np.isfinite(embeddings)):
        bad = int(np.count_nonzero(~np.isfinite(embeddings).all(axis=1)))
        raise ValueError(f"`{name}` contains NaN or Inf values (in {bad} rows).")
    return embeddings


def _check_labels(labels, num_samples, name="labels"):
    """Returns `labels` as a 1-D NumPy array of length `num_samples`."""
    labels = class_id_vector(labels, name)
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"`embeddings` and `{name}` must have the same length. Received: "
            f"len(embeddings)={num_samples}, len({name})={labels.shape[0]}"
        )
    return labels


def _check_ks(ks, num_samples):
    """Returns `ks` as a sorted tuple of distinct ints in [1, num_samples - 1]."""
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    ks = tuple(ks)
    if not ks:
        raise ValueError(f"`ks` must contain at least one value. Received: ks={ks}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"Every k in `ks` must be an integer. Received: ks={ks}")
        if k < 1:
            raise ValueError(f"Every k in `ks` must be >= 1. Received: ks={ks}")
        if k >= num_samples:
            raise ValueError(
                f"Every k in `ks` must be < the number of samples ({num_samples}): a "
                f"query has only {num_samples - 1} neighbours. Received: ks={ks}"
            )
    return tuple(sorted(set(int(k) for k in ks)))


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def _check_chunk_size(chunk_size):
    return _check_positive_int("chunk_size", chunk_size)


def _num_threads(num_threads):
    if num_threads is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, 8))
    return _check_positive_int("num_threads", num_threads)


# --------------------------------------------------------------------------- #
# Shared preparation: sort by label, build the two factors of the distance matrix
# --------------------------------------------------------------------------- #
class _Prepared:
    """Embeddings sorted by label and factored so that ``left[i] @ right[j] = D[i, j]``.

    ``D`` is symmetric and ranks neighbours like the chosen metric (squared
    Euclidean distance, or negated cosine / inner product similarity).
    """

    def __init__(self, embeddings, labels, metric):
        check_choice("metric", metric, _METRICS)
        x = _check_embeddings(embeddings)
        labels = _check_labels(labels, x.shape[0])
        self.order = np.argsort(labels, kind="stable")
        x = x[self.order]
        self.labels = labels[self.order]
        _, codes = np.unique(self.labels, return_inverse=True)
        self.codes = codes.reshape(-1).astype(np.int64)  # 0..C-1, sorted
        self.class_starts = np.flatnonzero(np.r_[True, self.codes[1:] != self.codes[:-1]])
        self.class_counts = np.diff(np.r_[self.class_starts, len(self.codes)])
        self.n = x.shape[0]
        self.dtype = x.dtype
        self.sq = None
        if metric in ("euclidean", "cosine"):
            zero_rows = np.zeros(self.n, dtype=x.dtype)
            if metric == "cosine":
                # 1 - cos = |x^ - y^|^2 / 2 for unit rows (plus 1/2 per all-zero row, whose
                # cosine is 0): the squared-Euclidean algorithm on normalized rows, as in
                # keras_featreg.ops.distances.pairwise_distances.
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                zero_rows = (norms[:, 0] == 0).astype(x.dtype)
                x = x / np.where(norms > 0, norms, 1).astype(x.dtype)
            # The algorithm of keras_featreg.ops.distances.squared_euclidean_matrix: centre
            # (translation invariance), expand |a|^2 + |b|^2 - 2 a.b, and set every entry
            # within the expansion's rounding bound c (|a|^2 + |b|^2) to exactly 0.
            x = x - x.mean(axis=0, dtype=np.float64).astype(x.dtype)
            self.sq = np.einsum("ij,ij->i", x, x)
            self.coefficient = expansion_error_coefficient(x.shape[1], x.dtype)
            ones = np.ones_like(self.sq)
            self.left = np.concatenate([x, ones[:, None], (self.sq + zero_rows)[:, None]], axis=1)
            self.right = np.concatenate([-2 * x, (self.sq + zero_rows)[:, None], ones[:, None]],
                                        axis=1)
        else:
            self.left = np.ascontiguousarray(x)
            self.right = np.ascontiguousarray(-x)

    def block(self, rows, cols):
        """The (rows × cols) block of D."""
        d = self.left[rows] @ self.right[cols].T
        if self.sq is not None:
            self._zero_within_bound(d, self.sq[rows], self.sq[cols])
        return d

    def _zero_within_bound(self, d, sq_rows, sq_cols):
        """Sets the entries within the expansion's rounding bound to exactly 0, in place.

        Only rows whose smallest entry is within their largest bound are compared entry by
        entry (with spread-out embeddings, the rows of the diagonal tiles only).
        """
        limit = self.coefficient * (sq_rows + sq_cols.max())
        candidates = np.flatnonzero(d.min(axis=1) <= limit)
        if candidates.size:
            sub = d[candidates]
            sub[sub <= self.coefficient * (sq_rows[candidates, None] + sq_cols[None, :])] = 0.0
            d[candidates] = sub

    def unsort(self, sorted_values):
        """Maps per-sample values computed in sorted order back to input order."""
        out = np.empty_like(sorted_values)
        out[self.order] = sorted_values
        return out


def _segments(prep, size):
    """Contiguous ranges holding whole classes: one big class, or small ones packed."""
    segments, seg_start, seg_stop = [], None, None
    for start, count in zip(prep.class_starts, prep.class_counts):
        stop = start + count
        if seg_start is not None and stop - seg_start <= size:
            seg_stop = stop
            continue
        if seg_start is not None:
            segments.append((seg_start, seg_stop))
        seg_start, seg_stop = start, stop
    segments.append((seg_start, seg_stop))
    return segments


def _run_blocks(work, pairs, num_threads):
    """Runs `work` over block pairs, in threads with single-threaded BLAS each."""
    if num_threads == 1:
        for pair in pairs:
            yield work(pair)
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        with ThreadPoolExecutor(num_threads) as pool:
            yield from pool.map(work, pairs)


# --------------------------------------------------------------------------- #
# Recall@K
# --------------------------------------------------------------------------- #
def _tiles(prep, size):
    """Segments cut into tiles of at most `size` rows: one list of slices per segment.

    A segment is either several whole small classes (one tile) or one class larger
    than `size` (several tiles). All same-label pairs lie inside a segment.
    """
    return [
        [slice(a, min(a + size, stop)) for a in range(start, stop, size)]
        for start, stop in _segments(prep, size)
    ]


def _count_at_most(d, limits, axis):
    """Per row (axis=1) or column (axis=0) of `d`: entries <= its limit.

    A min-reduction first finds the few rows/columns that have any such entry (with
    useful embeddings most have none), and only those are compared element-wise.
    """
    counts = np.zeros(d.shape[1 - axis], dtype=np.int64)
    active = np.flatnonzero(d.min(axis=axis) <= limits)
    if active.size == 0:
        return counts
    if active.size * 4 > counts.size:  # many active: one full pass is cheaper
        shape = (-1, 1) if axis == 1 else (1, -1)
        mask = d <= limits.reshape(shape)
        return mask.view(np.uint8).sum(axis=axis, dtype=np.int64)
    if axis == 1:
        sub = d[active] <= limits[active, None]
    else:
        sub = d[:, active] <= limits[None, active]
    counts[active] = sub.view(np.uint8).sum(axis=axis, dtype=np.int64)
    return counts


def _within_segments(prep, tiles, num_threads):
    """Stage 1: nearest same-label distance of every sample, plus, for segments
    packing several classes, the different-label counts inside the segment.

    Returns (thresholds, counts) over the label-sorted samples.
    """
    thresholds = np.full(prep.n, np.inf, dtype=prep.dtype)
    counts = np.zeros(prep.n, dtype=np.int64)
    codes = prep.codes

    def work(pair):
        rows, cols = pair
        d = prep.block(rows, cols)
        if rows == cols:
            np.fill_diagonal(d, np.inf)
        if codes[rows.start] == codes[cols.stop - 1]:  # one class: all positives
            col_min = None if rows == cols else d.min(axis=0)
            return rows, cols, d.min(axis=1), col_min, None
        # Several classes packed in one tile (rows == cols): it holds every positive
        # of its rows, so their thresholds are final here and negatives can be counted.
        same = codes[rows][:, None] == codes[cols][None, :]
        row_min = np.where(same, d, np.inf).min(axis=1)
        d[same] = np.inf
        return rows, cols, row_min, None, _count_at_most(d, row_min, axis=1)

    pairs = (
        (tiles_s[i], tiles_s[j])
        for tiles_s in tiles
        for i in range(len(tiles_s))
        for j in range(i, len(tiles_s))
    )
    for rows, cols, row_min, col_min, row_counts in _run_blocks(work, pairs, num_threads):
        np.minimum(thresholds[rows], row_min, out=thresholds[rows])
        if col_min is not None:
            np.minimum(thresholds[cols], col_min, out=thresholds[cols])
        if row_counts is not None:
            counts[rows] += row_counts
    return thresholds, counts


def _across_segments(prep, tiles, thresholds, num_threads):
    """Stage 2: per sample, different-label samples of other segments within its
    threshold. Tiles of different segments share no label, so nothing is masked;
    each unordered tile pair is computed once and counted for rows and columns."""
    counts = np.zeros(prep.n, dtype=np.int64)
    flat = [(k, t) for k, tiles_s in enumerate(tiles) for t in tiles_s]

    def work(pair):
        rows, cols = pair
        d = prep.block(rows, cols)
        return (rows, cols, _count_at_most(d, thresholds[rows], axis=1),
                _count_at_most(d, thresholds[cols], axis=0))

    pairs = (
        (rows, cols)
        for i, (seg_i, rows) in enumerate(flat)
        for seg_j, cols in flat[i + 1:]
        if seg_i != seg_j
    )
    for rows, cols, row_counts, col_counts in _run_blocks(work, pairs, num_threads):
        counts[rows] += row_counts
        counts[cols] += col_counts
    return counts


def recall_at_k(
    embeddings,
    labels,
    ks=(1, 2, 4, 8),
    chunk_size=2048,
    metric="euclidean",
    num_threads=None,
):
    """Recall@K: the fraction of queries with a same-label sample among their K nearest.

    Every sample is a query against all the others (itself excluded). A query whose
    label occurs only once can never hit and counts as a miss.

    Instead of sorting neighbours, the computation finds for each query the distance
    ``t`` to its nearest same-label sample and counts the different-label samples at
    distance ``<= t``; the query hits at K exactly when that count is below K
    (pessimistic ties). Samples are sorted by label and cut into tiles of at most
    `chunk_size` (small classes packed whole into one tile); the distances of each
    unordered tile pair are computed once with a BLAS product (the matrix is
    symmetric), in `num_threads` threads with single-threaded BLAS each. Memory:
    O(n·d + num_threads · chunk_size²), ~120 MiB for 60 000 × 128.

    Args:
        embeddings: array-like (n, d) of floats (NumPy array or any backend tensor).
        labels: array-like (n,) of class ids.
        ks: an int or an iterable of ints, each in [1, n - 1].
        chunk_size: edge of the square distance blocks (>= 1). Results do not depend
            on it (up to floating-point ties).
        metric: "euclidean" (default), "cosine" or "inner_product".
        num_threads: worker threads (default: number of CPUs, at most 8).

    Returns:
        A dict ``{k: recall}`` with Python floats in [0, 1], ordered by k.

    Example:
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2]])
    >>> recall_at_k(x, [0, 0, 1, 1], ks=(1, 2))
    {1: 1.0, 2: 1.0}
    >>> recall_at_k(x, [0, 1, 0, 1], ks=1)
    {1: 0.0}
    """
    chunk_size = _check_chunk_size(chunk_size)
    num_threads = _num_threads(num_threads)
    prep = _Prepared(embeddings, labels, metric)
    ks = _check_ks(ks, prep.n)
    tiles = _tiles(prep, chunk_size)
    thresholds, negatives = _within_segments(prep, tiles, num_threads)
    negatives += _across_segments(prep, tiles, thresholds, num_threads)
    has_positive = np.isfinite(thresholds)
    return {k: float(np.mean((negatives < k) & has_positive)) for k in ks}


# --------------------------------------------------------------------------- #
# MAP@R
# --------------------------------------------------------------------------- #
def _candidate_negatives(negatives, limits, max_keep):
    """Per row, the different-label distances <= its limit, at most `max_keep` smallest.

    Returns a (rows, width) array padded with +inf (unordered within a row).
    """
    mask = negatives <= limits[:, None]
    per_row = mask.sum(axis=1)
    most = int(per_row.max(initial=0))
    if most == 0:
        return np.empty((negatives.shape[0], 0), negatives.dtype)
    if most * 8 > negatives.shape[1]:
        # Poor embeddings: most of the row qualifies. The `max_keep` smallest
        # negatives are enough (any larger one ranks after all R positives).
        return np.partition(negatives, max_keep - 1, axis=1)[:, :max_keep]
    rows, cols = np.nonzero(mask)
    starts = np.cumsum(per_row) - per_row
    out = np.full((negatives.shape[0], most), np.inf, negatives.dtype)
    out[rows, np.arange(rows.size) - starts[rows]] = negatives[rows, cols]
    if most > max_keep:
        out = np.partition(out, max_keep - 1, axis=1)[:, :max_keep]
    return out


def _average_precision_at_r(positives, candidates):
    """AP@R per row from the R smallest positive and the candidate negative distances."""
    r = positives.shape[1]
    merged = np.concatenate([candidates, positives], axis=1)
    is_pos = np.zeros(merged.shape, dtype=bool)
    is_pos[:, candidates.shape[1]:] = True
    # Stable sort with negatives first: at equal distance the negative ranks first.
    order = np.argsort(merged, axis=1, kind="stable")[:, :r]
    hits = np.take_along_axis(is_pos, order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, r + 1)
    return (precision * hits).sum(axis=1) / r


def _map_rows(prep, rows_start, rows_stop):
    """AP@R of the (sorted) queries in [rows_start, rows_stop); NaN where R = 0."""
    d = prep.block(slice(rows_start, rows_stop), slice(None))
    ap = np.full(rows_stop - rows_start, np.nan)
    codes = prep.codes
    for code in np.unique(codes[rows_start:rows_stop]):
        start, count = prep.class_starts[code], prep.class_counts[code]
        r = count - 1
        if r == 0:
            continue
        # Rows are sorted by label: this class's queries are contiguous.
        lo = max(start, rows_start) - rows_start
        hi = min(start + count, rows_stop) - rows_start
        block = d[lo:hi]
        positives = block[:, start:start + count].copy()
        positives[np.arange(hi - lo), np.arange(lo, hi) + rows_start - start] = np.inf
        positives = np.sort(positives, axis=1)[:, :r]  # self (inf) sorted last, dropped
        block[:, start:start + count] = np.inf  # keep negatives only
        candidates = _candidate_negatives(block, positives[:, -1], r)
        ap[lo:hi] = _average_precision_at_r(positives, candidates)
    return ap


def map_at_r(embeddings, labels, chunk_size=2048, metric="euclidean", return_per_query=False):
    """MAP@R (Musgrave et al., 2020, "A Metric Learning Reality Check").

    For a query with R other samples of its label, AP@R = (1/R) Σ_{i=1..R} P(i)·rel(i)
    over its R nearest neighbours (itself excluded), where rel(i) says whether the
    i-th neighbour shares the label and P(i) is the precision among the first i.
    MAP@R averages AP@R over the queries; queries whose label occurs once (R = 0)
    are left out. Ties are pessimistic (a different-label sample at the same
    distance ranks first).

    Rows are processed in chunks of at most `chunk_size` queries (fewer when n is
    large, so that one chunk of distances stays under 128 MiB). Only the R nearest
    same-label distances and the different-label distances below the R-th of them are
    sorted, so good embeddings are cheap; poor ones cost up to a partial sort of
    every row.

    Args:
        embeddings: array-like (n, d) of floats.
        labels: array-like (n,) of class ids; at least one label must occur twice.
        chunk_size: maximum number of queries per chunk (>= 1).
        metric: "euclidean" (default), "cosine" or "inner_product".
        return_per_query: also return the AP@R of every query (NaN where R = 0), in
            input order.

    Returns:
        MAP@R as a Python float in [0, 1] (and the per-query array when asked).

    Example:
    >>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1]])
    >>> map_at_r(x, [0, 0, 0, 1, 1])
    1.0
    >>> round(map_at_r(x, [0, 0, 1, 0, 1]), 4)
    0.2
    """
    chunk_size = _check_chunk_size(chunk_size)
    prep = _Prepared(embeddings, labels, metric)
    if np.all(prep.class_counts == 1):
        raise ValueError(
            "MAP@R needs at least one label that occurs twice; every label in "
            f"`labels` is unique ({prep.n} samples)."
        )
    rows = max(1, min(chunk_size, _MAP_ELEMENTS // prep.n))
    ap = np.concatenate(
        [_map_rows(prep, s, min(s + rows, prep.n)) for s in range(0, prep.n, rows)]
    )
    value = float(np.nanmean(ap))
    if return_per_query:
        return value, prep.unsort(ap)
    return value


# --------------------------------------------------------------------------- #
# NMI
# --------------------------------------------------------------------------- #
def nmi(embeddings, labels, seed=0, average_method="geometric", n_init="auto"):
    """Normalized mutual information between K-means clusters and the labels.

    K-means (scikit-learn, k-means++ init) uses as many clusters as there are
    distinct labels. The paper's NMI is I(Ω; C) / √(H(Ω)·H(C)), i.e. scikit-learn's
    ``average_method="geometric"`` (scikit-learn's own default is "arithmetic",
    which gives slightly different numbers).

    Args:
        embeddings: array-like (n, d) of floats.
        labels: array-like (n,) with at least 2 distinct labels.
        seed: random state of K-means (an int, for reproducible values).
        average_method: "geometric" (default, the paper's), "arithmetic", "min" or
            "max".
        n_init: number of K-means restarts, passed to `sklearn.cluster.KMeans`.

    Returns:
        NMI as a Python float in [0, 1].

    Example:
    >>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> nmi(x, [0, 0, 1, 1])
    1.0
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    check_choice("average_method", average_method, ("geometric", "arithmetic", "min", "max"))
    x = _check_embeddings(embeddings)
    labels = _check_labels(labels, x.shape[0])
    num_classes = np.unique(labels).size
    if num_classes < 2:
        raise ValueError(
            f"`labels` must contain at least 2 distinct classes for NMI. Received "
            f"{num_classes} class ({labels[0]!r})."
        )
    kmeans = KMeans(n_clusters=num_classes, n_init=n_init, random_state=seed)
    clusters = kmeans.fit_predict(x)
    return float(
        normalized_mutual_info_score(labels, clusters, average_method=average_method)
    )


# --------------------------------------------------------------------------- #
# Embedding extraction
# --------------------------------------------------------------------------- #
def _is_tf_dataset(data):
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
    if _is_tf_dataset(data):
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
    batch_size = _check_positive_int("batch_size", batch_size)
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


# --------------------------------------------------------------------------- #
# All metrics at once, and the callback
# --------------------------------------------------------------------------- #
_nmi_score = nmi  # the arguments of evaluate_retrieval shadow these names
_map_at_r_score = map_at_r


def evaluate_retrieval(
    embeddings,
    labels,
    ks=(1, 2, 4, 8),
    nmi=True,
    map_at_r=True,
    metric="euclidean",
    seed=0,
    chunk_size=2048,
    prefix="",
):
    """Recall@K (and optionally NMI, MAP@R) in one dict with Keras-log style keys.

    Args:
        embeddings: array-like (n, d).
        labels: array-like (n,).
        ks: the K values of Recall@K.
        nmi: also compute NMI (geometric averaging, see `nmi`).
        map_at_r: also compute MAP@R.
        metric: "euclidean", "cosine" or "inner_product" (Recall@K and MAP@R; NMI
            always clusters the embeddings as given).
        seed: K-means seed for NMI.
        chunk_size: block size of the chunked computations.
        prefix: prepended to every key (e.g. "val_").

    Returns:
        ``{f"{prefix}recall@{k}": ..., f"{prefix}nmi": ..., f"{prefix}map@r": ...}``.

    Example:
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2]])
    >>> evaluate_retrieval(x, [0, 0, 1, 1], ks=(1,), nmi=False, map_at_r=False)
    {'recall@1': 1.0}
    """
    recalls = recall_at_k(embeddings, labels, ks=ks, chunk_size=chunk_size, metric=metric)
    results = {f"{prefix}recall@{k}": v for k, v in recalls.items()}
    if nmi:
        results[f"{prefix}nmi"] = _nmi_score(embeddings, labels, seed=seed)
    if map_at_r:
        results[f"{prefix}map@r"] = _map_at_r_score(
            embeddings, labels, chunk_size=chunk_size, metric=metric
        )
    return results


class RetrievalEvaluation(keras.callbacks.Callback):
    """Keras callback that logs Recall@K, NMI and MAP@R on held-out data each epoch.

    At the end of every `every`-th epoch (and of the last one) it embeds `x` with
    the model, computes the metrics and writes them into the epoch ``logs`` as
    ``{prefix}recall@1``, ..., ``{prefix}nmi``, ``{prefix}map@r``. Keras passes one
    shared ``logs`` dict to the callbacks in list order and appends its `History`
    (and progress bar) after the user's callbacks, so the values reach
    ``model.fit(...).history`` and the progress bar. Put this callback *before*
    callbacks that read them (TensorBoard, CSVLogger, EarlyStopping,
    ModelCheckpoint) in the `callbacks` list. On skipped epochs nothing is logged,
    so these History lists are shorter than the others when ``every > 1``; the
    callback also keeps every result in ``self.results`` (``{epoch: {...}}``).

    Args:
        x: evaluation inputs (array, finite batched tf.data.Dataset of (x, y), or
            iterable of batches; see `embed`). Use test classes disjoint from the
            training classes for the open-set protocol.
        y: labels when `x` is an array; None when `x` yields (x, y) batches.
        ks: the K values of Recall@K.
        every: evaluate every `every` epochs (>= 1).
        nmi: log NMI (K-means + geometric NMI).
        map_at_r: log MAP@R.
        prefix: prefix of the log keys.
        batch_size: inference batch size for array inputs.
        metric: "euclidean", "cosine" or "inner_product".
        embedding_model: model producing the embeddings, when it is not the trained
            model itself (e.g. a sub-model sharing its layers). Default: the model.
        seed: K-means seed for NMI.
        verbose: 1 prints a progress bar while embedding, 0 is silent.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.random.rand(20, 4), np.arange(20) % 2
    >>> cb = RetrievalEvaluation(x, y, ks=(1,), nmi=False, map_at_r=False)
    >>> h = model.fit(x, np.zeros((20, 2)), epochs=1, callbacks=[cb], verbose=0)
    >>> "val_recall@1" in h.history
    True
    """

    def __init__(
        self,
        x,
        y=None,
        ks=(1, 2, 4, 8),
        every=1,
        nmi=True,
        map_at_r=True,
        prefix="val_",
        batch_size=256,
        metric="euclidean",
        embedding_model=None,
        seed=0,
        verbose=0,
    ):
        super().__init__()
        check_choice("metric", metric, _METRICS)
        self.every = _check_positive_int("every", every)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        if y is None:
            self.data = x
        elif _is_tf_dataset(x) or not hasattr(keras.tree.flatten(x)[0], "__len__"):
            raise ValueError(
                "`y` must be None when `x` is a dataset or an iterable yielding (x, y) "
                f"batches. Received x of type {type(x).__name__} and y."
            )
        else:
            n = len(keras.tree.flatten(x)[0])
            y = _check_labels(y, n, name="y")
            self.data = (x, y)
        self.ks = ks if isinstance(ks, numbers.Integral) else tuple(ks)
        _check_ks(self.ks, 2**62)  # type/positivity checks now; k < n at first use
        self.compute_nmi = bool(nmi)
        self.compute_map_at_r = bool(map_at_r)
        self.prefix = str(prefix)
        self.metric = metric
        self.embedding_model = embedding_model
        self.seed = seed
        self.verbose = verbose
        self.results = {}

    def _due(self, epoch):
        last = self.params.get("epochs") if self.params else None
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def evaluate(self):
        """Embeds the evaluation data and returns the metrics dict (with prefix)."""
        model = self.embedding_model if self.embedding_model is not None else self.model
        out = embed(model, self.data, batch_size=self.batch_size, verbose=self.verbose)
        if not isinstance(out, tuple):
            raise ValueError(
                "RetrievalEvaluation needs labels: pass `y`, or data that yields "
                "(x, y) batches."
            )
        embeddings, labels = out
        return evaluate_retrieval(
            embeddings,
            labels,
            ks=self.ks,
            nmi=self.compute_nmi,
            map_at_r=self.compute_map_at_r,
            metric=self.metric,
            seed=self.seed,
            prefix=self.prefix,
        )

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        results = self.evaluate()
        self.results[epoch] = results
        if logs is not None:
            logs.update(results)
