"""Search what you trained: an index of embeddings, lookup, calibration and matching.

* :class:`Index`: a gallery of embeddings with labels and ids, searched exactly (NumPy,
  the distances of :mod:`keras_featreg.evaluation`, in bounded memory) or with faiss
  (flat, IVF, HNSW); saved and loaded without pickle.
* :class:`SearchResult`: what ``Index.search`` returns.

Layout (private modules; import from ``keras_featreg.search``): ``_exact`` (the blocked
exact k-NN), ``_faiss`` (the faiss backend), ``_index`` (`Index`).
"""

from keras_featreg.search._index import Index, SearchResult

__all__ = ["Index", "SearchResult"]
