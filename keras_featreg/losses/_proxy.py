"""Losses with class weights: ProxyAnchor, ArcFace and CosFace, and their head layer.

A Keras loss cannot own trainable weights under ``model.fit``, so the class weights
(proxies) live in a layer, :class:`ProxyHead`, placed after the embedding; its output is
the ``(b, num_classes)`` matrix of cosine similarities between the L2-normalized
embeddings and the L2-normalized proxies. The losses are stateless functions of
``(labels, cosines)``::

    loss = ProxyAnchorLoss(num_classes=100, embedding_size=64)
    inputs = keras.Input((128,))
    embedding = keras.layers.Dense(64)(inputs)
    model = keras.Model(inputs, loss.head()(embedding))
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y)                        # y: integer labels in [0, num_classes)
    retrieval = embedding_model(model)     # inputs -> the embedding, for retrieval

Retrieval uses the embedding (the head's input), not the cosines.
"""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import mining as mining_lib
from keras_featreg.losses._base import (
    KERAS_DEFAULT_REDUCTION,
    PACKAGE,
    BatchLoss,
    check_batch_size,
    check_int,
    check_margin,
    check_positive,
)
from keras_featreg.ops.distances import cosine_similarity_matrix

# ------------------------------------------------------------------------- the head layer


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


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        self.num_classes = check_int("num_classes", num_classes)
        self.embedding_size = (None if embedding_size is None
                               else check_int("embedding_size", embedding_size))
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
    heads = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, ProxyHead)]
    if len(heads) != 1:
        raise ValueError(
            "`model` must contain exactly one ProxyHead layer (the loss's `head()`). "
            f"Received: model with {len(heads)} ProxyHead layers")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.input
    return keras.Model(inputs, heads[0].input)


# ------------------------------------------------------------------------ shared helpers


def _cosines_and_labels(y_true, y_pred, num_classes, loss_name):
    cosines = _utils.as_float_tensor(y_pred, name="y_pred", min_rank=2, max_rank=2)
    if cosines.shape[-1] is not None and int(cosines.shape[-1]) != num_classes:
        raise ValueError(
            f"{loss_name} expects `y_pred` = the (batch_size, num_classes) cosine matrix of "
            f"its head: put `loss.head()` after the embedding layer (model output = "
            f"loss.head()(embedding)). Expected: y_pred.shape[-1] == num_classes == "
            f"{num_classes}. Received: y_pred.shape={tuple(cosines.shape)}")
    labels = mining_lib.labels_vector(y_true, name="y_true")
    n_labels, n_rows = labels.shape[0], cosines.shape[0]
    if n_labels is not None and n_rows is not None and n_labels != n_rows:
        raise ValueError(
            "`y_true` and `y_pred` must have the same batch size. Received: "
            f"y_true.shape={tuple(ops.shape(y_true))}, y_pred.shape={tuple(cosines.shape)}")
    labels = ops.cast(labels, "int32")
    return labels, cosines


def _one_hot(labels, num_classes):
    """``(b, C)`` bool one-hot and a scalar bool: every label lies in [0, num_classes)."""
    classes = ops.arange(num_classes, dtype="int32")
    one_hot = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(classes, 0))
    in_range = ops.all(ops.logical_and(labels >= 0, labels < num_classes))
    return one_hot, in_range


def _finish(value, cosines, in_range, *inputs):
    """NaN for non-finite inputs (cosines, embeddings, proxies) or out-of-range labels."""
    value = _utils.propagate_nonfinite(value, cosines, *inputs)
    return _utils.nan_unless(in_range, value)


def _cross_entropy(logits, one_hot):
    """Per-row ``logsumexp(logits) - logits[y]``, shape (b,)."""
    target = ops.sum(ops.where(one_hot, logits, ops.zeros_like(logits)), axis=1)
    return ops.logsumexp(logits, axis=1) - target


def _cosines_from_embeddings(embeddings, proxies):
    embeddings = _utils.as_float_tensor(embeddings, name="embeddings", min_rank=2, max_rank=2)
    proxies = _utils.as_float_tensor(proxies, name="proxies", min_rank=2, max_rank=2)
    if (embeddings.shape[-1] is not None and proxies.shape[-1] is not None
            and int(embeddings.shape[-1]) != int(proxies.shape[-1])):
        raise ValueError(
            "`embeddings` and `proxies` must have the same last dimension (proxies are "
            "(num_classes, embedding_size)). Received: "
            f"embeddings.shape={tuple(embeddings.shape)}, proxies.shape={tuple(proxies.shape)}")
    return cosine_similarity_matrix(embeddings, proxies), embeddings, proxies


# -------------------------------------------------------------------------- ProxyAnchor


def proxy_anchor_loss(labels, cosines, margin=0.1, alpha=32.0):
    """Proxy-Anchor loss (Kim et al., CVPR 2020) of a ``(b, C)`` cosine matrix.

    ::

        pos_c = log(1 + sum_{i: y_i = c}  exp(-alpha (cos_ic - margin)))
        neg_c = log(1 + sum_{i: y_i != c} exp( alpha (cos_ic + margin)))
        loss  = sum_c pos_c / |P+|  +  sum_c neg_c / C

    ``P+`` = the classes present in the batch (the positive term is 0 when there is none),
    ``C`` = all proxies (as PML: also those without a negative in the batch).

    Args:
        labels: integer labels ``(b,)`` in ``[0, C)``; out-of-range labels give NaN.
        cosines: ``(b, C)`` cosine similarities (the :class:`ProxyHead` output).
        margin: float >= 0. alpha: float > 0.

    Returns:
        Scalar tensor.
    """
    labels = ops.cast(mining_lib.labels_vector(labels, name="labels"), "int32")
    cosines = _utils.as_float_tensor(cosines, name="cosines", min_rank=2, max_rank=2)
    num_classes = int(cosines.shape[-1])
    one_hot, in_range = _one_hot(labels, num_classes)
    pos = mining_lib.masked_logsumexp(-alpha * (cosines - margin), one_hot, axis=0,
                                      include_zero=True)
    neg = mining_lib.masked_logsumexp(alpha * (cosines + margin), ops.logical_not(one_hot),
                                      axis=0, include_zero=True)
    present = ops.sum(ops.cast(ops.any(one_hot, axis=0), cosines.dtype))
    value = ops.sum(pos) / ops.maximum(present, 1.0) + ops.sum(neg) / float(num_classes)
    return _finish(value, cosines, in_range)


def proxy_anchor_loss_from_embeddings(labels, embeddings, proxies, margin=0.1, alpha=32.0):
    """:func:`proxy_anchor_loss` of embeddings ``(b, d)`` and proxies ``(C, d)``."""
    cosines, embeddings, proxies = _cosines_from_embeddings(embeddings, proxies)
    return _utils.propagate_nonfinite(
        proxy_anchor_loss(labels, cosines, margin, alpha), embeddings, proxies)


# ----------------------------------------------------------------------- ArcFace/CosFace


def _arcface_target(cos_y, margin_radians):
    """``cos(theta + m)`` where ``theta = acos(c) <= pi - m``, else ``c - m sin m``.

    ``cos(theta + m) = c cos m - sqrt(1 - c^2) sin m``, with the square root of
    ``(1 - c)(1 + c)`` taken by :func:`~keras_featreg.ops.distances.safe_sqrt`: no
    ``acos``, and a finite gradient at ``c = 1`` (a row equal to its class weight), where
    PML's ``acos`` gives an infinite one. ``theta <= pi - m`` is ``c >= -cos m``.
    """
    from keras_featreg.ops.distances import safe_sqrt

    c = ops.clip(cos_y, -1.0, 1.0)
    cos_m, sin_m = math.cos(margin_radians), math.sin(margin_radians)
    sine = safe_sqrt((1.0 - c) * (1.0 + c))
    return ops.where(c >= -cos_m, c * cos_m - sine * sin_m, c - margin_radians * sin_m)


def _margin_softmax(labels, cosines, target_fn, scale):
    labels = ops.cast(mining_lib.labels_vector(labels, name="labels"), "int32")
    cosines = _utils.as_float_tensor(cosines, name="cosines", min_rank=2, max_rank=2)
    num_classes = int(cosines.shape[-1])
    one_hot, in_range = _one_hot(labels, num_classes)
    cos_y = ops.sum(ops.where(one_hot, cosines, ops.zeros_like(cosines)), axis=1)
    target = target_fn(cos_y)
    logits = scale * ops.where(one_hot, ops.expand_dims(target, 1), cosines)
    per_sample = _cross_entropy(logits, one_hot)
    return _finish(_utils.mean(per_sample), cosines, in_range)


def arcface_loss(labels, cosines, margin=28.6, scale=64.0):
    """ArcFace loss (Deng et al., CVPR 2019) of a ``(b, C)`` cosine matrix.

    ``m = radians(margin)`` (the margin is in DEGREES, as PML); target logit
    ``cos(theta_y + m)`` when ``theta_y <= pi - m``, else ``cos_y - m sin m``; other logits
    ``cos_ic``; all times `scale`; loss = mean over the rows of the cross-entropy.
    The gradient is finite where a row equals its class weight (``cos_y = 1``).

    Args:
        labels: integer labels ``(b,)`` in ``[0, C)``; out-of-range labels give NaN.
        cosines: ``(b, C)`` cosine similarities (the :class:`ProxyHead` output).
        margin: degrees, >= 0. scale: > 0.
    """
    m = math.radians(margin)
    return _margin_softmax(labels, cosines, lambda c: _arcface_target(c, m), scale)


def cosface_loss(labels, cosines, margin=0.35, scale=64.0):
    """CosFace loss (Wang et al., CVPR 2018) of a ``(b, C)`` cosine matrix.

    Target logit ``cos_y - margin``, other logits ``cos_ic``, all times `scale`; loss =
    mean over the rows of the cross-entropy.

    Args:
        labels: integer labels ``(b,)`` in ``[0, C)``; out-of-range labels give NaN.
        cosines: ``(b, C)`` cosine similarities (the :class:`ProxyHead` output).
        margin: >= 0. scale: > 0.
    """
    return _margin_softmax(labels, cosines, lambda c: c - margin, scale)


def arcface_loss_from_embeddings(labels, embeddings, proxies, margin=28.6, scale=64.0):
    """:func:`arcface_loss` of embeddings ``(b, d)`` and class weights ``(C, d)``."""
    cosines, embeddings, proxies = _cosines_from_embeddings(embeddings, proxies)
    return _utils.propagate_nonfinite(
        arcface_loss(labels, cosines, margin, scale), embeddings, proxies)


def cosface_loss_from_embeddings(labels, embeddings, proxies, margin=0.35, scale=64.0):
    """:func:`cosface_loss` of embeddings ``(b, d)`` and class weights ``(C, d)``."""
    cosines, embeddings, proxies = _cosines_from_embeddings(embeddings, proxies)
    return _utils.propagate_nonfinite(
        cosface_loss(labels, cosines, margin, scale), embeddings, proxies)


# ------------------------------------------------------------------------------ classes


class _ProxyLoss(BatchLoss):
    """Base: ``y_true`` labels ``(b,)``, ``y_pred`` the head's ``(b, num_classes)`` cosines."""

    head_initializer = staticmethod(large_margin_initializer)

    def __init__(self, num_classes, embedding_size, margin, reduction, name, dtype):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        self.num_classes = check_int("num_classes", num_classes)
        self.embedding_size = (None if embedding_size is None
                               else check_int("embedding_size", embedding_size))
        self.margin = check_margin(margin)

    def head(self, name=None):
        """A new :class:`ProxyHead` of this loss's size and PML's initializer."""
        return ProxyHead(self.num_classes, self.embedding_size,
                         initializer=self.head_initializer(), name=name)

    def call(self, y_true, y_pred):
        labels, cosines = _cosines_and_labels(y_true, y_pred, self.num_classes,
                                              type(self).__name__)
        return self.compute(labels, cosines)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "embedding_size": self.embedding_size,
                       "margin": self.margin})
        return config




@keras.saving.register_keras_serializable(package=PACKAGE)
class ProxyAnchorLoss(_ProxyLoss):
    """Proxy-Anchor loss (Kim et al., CVPR 2020), as pytorch-metric-learning 2.9.

    ``y_true``: integer labels ``(b,)`` in ``[0, num_classes)``; ``y_pred``: the
    ``(b, num_classes)`` cosines of :meth:`head` (a :class:`ProxyHead`, which owns the
    trainable proxies). See :func:`proxy_anchor_loss` for the formula.

    Train with the head, retrieve with the embedding::

        loss = ProxyAnchorLoss(num_classes=100, embedding_size=64)
        embedding = keras.layers.Dense(64)(inputs)
        model = keras.Model(inputs, loss.head()(embedding))
        model.compile(optimizer="adam", loss=loss)
        model.fit(x, y)  # y: integer labels in [0, num_classes)
        retrieval = keras_featreg.layers.embedding_model(model)  # inputs -> embedding

    Args:
        num_classes: int >= 1.
        embedding_size: int >= 1, or None (the head infers it from its input).
        margin: float >= 0. Defaults to `0.1`.
        alpha: float > 0. Defaults to `32`.
        reduction: only Keras's default is accepted (the value is a batch statistic;
            ``sample_weight`` is refused too).
        name, dtype: as ``keras.losses.Loss``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import ProxyAnchorLoss
    >>> loss = ProxyAnchorLoss(num_classes=2, embedding_size=2, margin=0.0, alpha=1.0)
    >>> cosines = np.array([[1.0, 0.0], [0.0, 1.0]])  # each row on its proxy
    >>> round(float(loss(np.array([0, 1]), cosines)), 6)  # log(1 + e^-1) + log 2
    1.006409
    >>> loss.head().num_classes
    2
    """

    head_initializer = staticmethod(proxy_anchor_initializer)

    def __init__(self, num_classes, embedding_size=None, margin=0.1, alpha=32.0,
                 reduction=KERAS_DEFAULT_REDUCTION, name="proxy_anchor_loss", dtype=None):
        super().__init__(num_classes, embedding_size, margin, reduction, name, dtype)
        self.alpha = check_positive("alpha", alpha)

    def compute(self, labels, cosines):
        return proxy_anchor_loss(labels, cosines, self.margin, self.alpha)

    def bounds(self, batch_size):
        """(lower, upper) for any batch of `batch_size` (cosines lie in [-1, 1]).

        Lower 0 (an infimum: every term is a ``log(1 + ...)``). Upper, with
        ``E = exp(alpha (1 + margin))``: the positive term is a mean of
        ``pos_c <= log(1 + n_c E) <= log(1 + b E)``; the negative term is
        ``(1 / C) sum_c log(1 + k_c E)`` with ``sum_c k_c = b (C - 1)``, at most
        ``log(1 + b (1 - 1/C) E)`` by concavity.
        """
        b = check_batch_size(batch_size)
        log_e = self.alpha * (1.0 + self.margin)
        upper = _log1p_exp(math.log(b) + log_e)
        if self.num_classes > 1:
            upper += _log1p_exp(math.log(b * (1.0 - 1.0 / self.num_classes)) + log_e)
        return (0.0, upper)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


def _log1p_exp(x):
    """``log(1 + e^x)`` without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


class _MarginSoftmaxLoss(_ProxyLoss):
    def __init__(self, num_classes, embedding_size, margin, scale, reduction, name, dtype):
        super().__init__(num_classes, embedding_size, margin, reduction, name, dtype)
        self.scale = check_positive("scale", scale)

    def _min_target(self):
        raise NotImplementedError

    def bounds(self, batch_size):
        """(lower, upper): ``[0, log(1 + (C - 1) exp(scale (1 - min target logit)))]``.

        Lower 0 (an infimum of a cross-entropy); upper: every other logit is at most
        ``scale`` and the target logit at least ``scale * min target``, per row, so the
        mean over rows too (independent of `batch_size`).
        """
        check_batch_size(batch_size)
        if self.num_classes == 1:
            return (0.0, 0.0)
        return (0.0, _log1p_exp(math.log(self.num_classes - 1)
                                + self.scale * (1.0 - self._min_target())))

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArcFaceLoss(_MarginSoftmaxLoss):
    """ArcFace additive angular margin loss (Deng et al., CVPR 2019), as PML 2.9.

    ``y_true``: integer labels ``(b,)`` in ``[0, num_classes)``; ``y_pred``: the
    ``(b, num_classes)`` cosines of :meth:`head` (a :class:`ProxyHead`, which owns the
    trainable class weights). See :func:`arcface_loss` for the formula; the margin is in
    degrees (PML's convention; 28.6 degrees = 0.5 rad). Unlike PML, the gradient is
    finite where an embedding equals its class weight.

    Train with the head, retrieve with the embedding::

        loss = ArcFaceLoss(num_classes=100, embedding_size=64)
        embedding = keras.layers.Dense(64)(inputs)
        model = keras.Model(inputs, loss.head()(embedding))
        model.compile(optimizer="adam", loss=loss)
        model.fit(x, y)  # y: integer labels in [0, num_classes)
        retrieval = keras_featreg.layers.embedding_model(model)  # inputs -> embedding

    Args:
        num_classes: int >= 1.
        embedding_size: int >= 1, or None (the head infers it from its input).
        margin: degrees, >= 0. Defaults to `28.6`.
        scale: float > 0. Defaults to `64`.
        reduction: only Keras's default is accepted (``sample_weight`` is refused too).
        name, dtype: as ``keras.losses.Loss``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import ArcFaceLoss
    >>> loss = ArcFaceLoss(num_classes=2, embedding_size=2, margin=90.0, scale=1.0)
    >>> # target cos(0 + 90 deg) = 0, other logit 0: cross-entropy log 2
    >>> round(float(loss(np.array([0]), np.array([[1.0, 0.0]]))), 6)
    0.693147
    """

    def __init__(self, num_classes, embedding_size=None, margin=28.6, scale=64.0,
                 reduction=KERAS_DEFAULT_REDUCTION, name="arcface_loss", dtype=None):
        super().__init__(num_classes, embedding_size, margin, scale, reduction, name, dtype)

    def compute(self, labels, cosines):
        return arcface_loss(labels, cosines, self.margin, self.scale)

    def _min_target(self):
        # cos(theta + m) >= -1 on the first branch; c - m sin m >= -1 - m sin m on the other.
        m = math.radians(self.margin)
        return min(-1.0, -1.0 - m * math.sin(m))


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosFaceLoss(_MarginSoftmaxLoss):
    """CosFace large margin cosine loss (Wang et al., CVPR 2018), as PML 2.9.

    ``y_true``: integer labels ``(b,)`` in ``[0, num_classes)``; ``y_pred``: the
    ``(b, num_classes)`` cosines of :meth:`head` (a :class:`ProxyHead`, which owns the
    trainable class weights). See :func:`cosface_loss` for the formula.

    Train with the head, retrieve with the embedding::

        loss = CosFaceLoss(num_classes=100, embedding_size=64)
        embedding = keras.layers.Dense(64)(inputs)
        model = keras.Model(inputs, loss.head()(embedding))
        model.compile(optimizer="adam", loss=loss)
        model.fit(x, y)  # y: integer labels in [0, num_classes)
        retrieval = keras_featreg.layers.embedding_model(model)  # inputs -> embedding

    Args:
        num_classes: int >= 1.
        embedding_size: int >= 1, or None (the head infers it from its input).
        margin: float >= 0. Defaults to `0.35`.
        scale: float > 0. Defaults to `64`.
        reduction: only Keras's default is accepted (``sample_weight`` is refused too).
        name, dtype: as ``keras.losses.Loss``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import CosFaceLoss
    >>> loss = CosFaceLoss(num_classes=2, embedding_size=2, margin=1.0, scale=1.0)
    >>> # target 1 - 1 = 0, other logit 0: cross-entropy log 2
    >>> round(float(loss(np.array([0]), np.array([[1.0, 0.0]]))), 6)
    0.693147
    """

    def __init__(self, num_classes, embedding_size=None, margin=0.35, scale=64.0,
                 reduction=KERAS_DEFAULT_REDUCTION, name="cosface_loss", dtype=None):
        super().__init__(num_classes, embedding_size, margin, scale, reduction, name, dtype)

    def compute(self, labels, cosines):
        return cosface_loss(labels, cosines, self.margin, self.scale)

    def _min_target(self):
        return -1.0 - self.margin
