"""The faiss backend of :class:`keras_featreg.search.Index` (``pip install faiss-cpu``).

Three index kinds behind one API: ``"flat"`` (exact, brute force), ``"ivf"`` (an inverted
file of ``nlist`` K-means cells, ``nprobe`` of which are searched; trained on the first
``add``) and ``"hnsw"`` (a graph of ``M`` links per node, searched with a beam of
``ef_search``; built with ``ef_construction``). Cosine is inner product on unit rows.
"""

import numpy as np

from keras_featreg._host import unit_rows

KINDS = ("flat", "ivf", "hnsw")
DEFAULT_PARAMS = {
    "flat": {},
    "ivf": {"nlist": 1024, "nprobe": 16},
    "hnsw": {"M": 32, "ef_search": 64, "ef_construction": 128},
}


def import_faiss():
    """faiss, or an ImportError with the install hint."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='faiss' needs the faiss package: pip install faiss-cpu "
            "(or pip install 'keras-featreg[faiss]')."
        ) from error
    return faiss


def check_params(kind, params):
    """The full parameter dict of `kind`: the defaults updated with `params`."""
    out = dict(DEFAULT_PARAMS[kind])
    unknown = sorted(set(params) - set(out))
    if unknown:
        raise ValueError(
            f"Unknown parameters for faiss_index={kind!r}: {unknown}. Expected some of "
            f"{sorted(out)}. Received: {params}"
        )
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(
                f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
            )
        out[name] = int(value)
    return out


def _faiss_metric(faiss, metric):
    return faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT


def prepare(x, metric):
    """Rows as faiss wants them: float32, unit rows for cosine."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x = np.ascontiguousarray(unit_rows(x)[0])
    return x


def build(kind, params, dim, metric):
    """A new, empty faiss index."""
    faiss = import_faiss()
    fm = _faiss_metric(faiss, metric)
    if kind == "flat":
        return faiss.IndexFlat(dim, fm)
    if kind == "ivf":
        quantizer = faiss.IndexFlat(dim, fm)
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], fm)
        index.nprobe = params["nprobe"]
        return index
    index = faiss.IndexHNSWFlat(dim, params["M"], fm)
    index.hnsw.efConstruction = params["ef_construction"]
    index.hnsw.efSearch = params["ef_search"]
    return index


def add(index, kind, params, x):
    """Adds prepared rows `x`, training an IVF index first when it is not trained."""
    if kind == "ivf" and not index.is_trained:
        if x.shape[0] < params["nlist"]:
            raise ValueError(
                f"An IVF index is trained on its first `add`, which needs at least nlist="
                f"{params['nlist']} embeddings (39 per cell recommended). Received: "
                f"{x.shape[0]} embeddings. Pass a smaller nlist."
            )
        index.train(x)
    index.add(x)


def search(index, kind, params, queries, k, metric):
    """(ranking values, positions) of the k nearest: ranking values as
    :class:`keras_featreg._host.Factored` gives them (squared Euclidean, ``2 - 2 cos``,
    ``-a.b``); positions -1 where faiss found fewer than k."""
    if kind == "ivf":
        index.nprobe = params["nprobe"]
    elif kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    values, positions = index.search(queries, k)
    if metric == "cosine":
        values = 2.0 - 2.0 * values
    elif metric == "dot_product":
        values = -values
    values = np.where(positions < 0, np.inf, values).astype(np.float32)
    return values, positions.astype(np.int64)


def serialize(index):
    return import_faiss().serialize_index(index)


def deserialize(data):
    return import_faiss().deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
