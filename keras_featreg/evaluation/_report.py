"""`evaluate_retrieval`: Recall@K, NMI and MAP@R in one Keras-log style dict."""

import numpy as np  # noqa: F401  (the docstring example uses it)

from keras_featreg.evaluation._clustering import nmi
from keras_featreg.evaluation._retrieval import map_at_r, recall_at_k


# --------------------------------------------------------------------------- #
# All metrics at once
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
        metric: a :mod:`keras_featreg.distances` name or object ("euclidean", "cosine", "dot_product", ...) (Recall@K and MAP@R; NMI
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
