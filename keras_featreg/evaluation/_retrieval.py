"""Recall@K, precision@1, MAP@R and R-precision (conventions: see the package).

Leave-one-out (one set, every sample a query against the others): over the tiled
distance matrix of `_tiling`, ties pessimistic. Query and reference sets: over
`keras_featreg.search.Index` results (`_reference`), ties by reference position.
"""

import numpy as np

from keras_featreg._host import num_threads_of
from keras_featreg.evaluation._checks import _check_chunk_size, check_ks
from keras_featreg.evaluation._reference import ReferenceSearch, wants_reference
from keras_featreg.evaluation._tiling import _Prepared, _run_blocks, _tiles

_MAP_ELEMENTS = 2**25  # rows × n of one MAP@R chunk: 128 MiB in float32.


# --------------------------------------------------------------------------- #
# Recall@K
# --------------------------------------------------------------------------- #
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
    *,
    reference_embeddings=None,
    reference_labels=None,
    reference_includes_query=False,
    index=None,
):
    """Recall@K: the fraction of queries with a same-label sample among their K nearest.

    Recall@K = (1/|Q|) Σ_q [rel_q(1) + ... + rel_q(K) >= 1], rel_q(i) = 1 when the i-th
    nearest neighbour of query q shares its label.

    Leave-one-out form (no reference arguments): every sample is a query against all the
    others (itself excluded). A query whose label occurs only once can never hit and
    counts as a miss.

    Query/reference form (`reference_embeddings` and `reference_labels`, or `index`):
    the `embeddings` are queries searched in a separate reference set (as In-Shop and
    pytorch-metric-learning's ``AccuracyCalculator``), through
    :class:`keras_featreg.search.Index`, ``chunk_size`` queries at a time. As in PML,
    "lone" queries, those with no same-label reference item (besides themselves), are
    left out of Q. Ties are broken by reference position (the Index's order), not
    pessimistically.

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
        ks: an int or an iterable of ints, each in [1, n - 1] (query/reference form:
            [1, m], or [1, m - 1] with `reference_includes_query`).
        chunk_size: edge of the square distance blocks (>= 1); query/reference form:
            queries per search. Results do not depend on it (up to floating-point ties).
        metric: a :mod:`keras_featreg.distances` name or object (default "euclidean"): "euclidean"/"squared_euclidean" rank by Euclidean distance, "cosine"/"cosine_similarity" by cosine, "dot_product" by inner product.
        num_threads: worker threads (default: number of CPUs, at most 8).
        reference_embeddings: None (leave-one-out) or array-like (m, d): the reference
            (gallery) set; an exact :class:`~keras_featreg.search.Index` of `metric` is
            built from it.
        reference_labels: array-like (m,) of class ids, with `reference_embeddings`.
        reference_includes_query: query i IS reference row i (``embeddings`` and
            ``labels`` are the first rows of the reference set, so n <= m); that row is
            left out of query i's neighbours and out of its R.
        index: a prebuilt :class:`~keras_featreg.search.Index` holding the reference set
            with labels (e.g. faiss IVF or HNSW for a large gallery), instead of
            `reference_embeddings` / `reference_labels`; `metric` must be its metric.

    Returns:
        A dict ``{k: recall}`` with Python floats in [0, 1], ordered by k.

    Example:
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2]])
    >>> recall_at_k(x, [0, 0, 1, 1], ks=(1, 2))
    {1: 1.0, 2: 1.0}
    >>> recall_at_k(x, [0, 1, 0, 1], ks=1)
    {1: 0.0}
    >>> recall_at_k(np.array([[0.05], [0.9]]), [0, 0], ks=(1, 3),
    ...             reference_embeddings=x, reference_labels=[0, 0, 1, 1])
    {1: 0.5, 3: 1.0}
    """
    chunk_size = _check_chunk_size(chunk_size)
    num_threads = num_threads_of(num_threads)
    if wants_reference(reference_embeddings, reference_labels, reference_includes_query, index):
        search = ReferenceSearch(embeddings, labels, reference_embeddings, reference_labels,
                                 reference_includes_query, index, metric, num_threads)
        ks = search.check_ks(ks)
        ranks = search.scores(max(ks), False, chunk_size)[0][search.not_lone]
        return {k: float(np.mean(ranks <= k)) for k in ks}
    prep = _Prepared(embeddings, labels, metric)
    ks = check_ks(ks, prep.n)
    negatives, has_positive = _negatives_before_positive(prep, chunk_size, num_threads)
    return {k: float(np.mean((negatives < k) & has_positive)) for k in ks}


def _negatives_before_positive(prep, chunk_size, num_threads):
    """Per (label-sorted) sample: the different-label samples at most as far as its
    nearest same-label one, and whether it has a same-label one at all."""
    tiles = _tiles(prep, chunk_size)
    thresholds, negatives = _within_segments(prep, tiles, num_threads)
    negatives += _across_segments(prep, tiles, thresholds, num_threads)
    return negatives, np.isfinite(thresholds)


def _require_repeated_label(prep, what):
    if np.all(prep.class_counts == 1):
        raise ValueError(
            f"{what} needs at least one label that occurs twice; every label in "
            f"`labels` is unique ({prep.n} samples)."
        )


def precision_at_1(
    embeddings,
    labels,
    chunk_size=2048,
    metric="euclidean",
    num_threads=None,
    *,
    reference_embeddings=None,
    reference_labels=None,
    reference_includes_query=False,
    index=None,
):
    """Precision@1 (PML's ``precision_at_1``): the fraction of queries whose nearest
    neighbour shares their label, over the queries that have a same-label item.

    precision@1 = (1/|Q'|) Σ_{q in Q'} rel_q(1), Q' = the queries with R >= 1 (R: the
    same-label items a query can retrieve, itself excluded). Unlike `recall_at_k`'s
    leave-one-out form, which counts a query whose label occurs once as a miss, such
    "lone" queries are left out here, as in pytorch-metric-learning; on the query and
    reference form this equals ``recall_at_k(..., ks=1)[1]``.

    Args:
        embeddings: array-like (n, d) of floats: the queries (and, in the leave-one-out
            form, the gallery).
        labels: array-like (n,) of class ids; at least one query must have a same-label
            item.
        chunk_size, metric, num_threads: as in `recall_at_k`.
        reference_embeddings, reference_labels, reference_includes_query, index: the
            query/reference form, as in `recall_at_k`.

    Returns:
        A Python float in [0, 1].

    Example:
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2], [5.0]])
    >>> precision_at_1(x, [0, 0, 1, 0, 2])  # queries 2, 4 are lone; 3 misses
    0.6666666666666666
    >>> precision_at_1(np.array([[0.2], [1.05]]), [0, 1], reference_embeddings=x,
    ...                reference_labels=[0, 0, 1, 0, 2])
    1.0
    """
    chunk_size = _check_chunk_size(chunk_size)
    num_threads = num_threads_of(num_threads)
    if wants_reference(reference_embeddings, reference_labels, reference_includes_query, index):
        search = ReferenceSearch(embeddings, labels, reference_embeddings, reference_labels,
                                 reference_includes_query, index, metric, num_threads)
        search.check_ks(1)
        return float(np.mean(search.scores(1, False, chunk_size)[0][search.not_lone] == 1))
    prep = _Prepared(embeddings, labels, metric)
    _require_repeated_label(prep, "precision@1")
    negatives, has_positive = _negatives_before_positive(prep, chunk_size, num_threads)
    return float(np.mean(negatives[has_positive] == 0))


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


def _scores_at_r(positives, candidates):
    """AP@R and R-precision per row from the R smallest positive and the candidate
    negative distances."""
    r = positives.shape[1]
    merged = np.concatenate([candidates, positives], axis=1)
    is_pos = np.zeros(merged.shape, dtype=bool)
    is_pos[:, candidates.shape[1]:] = True
    # Stable sort with negatives first: at equal distance the negative ranks first.
    order = np.argsort(merged, axis=1, kind="stable")[:, :r]
    hits = np.take_along_axis(is_pos, order, axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, r + 1)
    return (precision * hits).sum(axis=1) / r, hits.sum(axis=1) / r


def _rows_at_r(prep, rows_start, rows_stop):
    """AP@R and R-precision of the (sorted) queries in [rows_start, rows_stop); NaN
    where R = 0."""
    d = prep.block(slice(rows_start, rows_stop), slice(None))
    ap = np.full(rows_stop - rows_start, np.nan)
    rp = np.full(rows_stop - rows_start, np.nan)
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
        ap[lo:hi], rp[lo:hi] = _scores_at_r(positives, candidates)
    return ap, rp


def _scores_at_r_per_query(embeddings, labels, chunk_size, metric, num_threads,
                           reference_embeddings, reference_labels,
                           reference_includes_query, index, what):
    """MAP@R, R-precision and the AP@R and R-precision of every query, in input order
    (NaN where R = 0), in either form."""
    chunk_size = _check_chunk_size(chunk_size)
    num_threads = num_threads_of(num_threads)
    if wants_reference(reference_embeddings, reference_labels, reference_includes_query, index):
        search = ReferenceSearch(embeddings, labels, reference_embeddings, reference_labels,
                                 reference_includes_query, index, metric, num_threads)
        _, ap, rp = search.scores(int(search.relevant.max()), True, chunk_size)
        return float(np.nanmean(ap)), float(np.nanmean(rp)), ap, rp
    prep = _Prepared(embeddings, labels, metric)
    _require_repeated_label(prep, what)
    rows = max(1, min(chunk_size, _MAP_ELEMENTS // prep.n))
    parts = [_rows_at_r(prep, s, min(s + rows, prep.n)) for s in range(0, prep.n, rows)]
    ap = np.concatenate([ap for ap, _ in parts])  # label-sorted order
    rp = np.concatenate([rp for _, rp in parts])
    return (float(np.nanmean(ap)), float(np.nanmean(rp)), prep.unsort(ap),
            prep.unsort(rp))


def map_at_r(
    embeddings,
    labels,
    chunk_size=2048,
    metric="euclidean",
    return_per_query=False,
    *,
    num_threads=None,
    reference_embeddings=None,
    reference_labels=None,
    reference_includes_query=False,
    index=None,
):
    """MAP@R (Musgrave et al., 2020, "A Metric Learning Reality Check").

    For a query with R other samples of its label, AP@R = (1/R) Σ_{i=1..R} P(i)·rel(i)
    over its R nearest neighbours (itself excluded), where rel(i) says whether the
    i-th neighbour shares the label and P(i) is the precision among the first i.
    MAP@R averages AP@R over the queries; queries whose label occurs once (R = 0)
    are left out. Ties are pessimistic (a different-label sample at the same
    distance ranks first).

    Query/reference form (the reference arguments, as in `recall_at_k`): R is the number
    of reference items with the query's label (minus one, the query itself, with
    `reference_includes_query`); queries with R = 0 are left out (as in PML's
    ``mean_average_precision_at_r``); neighbours are the ``max R`` nearest of an
    :class:`~keras_featreg.search.Index` search, ties broken by reference position.

    Rows are processed in chunks of at most `chunk_size` queries (fewer when n is
    large, so that one chunk of distances stays under 128 MiB). Only the R nearest
    same-label distances and the different-label distances below the R-th of them are
    sorted, so good embeddings are cheap; poor ones cost up to a partial sort of
    every row.

    Args:
        embeddings: array-like (n, d) of floats.
        labels: array-like (n,) of class ids; at least one label must occur twice.
        chunk_size: maximum number of queries per chunk (>= 1).
        metric: a :mod:`keras_featreg.distances` name or object (default "euclidean"): "euclidean"/"squared_euclidean" rank by Euclidean distance, "cosine"/"cosine_similarity" by cosine, "dot_product" by inner product.
        return_per_query: also return the AP@R of every query (NaN where R = 0), in
            input order.
        num_threads: threads of the exact search (query/reference form; the
            leave-one-out form runs in one thread).
        reference_embeddings, reference_labels, reference_includes_query, index: the
            query/reference form, as in `recall_at_k`.

    Returns:
        MAP@R as a Python float in [0, 1] (and the per-query array when asked).

    Example:
    >>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1]])
    >>> map_at_r(x, [0, 0, 0, 1, 1])
    1.0
    >>> round(map_at_r(x, [0, 0, 1, 0, 1]), 4)
    0.2
    >>> map_at_r(x, [0, 0, 0, 1, 1], reference_embeddings=x,
    ...          reference_labels=[0, 0, 0, 1, 1], reference_includes_query=True)
    1.0
    """
    value, _, ap, _ = _scores_at_r_per_query(
        embeddings, labels, chunk_size, metric, num_threads, reference_embeddings,
        reference_labels, reference_includes_query, index, "MAP@R")
    if return_per_query:
        return value, ap
    return value


def r_precision(
    embeddings,
    labels,
    chunk_size=2048,
    metric="euclidean",
    return_per_query=False,
    *,
    num_threads=None,
    reference_embeddings=None,
    reference_labels=None,
    reference_includes_query=False,
    index=None,
):
    """R-precision (PML's ``r_precision``): the fraction of same-label items among a
    query's R nearest neighbours, averaged over the queries.

    R-precision_q = (1/R) Σ_{i=1..R} rel(i), R the number of items the query can
    retrieve with its label (itself excluded); queries with R = 0 are left out. The
    neighbours, ties and both forms are those of `map_at_r` (pessimistic ties in the
    leave-one-out form, reference position in the query/reference form).

    Args:
        embeddings: array-like (n, d) of floats (the queries).
        labels: array-like (n,) of class ids; at least one query must have R >= 1.
        chunk_size, metric, return_per_query, num_threads: as in `map_at_r`.
        reference_embeddings, reference_labels, reference_includes_query, index: the
            query/reference form, as in `recall_at_k`.

    Returns:
        R-precision as a Python float in [0, 1] (and the per-query array, NaN where
        R = 0, when asked).

    Example:
    >>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1]])
    >>> round(r_precision(x, [0, 0, 1, 0, 1]), 4)  # q0: 1/2, q1: 1/2, others 0
    0.2
    >>> r_precision(np.array([[0.12]]), [0], reference_embeddings=x,
    ...             reference_labels=[0, 0, 1, 0, 1])  # R = 3: 0.1, 0.2 (miss), 0.0
    0.6666666666666666
    """
    _, value, _, rp = _scores_at_r_per_query(
        embeddings, labels, chunk_size, metric, num_threads, reference_embeddings,
        reference_labels, reference_includes_query, index, "R-precision")
    if return_per_query:
        return value, rp
    return value
