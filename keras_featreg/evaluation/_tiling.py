"""The label-sorted, factored distance matrix and its tiling into blocks.

`recall_at_k` and `map_at_r` compute the distances block by block from `_Prepared`
(embeddings sorted by label, two factors whose product is the distance matrix);
`_segments` / `_tiles` cut the sorted samples into blocks that keep same-label pairs
together, and `_run_blocks` runs the block products in threads.
"""

import numpy as np

from keras_featreg._host import (  # noqa: F401  (_run_blocks: the blocks' one runner)
    Factored,
    check_embeddings,
    check_label_array,
    ranking_of,
    run_blocks as _run_blocks,
)


# --------------------------------------------------------------------------- #
# Shared preparation: sort by label, build the two factors of the distance matrix
# --------------------------------------------------------------------------- #
class _Prepared:
    """Embeddings sorted by label and factored (:class:`keras_featreg._host.Factored`, the
    algorithm :mod:`keras_featreg.search` uses too) so that ``left[i] @ right[j] = D[i, j]``.

    ``D`` is symmetric and ranks neighbours like the chosen metric (squared
    Euclidean distance, or negated cosine / inner product similarity).
    """

    def __init__(self, embeddings, labels, metric):
        metric = ranking_of(metric)
        x = check_embeddings(embeddings)
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
        self.factored = Factored(x, metric)

    def block(self, rows, cols):
        """The (rows × cols) block of D."""
        return self.factored.block(self.factored, rows, cols)

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


def _tiles(prep, size):
    """Segments cut into tiles of at most `size` rows: one list of slices per segment.

    A segment is either several whole small classes (one tile) or one class larger
    than `size` (several tiles). All same-label pairs lie inside a segment.
    """
    return [
        [slice(a, min(a + size, stop)) for a in range(start, stop, size)]
        for start, stop in _segments(prep, size)
    ]
