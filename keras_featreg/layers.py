"""The layers of keras-featreg.

* :class:`EmbeddingRegularization`: passes its input through and adds a feature
  regularizer's penalty; :func:`attach_regularizer` / :func:`detach_regularizers` set one
  on the layers of an existing model.
* :class:`ProxyHead`: the class weights (proxies) of the proxy losses
  (:class:`~keras_featreg.losses.ProxyAnchorLoss`, ArcFace, CosFace) and the cosines to
  them; :func:`embedding_model` cuts a trained model back to its embedding.
* :class:`EmbeddingMemory`: the memory of :class:`~keras_featreg.losses.CrossBatchMemory`.
"""

import weakref

import keras
from keras import ops

from keras_featreg import _utils
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
