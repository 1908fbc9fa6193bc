"""The layers of keras-featreg.

* :class:`EmbeddingRegularization`: passes its input through and adds a feature
  regularizer's penalty; :func:`attach_regularizer` / :func:`detach_regularizers` set one
  on the layers of an existing model.
* :class:`ProxyHead`: the class weights (proxies) of the proxy losses
  (:class:`~keras_featreg.losses.ProxyAnchorLoss`, ArcFace, CosFace) and the cosines to
  them; :func:`embedding_model` cuts a trained model back to its embedding.
* :class:`EmbeddingMemory`: the memory of :class:`~keras_featreg.losses.CrossBatchMemory`.
* :class:`NearestNeighbors`: a gallery of candidate embeddings (with their ids and
  optional labels) kept as non-trainable weights, and the top-k nearest candidates of each
  query, in the graph: retrieval that saves, exports and serves with the model.
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg import distances as distances_lib
from keras_featreg._host import ranking_of
from keras_featreg.ops.pairwise import cosine_similarity_matrix
from keras_featreg.regularizers import FeatureRegularizer


def _get_regularizer(regularizer):
    regularizer = keras.regularizers.get(regularizer)
    if not isinstance(regularizer, FeatureRegularizer):
        raise ValueError(
            "`regularizer` must be a keras_featreg regularizer (SVMax, VICReg, SpreadOut) or "
            f"its config. Received: regularizer={regularizer!r}"
        )
    return regularizer


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class EmbeddingRegularization(keras.layers.Layer):
    """Passes its input through unchanged and adds a regularizer's penalty with ``add_loss``.

    The penalty added is ``regularizer.penalty(inputs)``, the formula's value, on every
    Keras version (``add_loss`` values are never divided by the batch size).  Use it
    where an ``activity_regularizer=`` argument is not available (a ``Lambda``, a tensor
    coming out of a sub-model, the output of an ``L2Normalization``), or to regularize
    the embedding a ranking loss sees.

    Args:
        regularizer: a :mod:`keras_featreg.regularizers` instance or its serialized config.

    Example:

    >>> import keras
    >>> from keras_featreg.layers import EmbeddingRegularization
    >>> from keras_featreg.regularizers import SVMax
    >>> inputs = keras.Input((32,))
    >>> emb = keras.layers.Dense(16)(inputs)
    >>> emb = EmbeddingRegularization(SVMax(1.0))(emb)
    >>> model = keras.Model(inputs, emb)
    """

    def __init__(self, regularizer, **kwargs):
        super().__init__(**kwargs)
        self.regularizer = _get_regularizer(regularizer)
        self.supports_masking = True

    def call(self, inputs):
        self.add_loss(self.regularizer.penalty(inputs))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "regularizer": keras.regularizers.serialize(self.regularizer),
        }


def _all_layers(model):
    """Every layer of `model`, nested models' layers included (depth first), by the public
    ``Model.layers``."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _select(layer, layers):
    if layers is None:
        return True
    if callable(layers) and not isinstance(layers, type):
        return bool(layers(layer))
    if isinstance(layers, (str, type)):
        layers = [layers]
    for item in layers:
        if isinstance(item, str) and layer.name == item:
            return True
        if isinstance(item, type) and isinstance(layer, item):
            return True
        if item is layer:
            return True
    return False


def attach_regularizer(model, regularizer, layers=None, overwrite=False):
    """Sets ``regularizer`` as the ``activity_regularizer`` of layers of an existing model.

    The SVMax paper's review asks whether feature regularizers help on every layer, as
    weight decay does; this helper answers "try it" without rebuilding the model.  The
    model's next call (``fit``, ``evaluate``, ``model(x)``) adds one penalty per attached
    layer output to ``model.losses``; Keras serializes the setting with the layer config.

    Args:
        model: a built Keras model (Functional or Sequential).
        regularizer: a :mod:`keras_featreg.regularizers` instance (shared by all layers;
            regularizers are stateless).
        layers: which layers: ``None`` (every layer but inputs and nested models'
            containers), a layer name, a layer class, a list of names/classes/instances,
            or a predicate ``layer -> bool``.
        overwrite: replace an existing activity regularizer instead of raising.

    Returns:
        The list of layer names the regularizer was attached to.

    Raises:
        ValueError: nothing matched ``layers``, or a matched layer already has a
            different activity regularizer and ``overwrite`` is False.
    """
    regularizer = _get_regularizer(regularizer)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    attached = []
    for layer in _all_layers(model):
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            continue
        if not _select(layer, layers):
            continue
        current = layer.activity_regularizer
        if current is not None and current is not regularizer and not overwrite:
            raise ValueError(
                f"Layer {layer.name!r} already has activity_regularizer={current!r}; pass "
                "overwrite=True to replace it."
            )
        layer.activity_regularizer = regularizer
        attached.append(layer.name)
    if not attached:
        raise ValueError(f"No layer of the model matched `layers`. Received: layers={layers!r}")
    return attached


def detach_regularizers(model, layers=None):
    """Removes activity regularizers set by :func:`attach_regularizer`; returns the names."""
    detached = []
    for layer in _all_layers(model):
        if isinstance(layer.activity_regularizer, FeatureRegularizer) and _select(layer, layers):
            layer.activity_regularizer = None
            detached.append(layer.name)
    return detached


# ------------------------------------------------------------------ the proxy head


def proxy_anchor_initializer():
    """PML's ``kaiming_normal_(proxies, mode="fan_out")`` on ``(C, d)``: ``N(0, 2 / C)``.

    (torch's ``fan_out`` of a ``(C, d)`` tensor is ``C``, which is Keras's ``fan_in`` of
    the same shape.)
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal")


def large_margin_initializer():
    """PML's ``torch.nn.init.normal_`` of ArcFace/CosFace's ``W``: ``N(0, 1)``."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=1.0)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class ProxyHead(keras.layers.Layer):
    """Class weights (proxies) and the cosine similarities of the embeddings to them.

    Owns ``proxies``, a trainable ``(num_classes, embedding_size)`` weight, and returns
    ``cos[i, c] = <x_i / ||x_i||, p_c / ||p_c||>``, shape ``(b, num_classes)``, the input
    of :class:`ProxyAnchorLoss`, :class:`ArcFaceLoss` and :class:`CosFaceLoss` (build it
    with their ``head()`` method, which picks PML's initializer). The head exists for
    training only: retrieval uses its input, see :func:`embedding_model`.

    Args:
        num_classes: int >= 1, the number of proxies.
        embedding_size: int >= 1 or None (default: the last dimension of the input).
        initializer: initializer of the proxies. Default ``"glorot_normal"``.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.layers import ProxyHead
    >>> head = ProxyHead(3, initializer="ones")
    >>> tuple(head(np.array([[1.0, 0.0], [0.0, 0.0]])).shape)  # a zero row: cosine 0
    (2, 3)
    >>> tuple(head.proxies.shape)
    (3, 2)
    """

    def __init__(self, num_classes, embedding_size=None, initializer="glorot_normal", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _utils.check_int("num_classes", num_classes)
        self.embedding_size = _utils.check_optional_int("embedding_size", embedding_size)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None and self.embedding_size is None:
            raise ValueError(
                "ProxyHead needs the embedding size: pass `embedding_size` or an input with "
                f"a known last dimension. Received: input_shape={tuple(input_shape)}")
        if self.embedding_size is not None and dim is not None and int(dim) != self.embedding_size:
            raise ValueError(
                f"ProxyHead(embedding_size={self.embedding_size}) received embeddings of "
                f"size {int(dim)}. Received: input_shape={tuple(input_shape)}")
        size = self.embedding_size if self.embedding_size is not None else int(dim)
        self.proxies = self.add_weight(
            name="proxies", shape=(self.num_classes, size), initializer=self.initializer,
            trainable=True)

    def call(self, inputs):
        return cosine_similarity_matrix(inputs, self.proxies)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "initializer": keras.initializers.serialize(self.initializer),
        }


def embedding_model(model):
    """``keras.Model(model.inputs, <input of its ProxyHead>)``: the retrieval embedding.

    Args:
        model: a built Functional or Sequential model with exactly one :class:`ProxyHead`.

    Raises:
        ValueError: when the model has no or several ``ProxyHead`` layers.
    """
    heads = [layer for layer in _all_layers(model) if isinstance(layer, ProxyHead)]
    if len(heads) != 1:
        raise ValueError(
            "`model` must contain exactly one ProxyHead layer (the loss's `head()`). "
            f"Received: model with {len(heads)} ProxyHead layers")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.input
    return keras.Model(inputs, heads[0].input)


# ------------------------------------------------------------ the cross-batch memory


# Built EmbeddingMemory layers by name (the last built wins), for deserialized losses.
_MEMORIES = weakref.WeakValueDictionary()


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class EmbeddingMemory(keras.layers.Layer):
    """A FIFO memory of embeddings and labels, kept as non-trainable weights.

    The layer returns its input unchanged; it only gives the memory of a
    :class:`~keras_featreg.losses.CrossBatchMemory` a place in the model (its variables
    are saved, restored and carried through ``model.fit`` like batch-norm statistics).
    Place it right after the embedding: ``outputs = xbm.memory(embeddings)``.

    Weights: ``embeddings`` ``(memory_size, embedding_size)``, ``labels``
    ``(memory_size,)`` int32, ``position`` (next slot to write) and ``count`` (number of
    filled slots, at most ``memory_size``).

    Args:
        memory_size: number of slots (>= the batch size).
        embedding_size: dimension of the embeddings.

    Example:

    >>> from keras_featreg.layers import EmbeddingMemory
    >>> memory = EmbeddingMemory(memory_size=4, embedding_size=2)
    >>> memory.build((None, 2))
    >>> [tuple(w.shape) for w in memory.weights]
    [(4, 2), (4,), (), ()]
    """

    def __init__(self, memory_size, embedding_size, **kwargs):
        super().__init__(**kwargs)
        self.memory_size = _utils.check_int("memory_size", memory_size)
        self.embedding_size = _utils.check_int("embedding_size", embedding_size)

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] not in (None, self.embedding_size):
            raise ValueError(
                f"EmbeddingMemory {self.name!r} stores embeddings of size "
                f"{self.embedding_size}. Received: input_shape={tuple(input_shape)}")
        m, d = self.memory_size, self.embedding_size
        self.embeddings = self.add_weight(shape=(m, d), initializer="zeros", trainable=False,
                                          name="embeddings")
        self.labels = self.add_weight(shape=(m,), initializer="zeros", trainable=False,
                                      dtype="int32", name="labels")
        self.position = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                        dtype="int32", name="position")
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     dtype="int32", name="count")
        _MEMORIES[self.name] = self
        self.built = True

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def reset(self):
        """Empties the memory (zeros every slot, position and count)."""
        for v in self.weights:
            v.assign(ops.zeros(v.shape, v.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"memory_size": self.memory_size, "embedding_size": self.embedding_size})
        return config


# ------------------------------------------------------------- nearest neighbours


_INT32 = np.iinfo(np.int32)


def _id_vector(values, num_candidates, name):
    """``values`` (``ids`` or ``labels``) as an int32 NumPy vector of length `num_candidates`."""
    values = _utils.class_id_vector(values, name=name)
    if values.dtype.kind not in "iu":
        if values.dtype.kind != "f" or not np.all(np.isfinite(values)) or np.any(
                values != np.round(values)):
            raise ValueError(
                f"`{name}` must hold integers (one per candidate). "
                f"Received: {name}.dtype={values.dtype}")
    if values.shape[0] != num_candidates:
        raise ValueError(
            f"`{name}` must hold one value per candidate ({num_candidates}). "
            f"Received: {name}.shape={values.shape}")
    if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
        raise ValueError(
            f"`{name}` must fit in int32 (they are stored as int32 weights). "
            f"Received: {name} in [{values.min()}, {values.max()}]")
    return values.astype(np.int32)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class NearestNeighbors(keras.layers.Layer):
    """The ``k`` nearest candidates of each query, from a gallery held as non-trainable weights.

    Brute-force retrieval inside the graph, the in-model counterpart of
    :class:`keras_featreg.search.Index`: the layer scores every query against every
    candidate with the library's distance primitive (:mod:`keras_featreg.ops.pairwise`
    between the query batch and the gallery: :func:`~keras_featreg.ops.pairwise.pairwise_distances`,
    near pairs recomputed exactly, or :func:`~keras_featreg.ops.pairwise.pairwise_dot`)
    and keeps the best ``k`` with ``keras.ops.top_k`` (:func:`keras_featreg.backend.top_k`).
    The gallery is model state: ``candidates`` ``(num_candidates, dim)`` (float, never
    autocast to a half-precision compute dtype), ``ids`` ``(num_candidates,)`` int32 and,
    when labels are given, ``labels`` ``(num_candidates,)`` int32.  They are saved in
    ``.keras`` files and captured by ``model.export()``, so an embedding model followed by
    this layer is one artefact from raw inputs to the ids of the nearest gallery items.

    ``call(queries)`` takes a ``(b, dim)`` float batch and returns a dict of ``(b, k)``
    tensors, nearest first:

    * ``"distances"``: as in :class:`~keras_featreg.search.Index`, in the units of the
      metric's ranking and **smaller is always closer**: the Euclidean distance
      (``"euclidean"``, ``"squared_euclidean"``), the cosine distance ``1 - cos`` in
      ``[0, 2]`` (``"cosine"``, ``"cosine_similarity"``) or the **negated** dot product
      (``"dot_product"``).
    * ``"ids"``: int32, the ``ids`` of those candidates.
    * ``"labels"``: int32, their ``labels`` (only when the gallery has labels).

    Candidates at exactly the same distance come in gallery order on TensorFlow and JAX
    (their ``top_k`` is stable); torch's ``topk`` does not promise an order among ties.
    The cost is ``O(b * num_candidates * dim)`` per call with a ``(b, num_candidates)``
    score matrix in memory: a gallery that fits on the device, not an approximate index.
    A NaN in a query gives NaN distances and arbitrary ids for that query.

    Args:
        k: number of neighbours returned, an int in ``[1, num_candidates]``.
        metric: a :mod:`keras_featreg.distances` name or object; it ranks as its
            ``evaluation_metric``, ``"euclidean"``, ``"cosine"`` or ``"dot_product"``
            (the rule of :mod:`keras_featreg.evaluation` and :mod:`keras_featreg.search`),
            which is what the layer computes and saves.  Default ``"euclidean"``.
        candidates: optional ``(num_candidates, dim)`` float array: the gallery (see
            :meth:`set_candidates`).
        ids: optional ``(num_candidates,)`` distinct integer ids of the candidates
            (default ``0 .. num_candidates - 1``).
        labels: optional ``(num_candidates,)`` integer labels of the candidates.
        num_candidates, dim, has_labels: the shape of a gallery filled later (by
            :meth:`set_candidates` or by loading saved weights); inferred from
            ``candidates`` when given.  ``dim`` defaults to the last dimension of the input.
            They are what ``get_config`` saves: the gallery itself travels as weights.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.layers import NearestNeighbors
    >>> gallery = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], "float32")
    >>> knn = NearestNeighbors(2, candidates=gallery, ids=[10, 11, 12])
    >>> out = knn(np.array([[0.9, 0.1]], "float32"))
    >>> np.asarray(out["ids"]).tolist()
    [[11, 10]]
    >>> np.asarray(out["distances"], dtype=float).round(4).tolist()
    [[0.1414, 0.9055]]
    """

    def __init__(self, k, metric="euclidean", candidates=None, ids=None, labels=None,
                 num_candidates=None, dim=None, has_labels=False, **kwargs):
        super().__init__(**kwargs)
        self.k = _utils.check_int("k", k)
        # The ranking rule of evaluation and search: "euclidean", "cosine" or "dot_product".
        self.metric = ranking_of(metric)
        self.distance = distances_lib.get(self.metric)
        self.num_candidates = _utils.check_optional_int("num_candidates", num_candidates)
        self.dim = _utils.check_optional_int("dim", dim)
        self.has_labels = _utils.check_bool("has_labels", has_labels)
        if self.num_candidates is not None:
            self._check_k(self.num_candidates)
        if candidates is not None:
            self.set_candidates(candidates, ids=ids, labels=labels)
        elif ids is not None or labels is not None:
            raise ValueError(
                "`ids` and `labels` describe `candidates`: pass `candidates` with them. "
                f"Received: candidates=None, ids={ids is not None and 'given'}, "
                f"labels={labels is not None and 'given'}")

    def _check_k(self, num_candidates):
        if self.k > num_candidates:
            raise ValueError(
                f"`k` must be in [1, number of candidates] = [1, {num_candidates}]. "
                f"Received: k={self.k}")

    def build(self, input_shape=None):
        dim = None if input_shape is None else _utils.static_size(input_shape[-1])
        if self.dim is not None and dim is not None and dim != self.dim:
            raise ValueError(
                f"`queries` must have {self.dim} features, the dimension of the candidates. "
                f"Received: queries.shape={tuple(input_shape)}")
        if self.dim is None:
            self.dim = dim
        if self.num_candidates is None or self.dim is None:
            raise ValueError(
                "NearestNeighbors needs its gallery's shape before it is built: pass "
                "`candidates=` (or `num_candidates=` and `dim=`, then call set_candidates()). "
                f"Received: num_candidates={self.num_candidates}, dim={self.dim}")
        n = self.num_candidates
        self.candidates = self.add_weight(
            name="candidates", shape=(n, self.dim), initializer="zeros", trainable=False,
            autocast=False)
        self.ids = self.add_weight(
            name="ids", shape=(n,), dtype="int32", trainable=False,
            initializer=lambda shape, dtype=None: ops.arange(shape[0], dtype="int32"))
        self.labels = None
        if self.has_labels:
            self.labels = self.add_weight(
                name="labels", shape=(n,), dtype="int32", initializer="zeros",
                trainable=False)
        self.built = True

    def set_candidates(self, candidates, ids=None, labels=None):
        """Fills the gallery: creates the weights on first use, then assigns them.

        The gallery's shape is fixed once the layer is built (the weights' shape): later
        calls must pass the same number of candidates, dimension and presence of labels
        (build a new layer for another gallery size).

        Args:
            candidates: ``(num_candidates, dim)`` finite float array or tensor.
            ids: optional ``(num_candidates,)`` distinct integers (int32 range); default
                ``0 .. num_candidates - 1``.
            labels: optional ``(num_candidates,)`` integers (int32 range); required when
                the gallery was built with labels, refused when it was built without.

        Raises:
            ValueError: naming ``candidates``, ``ids`` or ``labels``, for a wrong shape,
                dtype or non-finite value, repeated ids, or fewer candidates than ``k``.
        """
        if not isinstance(candidates, np.ndarray) and hasattr(candidates, "shape"):
            candidates = ops.convert_to_numpy(candidates)  # a backend tensor
        values = np.asarray(candidates)
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ValueError(
                "`candidates` must be a non-empty matrix, shape (num_candidates, dim). "
                f"Received: candidates.shape={values.shape}")
        if values.dtype.kind not in "fiu":
            raise ValueError(
                f"`candidates` must be numeric (float). Received: candidates.dtype={values.dtype}")
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "`candidates` must be finite. Received: candidates with "
                f"{int(np.count_nonzero(~np.isfinite(values).all(axis=1)))} rows holding NaN or inf")
        n, d = values.shape
        ids = np.arange(n, dtype=np.int32) if ids is None else _id_vector(ids, n, "ids")
        if np.unique(ids).size != n:
            raise ValueError(
                f"`ids` must be distinct. Received: {n - np.unique(ids).size} repeated ids")
        labels = None if labels is None else _id_vector(labels, n, "labels")
        if self.built:
            if (n, d) != (self.num_candidates, self.dim):
                raise ValueError(
                    "The gallery's shape is fixed once the layer is built: `candidates` must "
                    f"have shape ({self.num_candidates}, {self.dim}). "
                    f"Received: candidates.shape={values.shape}")
            if (labels is not None) != self.has_labels:
                raise ValueError(
                    f"This gallery was built {'with' if self.has_labels else 'without'} "
                    f"labels: `labels` must be {'given' if self.has_labels else 'None'}. "
                    f"Received: labels={'None' if labels is None else 'given'}")
        else:
            if self.num_candidates is not None and n != self.num_candidates:
                raise ValueError(
                    f"`candidates` must have num_candidates={self.num_candidates} rows. "
                    f"Received: candidates.shape={values.shape}")
            if self.dim is not None and d != self.dim:
                raise ValueError(
                    f"`candidates` must have dim={self.dim} columns. "
                    f"Received: candidates.shape={values.shape}")
            if self.has_labels and labels is None:
                raise ValueError(
                    "`labels` must be given: the layer was configured with has_labels=True. "
                    "Received: labels=None")
            self._check_k(n)
            self.num_candidates, self.dim = n, d
            self.has_labels = labels is not None
            self.build((None, d))
        self.candidates.assign(values.astype(self.candidates.dtype))
        self.ids.assign(ids)
        if labels is not None:
            self.labels.assign(labels)

    def call(self, queries):
        queries = _utils.as_float_tensor(queries, name="queries", min_rank=2, max_rank=2)
        self._check_queries(queries.shape)
        scores = self.distance(queries, ops.convert_to_tensor(self.candidates))
        distances = self.distance.as_distance(scores)  # smaller is closer (dot negated)
        # top_k keeps the largest; negation is exact, so no value changes on the way.
        best, index = _backend.top_k(ops.negative(distances), k=self.k)
        outputs = {
            "distances": ops.negative(best),
            "ids": ops.take(ops.convert_to_tensor(self.ids), index, axis=0),
        }
        if self.has_labels:
            outputs["labels"] = ops.take(ops.convert_to_tensor(self.labels), index, axis=0)
        return outputs

    def _check_queries(self, shape):
        if len(shape) != 2:
            raise ValueError(
                "`queries` must have rank 2, shape (batch_size, dim). "
                f"Received: queries.shape={tuple(shape)}")
        dim = _utils.static_size(shape[-1])
        if dim is not None and dim != self.dim:
            raise ValueError(
                f"`queries` must have {self.dim} features, the dimension of the candidates. "
                f"Received: queries.shape={tuple(shape)}")

    def compute_output_spec(self, queries):
        self._check_queries(queries.shape)
        dtypes = (_utils.compute_dtype(queries), _utils.compute_dtype(self.candidates))
        dtype = "float64" if "float64" in dtypes else "float32"
        shape = (queries.shape[0], self.k)
        spec = {
            "distances": keras.KerasTensor(shape, dtype=dtype),
            "ids": keras.KerasTensor(shape, dtype="int32"),
        }
        if self.has_labels:
            spec["labels"] = keras.KerasTensor(shape, dtype="int32")
        return spec

    def get_config(self):
        return {
            **super().get_config(),
            "k": self.k,
            "metric": self.metric,
            "num_candidates": self.num_candidates,
            "dim": self.dim,
            "has_labels": self.has_labels,
        }
