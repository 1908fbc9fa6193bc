"""The label-sorted, factored distance matrix and its tiling into blocks.

`recall_at_k` and `map_at_r` compute the distances block by block from `_Prepared`
(embeddings sorted by label, two factors whose product is the distance matrix);
`_segments` / `_tiles` cut the sorted samples into blocks that keep same-label pairs
together, and `_run_blocks` runs the block products in threads.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_featreg.evaluation._checks import (
    _check_embeddings,
    check_label_array,
    ranking_of,
)
from keras_featreg.ops.pairwise import expansion_error_coefficient


# --------------------------------------------------------------------------- #
# Shared preparation: sort by label, build the two factors of the distance matrix
# --------------------------------------------------------------------------- #
class _Prepared:
    """Embeddings sorted by label and factored so that ``left[i] @ right[j] = D[i, j]``.

    ``D`` is symmetric and ranks neighbours like the chosen metric (squared
    Euclidean distance, or negated cosine / inner product similarity).
    """

    def __init__(self, embeddings, labels, metric):
        metric = ranking_of(metric)
        x = _check_embeddings(embeddings)
        labels = check_label_array(labels, x.shape[0])
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
                # keras_featreg.ops.pairwise.pairwise_distances.
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                zero_rows = (norms[:, 0] == 0).astype(x.dtype)
                x = x / np.where(norms > 0, norms, 1).astype(x.dtype)
            # The algorithm of keras_featreg.ops.pairwise.squared_euclidean_matrix: centre
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


def _tiles(prep, size):
    """Segments cut into tiles of at most `size` rows: one list of slices per segment.

    A segment is either several whole small classes (one tile) or one class larger
    than `size` (several tiles). All same-label pairs lie inside a segment.
    """
    return [
        [slice(a, min(a + size, stop)) for a in range(start, stop, size)]
        for start, stop in _segments(prep, size)
    ]
