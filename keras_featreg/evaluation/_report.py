"""`evaluate_retrieval`: Recall@K, NMI, MAP@R and R-precision in one Keras-log style dict."""

import numpy as np

from keras_featreg._host import num_threads_of
from keras_featreg.evaluation._checks import _check_chunk_size
from keras_featreg.evaluation._clustering import nmi
from keras_featreg.evaluation._reference import ReferenceSearch, wants_reference
from keras_featreg.evaluation._retrieval import map_at_r, r_precision, recall_at_k


# --------------------------------------------------------------------------- #
# All metrics at once
# --------------------------------------------------------------------------- #
_nmi_score = nmi  # the arguments of evaluate_retrieval shadow these names
_map_at_r_score = map_at_r
_r_precision_score = r_precision


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
    *,
    r_precision=False,
    num_threads=None,
    reference_embeddings=None,
    reference_labels=None,
    reference_includes_query=False,
    index=None,
):
    """Recall@K (and optionally NMI, MAP@R, R-precision) in one dict with Keras-log keys.

    With a reference set (`reference_embeddings` and `reference_labels`, or `index`) the
    `embeddings` are queries searched in it, once, for ``max(max(ks), max R)``
    neighbours, and every retrieval metric is computed from that one search (see
    `recall_at_k` for the query/reference conventions); NMI clusters the queries.

    Args:
        embeddings: array-like (n, d).
        labels: array-like (n,).
        ks: the K values of Recall@K.
        nmi: also compute NMI (geometric averaging, see `nmi`).
        map_at_r: also compute MAP@R.
        metric: a :mod:`keras_featreg.distances` name or object ("euclidean", "cosine", "dot_product", ...) (Recall@K and MAP@R; NMI
            always clusters the embeddings as given).
        seed: K-means seed for NMI.
        chunk_size: block size of the chunked computations.
        prefix: prepended to every key (e.g. "val_").
        r_precision: also compute R-precision (key ``r_precision``).
        num_threads: threads of Recall@K and of the exact search (default: the CPUs, at
            most 8).
        reference_embeddings, reference_labels, reference_includes_query, index: the
            query/reference form, as in `recall_at_k`.

    Returns:
        ``{f"{prefix}recall@{k}": ..., f"{prefix}nmi": ..., f"{prefix}map@r": ...,
        f"{prefix}r_precision": ...}`` (the keys asked for).

    Example:
    >>> x = np.array([[0.0], [0.1], [1.0], [1.2]])
    >>> evaluate_retrieval(x, [0, 0, 1, 1], ks=(1,), nmi=False, map_at_r=False)
    {'recall@1': 1.0}
    >>> evaluate_retrieval(np.array([[0.05], [1.1]]), [0, 1], ks=(1,), nmi=False,
    ...                    r_precision=True, reference_embeddings=x,
    ...                    reference_labels=[0, 0, 1, 1])
    {'recall@1': 1.0, 'map@r': 1.0, 'r_precision': 1.0}
    """
    if wants_reference(reference_embeddings, reference_labels, reference_includes_query, index):
        return _evaluate_reference(
            ReferenceSearch(embeddings, labels, reference_embeddings, reference_labels,
                            reference_includes_query, index, metric,
                            num_threads_of(num_threads)),
            ks, nmi, map_at_r, r_precision, seed, _check_chunk_size(chunk_size), prefix)
    recalls = recall_at_k(embeddings, labels, ks=ks, chunk_size=chunk_size, metric=metric,
                          num_threads=num_threads)
    results = {f"{prefix}recall@{k}": v for k, v in recalls.items()}
    if nmi:
        results[f"{prefix}nmi"] = _nmi_score(embeddings, labels, seed=seed)
    if map_at_r:
        results[f"{prefix}map@r"] = _map_at_r_score(
            embeddings, labels, chunk_size=chunk_size, metric=metric
        )
    if r_precision:
        results[f"{prefix}r_precision"] = _r_precision_score(
            embeddings, labels, chunk_size=chunk_size, metric=metric
        )
    return results


def _evaluate_reference(search, ks, nmi, map_at_r, r_precision, seed, chunk_size, prefix):
    """`evaluate_retrieval` of queries against a reference set: one search."""
    ks = search.check_ks(ks)
    at_r = map_at_r or r_precision
    k = max(max(ks), int(search.relevant.max()) if at_r else 0)
    ranks, ap, rp = search.scores(k, at_r, chunk_size)
    ranks = ranks[search.not_lone]
    results = {f"{prefix}recall@{k}": float(np.mean(ranks <= k)) for k in ks}
    if nmi:
        results[f"{prefix}nmi"] = _nmi_score(search.queries, search.labels, seed=seed)
    if map_at_r:
        results[f"{prefix}map@r"] = float(np.nanmean(ap))
    if r_precision:
        results[f"{prefix}r_precision"] = float(np.nanmean(rp))
    return results
