"""Layer-attached regularization: a pass-through layer and a helper for existing models."""

import keras

from keras_featreg.losses._proxy import ProxyHead, embedding_model  # noqa: F401
from keras_featreg.regularizers import FeatureRegularizer

_PACKAGE = "keras_featreg"


def _get_regularizer(regularizer):
    regularizer = keras.regularizers.get(regularizer)
    if not isinstance(regularizer, FeatureRegularizer):
        raise ValueError(
            "`regularizer` must be a keras_featreg regularizer (SVMax, VICReg, SpreadOut) or "
            f"its config. Received: regularizer={regularizer!r}"
        )
    return regularizer


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
    for layer in model._flatten_layers(include_self=False, recursive=True):
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
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer.activity_regularizer, FeatureRegularizer) and _select(layer, layers):
            layer.activity_regularizer = None
            detached.append(layer.name)
    return detached


from keras_featreg.losses._xbm import EmbeddingMemory  # noqa: E402,F401  (the memory of CrossBatchMemory)
