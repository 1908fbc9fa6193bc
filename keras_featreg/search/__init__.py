"""Search what you trained: an index of embeddings, lookup, calibration and matching.

* :class:`Index`: a gallery of embeddings with labels and ids, searched exactly (NumPy,
  the distances of :mod:`keras_featreg.evaluation`, in bounded memory) or with faiss
  (flat, IVF, HNSW); saved and loaded without pickle.
* :class:`SearchResult`: what ``Index.search`` returns.
* :func:`calibrate` / :class:`Calibration`: the distance threshold of a target precision
  (or the best F1) on a labelled calibration set, with its precision/recall/F1 curve;
  :func:`match`: the nearest label, or "unknown" (-1) beyond the threshold.
* :class:`SearchBundle`: an embedding model, its index and threshold in one directory,
  loaded in a fresh process and queried with raw inputs.

Layout (private modules; import from ``keras_featreg.search``): ``_exact`` (the blocked
exact k-NN), ``_faiss`` (the faiss backend), ``_index`` (`Index`), ``_calibration``, ``_bundle``.
"""

from keras_featreg.search._bundle import SearchBundle
from keras_featreg.search._calibration import UNKNOWN, Calibration, calibrate, match
from keras_featreg.search._index import Index, SearchResult

__all__ = [
    "Index",
    "SearchResult",
    "Calibration",
    "calibrate",
    "match",
    "UNKNOWN",
    "SearchBundle",
]
