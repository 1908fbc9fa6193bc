"""Retrieval evaluation: Recall@K, precision@1, MAP@R, R-precision, NMI, embedding extraction.

Everything here is evaluation code that runs on the host in NumPy (BLAS matrix
products, chunked), not inside the training graph, so it behaves the same under
every Keras backend.

Conventions shared by `recall_at_k`, `precision_at_1`, `map_at_r` and `r_precision`, in
their default, leave-one-out form (one set of embeddings):

* The query itself is excluded from its own neighbours; every other sample is in
  the gallery (the usual "leave-one-out" protocol of metric-learning papers).
* Queries whose label occurs once have nothing to retrieve: `recall_at_k` counts them
  as misses (the papers' tables), `precision_at_1`, `map_at_r` and `r_precision` leave
  them out (pytorch-metric-learning's ``AccuracyCalculator``).
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

Query and reference sets (In-Shop, PML's ``AccuracyCalculator.get_accuracy(query,
query_labels, reference, reference_labels, ref_includes_query)``): the same four
functions, and `evaluate_retrieval`, take the keyword arguments ``reference_embeddings``
and ``reference_labels`` (the gallery), or ``index``, a prebuilt
:class:`keras_featreg.search.Index` holding the gallery with labels (exact or faiss flat,
IVF, HNSW), and ``reference_includes_query``:

* The `embeddings` are queries only; their neighbours are the reference items, found
  with :class:`keras_featreg.search.Index` (exact by default, in the same distances as
  above): the ``max(ks)`` nearest for Recall@K, the ``max R`` nearest for MAP@R and
  R-precision. ``chunk_size`` queries are searched at a time.
* R of a query is the number of reference items with its label. With
  ``reference_includes_query=True`` query i IS reference row i (the queries are the
  first rows of the reference set); that row is left out of query i's neighbours
  (``Index.search(exclude_ids=...)``: by id, so a duplicate of the query still counts)
  and out of its R.
* "Lone" queries (R = 0) are left out of every metric, Recall@K included, as in PML; if
  every query is lone, a ValueError is raised.
* Ties are broken by reference position (the Index's order: the earlier reference item
  first), not pessimistically: with exact ties the two forms can differ.

Layout (private modules; import from ``keras_featreg.evaluation``):

* ``_checks``: argument checks (embeddings, labels, ks, chunk and thread counts).
* ``_tiling``: ``_Prepared`` (embeddings sorted by label, distance matrix as two
  factors) and the segments / tiles / threads its blocks are computed in.
* ``_retrieval``: `recall_at_k`, `precision_at_1`, `map_at_r` and `r_precision` (the
  leave-one-out form over those blocks).
* ``_reference``: the query/reference form (``ReferenceSearch``: checks, the Index, and
  the metrics as pure functions of its search results).
* ``_clustering``: `nmi` (K-means).
* ``_extract``: `embed` (a model over arrays, datasets or batch iterables).
* ``_report``: `evaluate_retrieval` (all metrics in one dict).

The Keras callback that runs them each epoch is
:class:`keras_featreg.callbacks.RetrievalEvaluation`.
"""

from keras_featreg.evaluation._clustering import nmi
from keras_featreg.evaluation._extract import embed
from keras_featreg.evaluation._report import evaluate_retrieval
from keras_featreg.evaluation._retrieval import (
    map_at_r,
    precision_at_1,
    r_precision,
    recall_at_k,
)
from keras_featreg.evaluation._tiling import _Prepared  # noqa: F401  (tests use it)

__all__ = [
    "recall_at_k",
    "precision_at_1",
    "map_at_r",
    "r_precision",
    "nmi",
    "embed",
    "evaluate_retrieval",
]
