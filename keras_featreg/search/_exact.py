"""Exact k-nearest-neighbour search in NumPy, in bounded memory.

The distances are the blocks of :class:`keras_featreg._host.Factored` (the algorithm of
the evaluation and of :func:`keras_featreg.ops.pairwise.squared_euclidean_matrix`), computed
``query_chunk × reference_chunk`` at a time; a running top-k per query is merged with the
entries of each block that can still enter it (``<=`` the query's current k-th value), so
memory is ``O(query_chunk × reference_chunk)`` however large the gallery, and after the
first blocks only a few entries per block are merged. The order is deterministic: by
distance, then by position in the gallery (the earlier added item first).
"""

import numpy as np

from keras_featreg._host import run_blocks

_BLOCK_ELEMENTS = 2**23  # entries of one distance block: 32 MiB in float32


_GROUP = 64  # columns per group: candidates are found among group minima first


def _candidates(d, limit, slack):
    """(rows, cols) of the entries of `d` that may be <= `limit` per row once within
    `slack` per row (the rounding bound), found through the minima of 64-column groups
    (a reduction) so that only groups holding a candidate are compared entry by entry."""
    width = d.shape[1]
    starts = np.arange(0, width, _GROUP)
    group_min = np.minimum.reduceat(d, starts, axis=1)
    g_rows, g_cols = np.nonzero(group_min <= (limit + slack)[:, None])
    if g_rows.size == 0:
        return g_rows, g_cols
    cols = starts[g_cols][:, None] + np.arange(_GROUP)[None, :]
    valid = cols < width
    cols = np.minimum(cols, width - 1)
    rows = np.broadcast_to(g_rows[:, None], cols.shape)
    keep = valid & (d[rows, cols] <= (limit + slack)[g_rows, None])
    return rows[keep], cols[keep]


def _merge(best_d, best_i, rows, cols, values, offset, k):
    """Merges candidate entries (rows sorted, values already exact) into the sorted
    running top-k (`best_d`, `best_i`), in place; ties by smaller index."""
    if rows.size == 0:
        return
    active, starts, per_row = np.unique(rows, return_index=True, return_counts=True)
    width = int(per_row.max())
    slot = np.arange(rows.size) - np.repeat(starts, per_row)
    position = np.searchsorted(active, rows)
    cand_d = np.full((active.size, width), np.inf, best_d.dtype)
    cand_i = np.full((active.size, width), np.iinfo(np.int64).max, np.int64)
    cand_d[position, slot] = values
    cand_i[position, slot] = cols + offset
    all_d = np.concatenate([best_d[active], cand_d], axis=1)
    all_i = np.concatenate([best_i[active], cand_i], axis=1)
    if all_d.shape[1] > 4 * k and all_d.shape[1] > 64:
        # Many candidates: keep each row's k smallest and every entry tied with them.
        kth = np.partition(all_d, k - 1, axis=1)[:, k - 1]
        tie_or_less = all_d <= kth[:, None]
        count = tie_or_less.sum(axis=1)
        order = np.argsort(~tie_or_less, axis=1, kind="stable")[:, :int(count.max())]
        all_d = np.take_along_axis(all_d, order, 1)
        all_i = np.take_along_axis(all_i, order, 1)
        all_d[np.arange(all_d.shape[1])[None, :] >= count[:, None]] = np.inf
    order = np.lexsort((all_i, all_d), axis=1)[:, :k]
    best_d[active] = np.take_along_axis(all_d, order, axis=1)
    best_i[active] = np.take_along_axis(all_i, order, axis=1)


def _block_topk(queries, references, q_slice, cols, left, best_d, best_i, k, skip):
    """One block: raw expansion values, candidates, their exact values, merge."""
    d = left @ references.right(cols).T
    if skip is not None:
        inside = (skip >= cols.start) & (skip < cols.stop)
        d[np.flatnonzero(inside), skip[inside] - cols.start] = np.inf
    limit = best_d[:, -1]
    if not np.isfinite(limit).all() and d.shape[1] >= k:
        # The running top-k is not full yet (first block): the block's own k-th.
        limit = np.minimum(limit, np.partition(d, k - 1, axis=1)[:, k - 1])
    if queries.sq is None:  # dot product: no rounding bound to apply
        slack = np.zeros_like(limit)
        rows, c = _candidates(d, limit, slack)
        values = d[rows, c]
    else:
        sq_q, sq_r = queries.sq[q_slice], references.sq[cols]
        slack = queries.coefficient * (sq_q + sq_r.max(initial=0)) * 2
        rows, c = _candidates(d, limit, slack)
        values = d[rows, c]
        values[values <= queries.coefficient * (sq_q[rows] + sq_r[c])] = 0.0
        exact = values <= np.maximum(limit[rows], 0)
        rows, c, values = rows[exact], c[exact], values[exact]
    _merge(best_d, best_i, rows, c, values, cols.start, k)


def _chunk_sizes(num_queries, num_refs, query_chunk, reference_chunk, num_threads):
    """Block edges: ~32 MiB blocks, and at least one query chunk per thread."""
    if reference_chunk is None:
        reference_chunk = max(1024, min(num_refs, 16384))
    if query_chunk is None:
        per_thread = -(-num_queries // num_threads)
        query_chunk = max(1, min(per_thread, _BLOCK_ELEMENTS // reference_chunk))
    return query_chunk, reference_chunk


def knn(queries, references, k, query_chunk=None, reference_chunk=None, num_threads=1,
        exclude=None):
    """The `k` nearest references of every query, sorted (ranking values, indices).

    Args:
        queries: a :class:`~keras_featreg._host.Factored` of the queries.
        references: a :class:`~keras_featreg._host.Factored` of the gallery, with the
            queries' shift.
        k: neighbours per query, in [1, len(references)].
        query_chunk, reference_chunk: block edges (None: ~32 MiB blocks).
        num_threads: query chunks run in this many threads.
        exclude: None or an int array (num_queries,) of gallery positions to leave out,
            one per query (-1: none); `k` must then be < len(references).

    Returns:
        ``(values, indices)``: (num_queries, k) ranking values (the metric's
        :func:`~keras_featreg._host.to_distance` gives distances) and int64 positions.
    """
    nq, nr = len(queries), len(references)
    qc, rc = _chunk_sizes(nq, nr, query_chunk, reference_chunk, num_threads)
    values = np.empty((nq, k), queries.dtype)
    indices = np.empty((nq, k), np.int64)
    ref_blocks = [slice(s, min(s + rc, nr)) for s in range(0, nr, rc)]

    def work(q_slice):
        left = queries.left(q_slice)
        m = left.shape[0]
        best_d = np.full((m, k), np.inf, queries.dtype)
        best_i = np.full((m, k), np.iinfo(np.int64).max, np.int64)
        skip = None if exclude is None else exclude[q_slice]
        for cols in ref_blocks:
            _block_topk(queries, references, q_slice, cols, left, best_d, best_i, k, skip)
        return q_slice, best_d, best_i

    q_slices = [slice(s, min(s + qc, nq)) for s in range(0, nq, qc)]
    for q_slice, d, i in run_blocks(work, q_slices, num_threads):
        values[q_slice] = d
        indices[q_slice] = i
    return values, indices
