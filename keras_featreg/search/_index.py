"""`Index`: a gallery of embeddings (with labels and ids) searched exactly or with faiss."""

import collections
import json
import os
import tempfile
import zipfile

import numpy as np

from keras_featreg._host import (
    Factored,
    check_embeddings,
    check_label_array,
    num_threads_of,
    ranking_of,
    to_distance,
    to_numpy,
)
from keras_featreg._utils import check_choice, check_int
from keras_featreg.search import _exact, _faiss

FORMAT = "keras_featreg.search.Index"
FORMAT_VERSION = 1
BACKENDS = ("exact", "faiss")

SearchResult = collections.namedtuple("SearchResult", ["distances", "indices", "ids", "labels"])
SearchResult.__doc__ = """The k nearest gallery items of each query, nearest first.

* ``distances``: (num_queries, k) float array in the index's metric, smaller is closer:
  the Euclidean distance, the cosine distance ``1 - cos`` (in [0, 2]) or the negated dot
  product.
* ``indices``: (num_queries, k) int64 positions in the gallery (in order of addition).
* ``ids``: (num_queries, k) int64 ids of those items.
* ``labels``: (num_queries, k) int64 labels, or None when the gallery has none.
"""


def _check_ids(ids, n, name="ids"):
    ids = to_numpy(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(
            f"`{name}` must be a 1-D array with one id per embedding ({n}). "
            f"Received: {name}.shape={ids.shape}"
        )
    if ids.size and (ids.dtype.kind not in "iu" and not (
            ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)))):
        raise ValueError(f"`{name}` must be integers. Received: {name}.dtype={ids.dtype}")
    ids = ids.astype(np.int64)
    if np.unique(ids).size != ids.size:
        raise ValueError(f"`{name}` must be unique. Received: {ids.size - np.unique(ids).size} "
                         "repeated ids")
    return ids


class Index:
    """A searchable gallery of embeddings: exact (NumPy) or faiss (flat, IVF, HNSW).

    ``add`` embeddings (with optional integer labels and ids) as often as needed, then
    ``search`` queries for their ``k`` nearest items, sorted by distance, ties broken by
    the order in which items were added (the exact backend; faiss orders its own ties).
    ``save`` / :meth:`Index.load` round-trip the index exactly in one ``.npz`` file that
    holds no pickle (metadata as JSON), so loading an untrusted file cannot run code.

    The exact backend computes the distances as the library's evaluation does
    (:class:`keras_featreg._host.Factored`: centred expansion, entries within its rounding
    bound exactly 0, so duplicates are at distance 0 and tie) in blocks of
    ``query_chunk × reference_chunk``, keeping a running top-k: memory is bounded by the
    block, not by the ``num_queries × num_items`` distance matrix.

    The faiss backend (``pip install faiss-cpu``) offers ``faiss_index="flat"`` (exact),
    ``"ivf"`` (``nlist`` K-means cells, trained on the first ``add``, ``nprobe`` searched;
    more cells searched: better recall, slower) and ``"hnsw"`` (``M`` links per node,
    ``ef_construction`` when building, ``ef_search`` when searching; larger: better recall,
    slower). It works in float32 and keeps its own copy of the embeddings besides the one
    this object keeps (used by ``save``, ``remove`` and ``embeddings``).

    Args:
        metric: a :mod:`keras_featreg.distances` name or object ranking like
            ``"euclidean"``, ``"cosine"`` or ``"dot_product"``.
        backend: ``"exact"`` or ``"faiss"``.
        faiss_index: ``"flat"``, ``"ivf"`` or ``"hnsw"`` (faiss backend only).
        nlist, nprobe: IVF cells and cells searched (defaults 1024, 16).
        M, ef_search, ef_construction: HNSW links per node and beam widths (defaults 32,
            64, 128).
        query_chunk, reference_chunk: block edges of the exact backend (None: about
            32 MiB blocks of 16384 gallery items).
        num_threads: threads of the exact backend (None: the CPUs, at most 8).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.search import Index
    >>> index = Index(metric="euclidean")
    >>> index.add(np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]), labels=[0, 0, 1])
    >>> result = index.search(np.array([[0.9, 0.1]]), k=2)
    >>> result.indices.tolist(), result.labels.tolist()
    ([[1, 0]], [[0, 0]])
    >>> np.round(result.distances, 4).tolist()
    [[0.1414, 0.9055]]
    """

    def __init__(self, metric="euclidean", backend="exact", faiss_index="flat", nlist=None,
                 nprobe=None, M=None, ef_search=None, ef_construction=None,
                 query_chunk=None, reference_chunk=None, num_threads=None):
        self.metric = ranking_of(metric)
        self.backend = check_choice("backend", backend, BACKENDS)
        given = {"nlist": nlist, "nprobe": nprobe, "M": M, "ef_search": ef_search,
                 "ef_construction": ef_construction}
        given = {name: value for name, value in given.items() if value is not None}
        if backend == "exact":
            if faiss_index != "flat" or given:
                raise ValueError(
                    "`faiss_index` and the faiss parameters (nlist, nprobe, M, ef_search, "
                    "ef_construction) need backend='faiss'. Received: backend='exact', "
                    f"faiss_index={faiss_index!r}, {given}"
                )
            self.faiss_index, self.params = None, {}
        else:
            self.faiss_index = check_choice("faiss_index", faiss_index, _faiss.KINDS)
            self.params = _faiss.check_params(faiss_index, given)
            _faiss.import_faiss()
        self.query_chunk = None if query_chunk is None else check_int("query_chunk", query_chunk)
        self.reference_chunk = (None if reference_chunk is None
                                else check_int("reference_chunk", reference_chunk))
        self.num_threads = num_threads_of(num_threads)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self):
        """Removes every item (the configuration stays; the dimension is set again by
        the next ``add``)."""
        self.dim = None
        self.dtype = None
        self._chunks, self._label_chunks, self._id_chunks = [], [], []
        self._has_labels = None
        self._shift = None
        self._next_id = 0
        self._cache = None
        self._id_order = None
        self._faiss = None

    def __len__(self):
        return sum(c.shape[0] for c in self._chunks)

    def _consolidate(self):
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
            self._id_chunks = [np.concatenate(self._id_chunks)]
            if self._has_labels:
                self._label_chunks = [np.concatenate(self._label_chunks)]

    @property
    def embeddings(self):
        """The (n, dim) gallery, in order of addition (a copy is not made: do not modify)."""
        self._consolidate()
        return self._chunks[0] if self._chunks else np.empty((0, self.dim or 0), np.float32)

    @property
    def ids(self):
        """The (n,) int64 ids, in order of addition."""
        self._consolidate()
        return self._id_chunks[0] if self._id_chunks else np.empty((0,), np.int64)

    @property
    def labels(self):
        """The (n,) int64 labels, or None when the gallery has none."""
        if not self._has_labels:
            return None
        self._consolidate()
        return self._label_chunks[0]

    def add(self, embeddings, labels=None, ids=None):
        """Adds items to the gallery.

        Args:
            embeddings: (n, dim) finite floats (any array or backend tensor); the first
                ``add`` sets ``dim`` and the dtype (float64 stays float64 in the exact
                backend; everything else is stored as float32).
            labels: None or (n,) integer labels; every ``add`` of an index gives labels
                or none does.
            ids: None (the next integers after the largest id so far) or (n,) unique
                integer ids, not already in the index.
        """
        x = check_embeddings(embeddings, min_rows=1, dim=self.dim)
        if self.backend == "faiss" or (self.dtype is not None and self.dtype != x.dtype):
            x = x.astype(self.dtype or np.float32)
        n = x.shape[0]
        has_labels = labels is not None
        if self._has_labels is not None and has_labels != self._has_labels:
            raise ValueError(
                "Every `add` of an index gives labels or none does: this index has "
                f"{'labels' if self._has_labels else 'no labels'}. Received: labels="
                f"{'None' if labels is None else 'an array'}"
            )
        if has_labels:
            labels = check_label_array(labels, n, of="embeddings").astype(np.int64)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = _check_ids(ids, n)
            if len(self) and np.isin(ids, self.ids).any():
                raise ValueError(
                    "`ids` must not already be in the index. Received: ids already "
                    f"present: {ids[np.isin(ids, self.ids)][:5].tolist()}"
                )
        if self.dim is None:
            self.dim, self.dtype = x.shape[1], x.dtype
            if self.metric != "dot_product":
                self._shift = Factored(x, self.metric).shift  # fixed: later adds share it
        self._chunks.append(x)
        self._id_chunks.append(ids)
        if has_labels:
            self._label_chunks.append(labels)
        self._has_labels = has_labels
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._cache = self._id_order = None
        if self.backend == "faiss":
            if self._faiss is None:
                self._faiss = _faiss.build(self.faiss_index, self.params, self.dim, self.metric)
            _faiss.add(self._faiss, self.faiss_index, self.params, _faiss.prepare(x, self.metric))

    def remove(self, ids):
        """Removes the items with these ids (each must be in the index). The faiss
        backend rebuilds its index from the kept embeddings (an IVF index keeps its
        training)."""
        ids = _check_ids(np.atleast_1d(to_numpy(ids)), np.atleast_1d(to_numpy(ids)).shape[0])
        present = np.isin(ids, self.ids)
        if not present.all():
            raise ValueError(f"`ids` must be in the index. Received: ids not in it: "
                             f"{ids[~present][:5].tolist()}")
        keep = ~np.isin(self.ids, ids)
        x, kept_ids = self.embeddings[keep], self.ids[keep]
        kept_labels = self.labels[keep] if self._has_labels else None
        self._chunks, self._id_chunks = [x], [kept_ids]
        self._label_chunks = [kept_labels] if self._has_labels else []
        self._cache = self._id_order = None
        if self.backend == "faiss":
            self._faiss.reset()
            if x.shape[0]:
                self._faiss.add(_faiss.prepare(x, self.metric))

    def set_search_params(self, nprobe=None, ef_search=None):
        """Changes the search-time parameters of a faiss IVF (``nprobe``) or HNSW
        (``ef_search``) index."""
        given = {k: v for k, v in {"nprobe": nprobe, "ef_search": ef_search}.items()
                 if v is not None}
        if self.backend != "faiss":
            raise ValueError(f"Search parameters need backend='faiss'. Received: {given}")
        self.params = _faiss.check_params(self.faiss_index, {**self.params, **given})

    # ------------------------------------------------------------------ search
    def _gallery(self):
        if self._cache is None:
            self._cache = Factored(self.embeddings, self.metric, shift=self._shift,
                                   keep=("right",))
        return self._cache

    def _positions(self, ids, name):
        """Gallery positions of `ids`."""
        all_ids = self.ids
        if self._id_order is None:  # sorted once per change of the gallery
            self._id_order = np.argsort(all_ids, kind="stable")
        order = self._id_order
        where = np.searchsorted(all_ids[order], ids)
        where = np.minimum(where, len(all_ids) - 1)
        found = all_ids[order][where] == ids
        if not found.all():
            raise ValueError(f"`{name}` must hold ids of the index. Received: ids not in it: "
                             f"{ids[~found][:5].tolist()}")
        return order[where]

    def search(self, queries, k=1, exclude_ids=None):
        """The `k` nearest items of each query, nearest first.

        Args:
            queries: (num_queries, dim) finite floats.
            k: neighbours per query, in [1, len(index)] (``len(index) - 1`` with
                `exclude_ids`).
            exclude_ids: None or (num_queries,) ids, one per query, of an item to leave
                out of that query's neighbours (e.g. the query itself when the gallery
                holds the queries).

        Returns:
            A :class:`SearchResult` (distances, indices, ids, labels).
        """
        n = len(self)
        if n == 0:
            raise ValueError("The index is empty: `add` embeddings before `search`.")
        q = check_embeddings(queries, name="queries", min_rows=1, dim=self.dim)
        if self.dtype is not None:
            q = q.astype(self.dtype)
        limit = n if exclude_ids is None else n - 1
        k = check_int("k", k)
        if k > limit:
            raise ValueError(
                f"`k` must be <= the number of items in the index{' minus 1 (exclude_ids)' if exclude_ids is not None else ''} "
                f"({limit}). Received: k={k}"
            )
        exclude = None
        if exclude_ids is not None:
            exclude_ids = _check_ids(exclude_ids, q.shape[0], name="exclude_ids")
            exclude = self._positions(exclude_ids, "exclude_ids")
        if self.backend == "exact":
            values, positions = _exact.knn(
                Factored(q, self.metric, shift=self._shift, keep=("left",)), self._gallery(), k,
                query_chunk=self.query_chunk, reference_chunk=self.reference_chunk,
                num_threads=self.num_threads, exclude=exclude)
        else:
            values, positions = self._faiss_search(q, k, exclude)
        ids = np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)
        labels = None
        if self._has_labels:
            labels = np.where(positions >= 0, self.labels[np.maximum(positions, 0)], -1)
        return SearchResult(to_distance(values, self.metric), positions, ids, labels)

    def _faiss_search(self, q, k, exclude):
        kk = k if exclude is None else k + 1
        values, positions = _faiss.search(self._faiss, self.faiss_index, self.params,
                                          _faiss.prepare(q, self.metric), kk, self.metric)
        if exclude is not None:
            drop = positions == exclude[:, None]
            drop[~drop.any(axis=1), -1] = True  # not found: drop the farthest
            keep = ~drop
            values = values[keep].reshape(-1, k)
            positions = positions[keep].reshape(-1, k)
        # Deterministic order of faiss's results: distance, then position.
        big = np.where(positions < 0, np.iinfo(np.int64).max, positions)
        order = np.lexsort((big, values), axis=1)
        return np.take_along_axis(values, order, 1), np.take_along_axis(positions, order, 1)

    # ------------------------------------------------------------------ files
    def _metadata(self):
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "metric": self.metric,
            "backend": self.backend, "faiss_index": self.faiss_index, "params": self.params,
            "dim": self.dim, "dtype": None if self.dtype is None else np.dtype(self.dtype).name,
            "count": len(self), "has_labels": bool(self._has_labels),
            "next_id": self._next_id,
        }

    def save(self, path):
        """Writes the index to `path` (one ``.npz`` file, no pickle), atomically: the
        file is written under a temporary name in the same folder, then renamed, so a
        failed save leaves nothing half-written."""
        path = os.fspath(path)
        arrays = {
            "metadata": np.frombuffer(json.dumps(self._metadata()).encode(), np.uint8),
            "embeddings": self.embeddings,
            "ids": self.ids,
        }
        if self._has_labels:
            arrays["labels"] = self.labels
        if self._shift is not None:
            arrays["shift"] = self._shift
        if self.backend == "faiss" and self._faiss is not None:
            arrays["faiss"] = _faiss.serialize(self._faiss)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path, metric=None, dim=None, backend=None):
        """Reads an index written by :meth:`save`.

        Args:
            path: the file.
            metric, dim, backend: when given, what the caller expects: a file of another
                metric, dimension or backend is refused with a ValueError.

        Raises:
            ValueError: a file that is not an index of this format (or a corrupt one,
                or one holding pickled data), or a mismatch with the expectations.
            ImportError: a faiss index when faiss is not installed.
        """
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
            raise ValueError(f"{path!r} is not a readable keras_featreg index file "
                             f"(an .npz without pickled data): {error}") from error
        meta = _read_metadata(arrays, path)
        expected = {"metric": None if metric is None else ranking_of(metric), "dim": dim,
                    "backend": backend}
        for name, value in expected.items():
            if value is not None and meta[name] != value:
                raise ValueError(
                    f"The index in {path!r} has {name}={meta[name]!r}, not the expected "
                    f"{name}={value!r}."
                )
        index = cls.__new__(cls)
        index.metric, index.backend = meta["metric"], meta["backend"]
        index.faiss_index, index.params = meta["faiss_index"], dict(meta["params"])
        index.query_chunk = index.reference_chunk = None
        index.num_threads = num_threads_of(None)
        index.reset()
        if meta["count"] == 0:
            return index
        index.dim, index.dtype = meta["dim"], np.dtype(meta["dtype"])
        index._chunks = [arrays["embeddings"]]
        index._id_chunks = [arrays["ids"]]
        index._has_labels = meta["has_labels"]
        if index._has_labels:
            index._label_chunks = [arrays["labels"]]
        index._shift = arrays.get("shift")
        index._next_id = meta["next_id"]
        if index.backend == "faiss":
            index._faiss = _faiss.deserialize(arrays["faiss"])
            if index._faiss.ntotal != meta["count"]:
                raise ValueError(f"{path!r} is corrupt: its faiss index holds "
                                 f"{index._faiss.ntotal} items, its metadata {meta['count']}.")
        return index


def _read_metadata(arrays, path):
    """The checked metadata of a loaded file (and its arrays' shapes and dtypes)."""
    def corrupt(why):
        return ValueError(f"{path!r} is not a valid keras_featreg index file: {why}.")

    if "metadata" not in arrays or arrays["metadata"].dtype != np.uint8:
        raise corrupt("no metadata")
    try:
        meta = json.loads(arrays["metadata"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise corrupt(f"unreadable metadata ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise corrupt(f"format is {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise corrupt(f"version {meta.get('version')!r}, this library reads {FORMAT_VERSION}")
    try:
        count, dim = int(meta["count"]), meta["dim"]
        if meta["metric"] not in ("euclidean", "cosine", "dot_product"):
            raise corrupt(f"metric {meta['metric']!r}")
        if meta["backend"] not in BACKENDS:
            raise corrupt(f"backend {meta['backend']!r}")
        if meta["backend"] == "faiss":
            if meta["faiss_index"] not in _faiss.KINDS:
                raise corrupt(f"faiss_index {meta['faiss_index']!r}")
            meta["params"] = _faiss.check_params(meta["faiss_index"], meta["params"])
            if count and "faiss" not in arrays:
                raise corrupt("no faiss index")
        if count == 0:
            return meta
        x, ids = arrays.get("embeddings"), arrays.get("ids")
        if x is None or ids is None:
            raise corrupt("no embeddings or ids")
        if meta["dtype"] not in ("float32", "float64") or x.dtype.name != meta["dtype"]:
            raise corrupt(f"embeddings of dtype {x.dtype}, metadata {meta['dtype']!r}")
        if x.shape != (count, dim) or ids.shape != (count,) or ids.dtype != np.int64:
            raise corrupt(f"embeddings {x.shape} and ids {ids.shape} {ids.dtype} do not match "
                          f"count={count}, dim={dim}")
        if meta["has_labels"] and (arrays.get("labels") is None
                                   or arrays["labels"].shape != (count,)):
            raise corrupt("labels missing or of the wrong length")
        if meta["metric"] != "dot_product" and (
                arrays.get("shift") is None or arrays["shift"].shape != (dim,)):
            raise corrupt("no shift")
        if not np.all(np.isfinite(x)):
            raise corrupt("non-finite embeddings")
    except (KeyError, TypeError) as error:
        raise corrupt(f"missing or malformed field ({error})") from error
    return meta
