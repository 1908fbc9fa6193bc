"""Retrieval evaluation: Recall@K, MAP@R, NMI and embedding extraction.

Everything here is evaluation code that runs on the host in NumPy (BLAS matrix
products, chunked), not inside the training graph, so it behaves the same under
every Keras backend.

Conventions shared by `recall_at_k` and `map_at_r`:

* The query itself is excluded from its own neighbours; every other sample is in
  the gallery (the usual "leave-one-out" protocol of metric-learning papers).
* Distances: ``metric="euclidean"`` (default; ranks by squared Euclidean distance,
  which gives the same ranking as Euclidean), ``"cosine"`` (rows L2-normalized
  first; for L2-normalized embeddings this is the same ranking as Euclidean) or
  ``"dot_product"`` (larger dot product = closer); any name of the one table
  :data:`keras_featreg.distances.NAMES`, or a distance object, ranks as its
  ``evaluation_metric``.
* Distances use the algorithm of :func:`keras_featreg.ops.pairwise.squared_euclidean_matrix`
  (centred expansion; entries within its rounding bound are exactly 0), so duplicates
  are at distance exactly 0 on every CPU and tie with each other; the exact recomputation
  of near pairs is left out here (it changes only the order of pairs closer than the
  bound, about ``sqrt(2 gamma_{d+2})`` times the spread of the data).
* Ties are broken pessimistically: a different-label sample at exactly the same
  distance as a same-label one is ranked first. Collapsed (all-equal) embeddings
  therefore score 0, never 1.
* Computation is in float32 (float64 when the embeddings are float64), in blocks of
  ``chunk_size`` samples, so memory stays O(n·d + chunk_size²) (O(n·chunk) for
  MAP@R) instead of the O(n²) of a full distance matrix.

Layout (private modules; import from ``keras_featreg.evaluation``):

* ``_checks``: argument checks (embeddings, labels, ks, chunk and thread counts).
* ``_tiling``: ``_Prepared`` (embeddings sorted by label, distance matrix as two
  factors) and the segments / tiles / threads its blocks are computed in.
* ``_retrieval``: `recall_at_k` and `map_at_r` over those blocks.
* ``_clustering``: `nmi` (K-means).
* ``_extract``: `embed` (a model over arrays, datasets or batch iterables).
* ``_report``: `evaluate_retrieval` (all metrics in one dict).

The Keras callback that runs them each epoch is
:class:`keras_featreg.callbacks.RetrievalEvaluation`.
"""

from keras_featreg.evaluation._clustering import nmi
from keras_featreg.evaluation._extract import embed
from keras_featreg.evaluation._report import evaluate_retrieval
from keras_featreg.evaluation._retrieval import map_at_r, recall_at_k
from keras_featreg.evaluation._tiling import _Prepared  # noqa: F401  (tests use it)

__all__ = [
    "recall_at_k",
    "map_at_r",
    "nmi",
    "embed",
    "evaluate_retrieval",
]
