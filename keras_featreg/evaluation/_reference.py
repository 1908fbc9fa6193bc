"""Retrieval metrics of queries against a separate reference set (PML's AccuracyCalculator).

The neighbours come from :class:`keras_featreg.search.Index` (an exact one built from the
reference set, or the prebuilt index passed as ``index=``); the metrics are pure functions
of its :class:`~keras_featreg.search.SearchResult`, computed a bounded number of queries
at a time.
"""

import numpy as np

from keras_featreg._host import check_embeddings, check_label_array, ranking_of
from keras_featreg._utils import check_bool
from keras_featreg.evaluation._checks import check_reference_ks
from keras_featreg.search import Index

_RESULT_ELEMENTS = 2**22  # queries × k of one search call (4 such int64/float arrays)


def wants_reference(reference_embeddings, reference_labels, reference_includes_query, index):
    """Whether the query/reference form is asked for (any of its arguments given)."""
    check_bool("reference_includes_query", reference_includes_query)
    return not (reference_embeddings is None and reference_labels is None and index is None
                and not reference_includes_query)


# --------------------------------------------------------------------------- #
# Pure functions of one search result
# --------------------------------------------------------------------------- #
def neighbour_hits(result, labels):
    """(m, k) bool: whether each neighbour shares its query's label. A missing neighbour
    (position -1, from an approximate faiss index that found fewer than k) never does."""
    return (result.labels == labels[:, None]) & (result.indices >= 0)


def first_hit_rank(hits):
    """1-based rank of each query's first same-label neighbour; k + 1 when none."""
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, hits.shape[1] + 1)


def scores_at_r(hits, relevant):
    """AP@R and R-precision of each query from its hits and its R (NaN where R = 0).

    AP@R = (1/R) Σ_{i<=R} P(i) rel(i) and R-precision = (1/R) Σ_{i<=R} rel(i), with P(i)
    the fraction of same-label items among the first i neighbours.
    """
    rank = np.arange(1, hits.shape[1] + 1)
    hits = hits & (rank[None, :] <= relevant[:, None])
    precision = np.cumsum(hits, axis=1) / rank
    r = np.where(relevant > 0, relevant, np.nan)
    return (precision * hits).sum(axis=1) / r, hits.sum(axis=1) / r


# --------------------------------------------------------------------------- #
# The checked query set and its reference index
# --------------------------------------------------------------------------- #
class ReferenceSearch:
    """Queries, their labels, the reference :class:`Index`, the ids each query excludes
    and ``relevant`` (R: same-label reference items per query, the query itself not
    counted), checked; :meth:`scores` searches them.

    Args: those of :func:`keras_featreg.evaluation.recall_at_k`.
    """

    def __init__(self, embeddings, labels, reference_embeddings, reference_labels,
                 reference_includes_query, index, metric, num_threads):
        self.includes_query = check_bool("reference_includes_query", reference_includes_query)
        metric = ranking_of(metric)
        if index is not None:
            _check_index(index, reference_embeddings, reference_labels, metric)
        elif reference_embeddings is None or reference_labels is None:
            raise ValueError(
                "`reference_embeddings` and `reference_labels` must be given together "
                "(or neither, with `index` or for the leave-one-out form without "
                "reference_includes_query). Received: reference_embeddings="
                f"{_given(reference_embeddings)}, reference_labels={_given(reference_labels)}, "
                f"reference_includes_query={reference_includes_query}"
            )
        dim = None if index is None else index.dim
        self.queries = check_embeddings(embeddings, min_rows=1, dim=dim)
        self.labels = check_label_array(labels, len(self.queries)).astype(np.int64)
        if index is None:
            reference = check_embeddings(reference_embeddings, name="reference_embeddings",
                                         min_rows=1, dim=self.queries.shape[1])
            reference_labels = check_label_array(reference_labels, len(reference),
                                                 name="reference_labels",
                                                 of="reference_embeddings")
            index = Index(metric=metric, num_threads=num_threads)
            index.add(reference, labels=reference_labels)
        self.index = index
        self.exclude = self._check_includes_query() if self.includes_query else None
        values, counts = np.unique(index.labels, return_counts=True)
        where = np.minimum(np.searchsorted(values, self.labels), len(values) - 1)
        found = values[where] == self.labels
        self.relevant = np.where(found, counts[where], 0) - int(self.includes_query)
        if not np.any(self.relevant > 0):
            raise ValueError(
                "No query has a same-label item in the reference set"
                f"{' besides itself' if self.includes_query else ''}: every metric leaves "
                "such 'lone' queries out. Received: labels of the queries "
                f"{np.unique(self.labels)[:5].tolist()}..., reference labels "
                f"{values[:5].tolist()}..."
            )

    def _check_includes_query(self):
        """Ids of the reference rows that are the queries (query i is reference row i)."""
        m, n = len(self.queries), len(self.index)
        if m > n:
            raise ValueError(
                "With reference_includes_query=True, query i is reference row i, so "
                "`embeddings` must not have more rows than the reference set. Received: "
                f"len(embeddings)={m}, len(reference set)={n}"
            )
        same = (np.array_equal(self.index.embeddings[:m], self.queries.astype(self.index.dtype))
                and np.array_equal(self.index.labels[:m], self.labels))
        if not same:
            raise ValueError(
                "With reference_includes_query=True, `embeddings` and `labels` must be the "
                "first len(embeddings) rows of the reference set (query i is reference row "
                f"i). Received: rows that differ, len(embeddings)={m}"
            )
        return self.index.ids[:m]

    @property
    def num_neighbours(self):
        """Reference items a query can have as neighbours."""
        return len(self.index) - int(self.includes_query)

    @property
    def not_lone(self):
        """Queries with at least one same-label reference item (the ones every metric
        averages over)."""
        return self.relevant > 0

    def check_ks(self, ks):
        return check_reference_ks(ks, self.num_neighbours, self.includes_query)

    def scores(self, k, at_r, chunk_size):
        """Per query: the rank of its first hit among its `k` nearest (k + 1 when none)
        and, when `at_r`, its AP@R and R-precision (NaN for lone queries; `k` must then be
        >= max R). Queries are searched `chunk_size` at a time (fewer when k is large)."""
        rows = max(1, min(chunk_size, _RESULT_ELEMENTS // k))
        ranks, ap, rp = [], [], []
        for start in range(0, len(self.queries), rows):
            part = slice(start, start + rows)
            exclude = None if self.exclude is None else self.exclude[part]
            result = self.index.search(self.queries[part], k, exclude_ids=exclude)
            hits = neighbour_hits(result, self.labels[part])
            ranks.append(first_hit_rank(hits))
            if at_r:
                scores = scores_at_r(hits, self.relevant[part])
                ap.append(scores[0])
                rp.append(scores[1])
        if not at_r:
            return np.concatenate(ranks), None, None
        return np.concatenate(ranks), np.concatenate(ap), np.concatenate(rp)


def _given(value):
    return "None" if value is None else "an array"


def _check_index(index, reference_embeddings, reference_labels, metric):
    if reference_embeddings is not None or reference_labels is not None:
        raise ValueError(
            "`index` holds the reference set: `reference_embeddings` and "
            "`reference_labels` must then be None. Received: index=an Index, "
            f"reference_embeddings={_given(reference_embeddings)}, "
            f"reference_labels={_given(reference_labels)}"
        )
    if not isinstance(index, Index):
        raise ValueError(
            "`index` must be a keras_featreg.search.Index holding the reference set. "
            f"Received: index of type {type(index).__name__}"
        )
    if len(index) == 0 or index.labels is None:
        raise ValueError(
            "`index` must hold the reference set with its labels (Index.add(embeddings, "
            f"labels=...)). Received: an index of {len(index)} items "
            f"{'without labels' if len(index) else ''}".rstrip()
        )
    if index.metric != metric:
        raise ValueError(
            f"`metric` must be the metric of `index` ({index.metric!r}). Received: "
            f"metric={metric!r}"
        )
