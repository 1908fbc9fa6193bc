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
    retrieval = keras_featreg.layers.embedding_model(model)  # inputs -> the embedding

Retrieval uses the embedding (the head's input), not the cosines.
"""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg.layers import ProxyHead, large_margin_initializer, proxy_anchor_initializer
from keras_featreg.losses._base import PACKAGE, BatchLoss, check_batch_size
from keras_featreg.ops.labels import check_labels
from keras_featreg.ops.masked import masked_logsumexp
from keras_featreg.ops.pairwise import cosine_similarity_matrix, safe_sqrt

# ---------------------------------------------------------------------------- functions


def proxy_anchor_loss(labels, cosines, **kwargs):
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
        **kwargs: the arguments of :class:`ProxyAnchorLoss` (``margin``, ``alpha``).

    Returns:
        Scalar tensor.
    """
    return _functional(ProxyAnchorLoss, labels, cosines, kwargs)


def arcface_loss(labels, cosines, **kwargs):
    """ArcFace loss (Deng et al., CVPR 2019) of a ``(b, C)`` cosine matrix.

    ``m = radians(margin)`` (the margin is in DEGREES, as PML); target logit
    ``cos(theta_y + m)`` when ``theta_y <= pi - m``, else ``cos_y - m sin m``; other logits
    ``cos_ic``; all times `scale`; loss = mean over the rows of the cross-entropy.
    The gradient is finite where a row equals its class weight (``cos_y = 1``).

    Args:
        labels: integer labels ``(b,)`` in ``[0, C)``; out-of-range labels give NaN.
        cosines: ``(b, C)`` cosine similarities (the :class:`ProxyHead` output).
        **kwargs: the arguments of :class:`ArcFaceLoss` (``margin`` in degrees, ``scale``).
    """
    return _functional(ArcFaceLoss, labels, cosines, kwargs)


def cosface_loss(labels, cosines, **kwargs):
    """CosFace loss (Wang et al., CVPR 2018) of a ``(b, C)`` cosine matrix.

    Target logit ``cos_y - margin``, other logits ``cos_ic``, all times `scale`; loss =
    mean over the rows of the cross-entropy.

    Args:
        labels: integer labels ``(b,)`` in ``[0, C)``; out-of-range labels give NaN.
        cosines: ``(b, C)`` cosine similarities (the :class:`ProxyHead` output).
        **kwargs: the arguments of :class:`CosFaceLoss` (``margin``, ``scale``).
    """
    return _functional(CosFaceLoss, labels, cosines, kwargs)


def proxy_anchor_loss_from_embeddings(labels, embeddings, proxies, **kwargs):
    """:func:`proxy_anchor_loss` of embeddings ``(b, d)`` and proxies ``(C, d)``."""
    return _from_embeddings(proxy_anchor_loss, labels, embeddings, proxies, kwargs)


def arcface_loss_from_embeddings(labels, embeddings, proxies, **kwargs):
    """:func:`arcface_loss` of embeddings ``(b, d)`` and class weights ``(C, d)``."""
    return _from_embeddings(arcface_loss, labels, embeddings, proxies, kwargs)


def cosface_loss_from_embeddings(labels, embeddings, proxies, **kwargs):
    """:func:`cosface_loss` of embeddings ``(b, d)`` and class weights ``(C, d)``."""
    return _from_embeddings(cosface_loss, labels, embeddings, proxies, kwargs)


def _functional(cls, labels, cosines, kwargs):
    cosines = _utils.as_float_tensor(cosines, name="cosines", min_rank=2, max_rank=2)
    loss = cls(num_classes=_utils.check_int("cosines.shape[-1]", cosines.shape[-1]), **kwargs)
    return loss.call(labels, cosines)


def _from_embeddings(function, labels, embeddings, proxies, kwargs):
    embeddings = _utils.as_float_tensor(embeddings, name="embeddings", min_rank=2, max_rank=2)
    proxies = _utils.as_float_tensor(proxies, name="proxies", min_rank=2, max_rank=2)
    if (embeddings.shape[-1] is not None and proxies.shape[-1] is not None
            and int(embeddings.shape[-1]) != int(proxies.shape[-1])):
        raise ValueError(
            "`embeddings` and `proxies` must have the same last dimension (proxies are "
            "(num_classes, embedding_size)). Received: "
            f"embeddings.shape={tuple(embeddings.shape)}, proxies.shape={tuple(proxies.shape)}")
    cosines = cosine_similarity_matrix(embeddings, proxies)
    return _utils.propagate_nonfinite(function(labels, cosines, **kwargs), embeddings, proxies)


# ------------------------------------------------------------------------------ helpers


def _one_hot(labels, num_classes):
    """``(b, C)`` bool one-hot and a scalar bool: every label lies in [0, num_classes)."""
    classes = ops.arange(num_classes, dtype="int32")
    one_hot = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(classes, 0))
    in_range = ops.all(ops.logical_and(labels >= 0, labels < num_classes))
    return one_hot, in_range


def _log1p_exp(x):
    """``log(1 + e^x)`` in Python floats without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _arcface_target(cos_y, margin_radians):
    """``cos(theta + m)`` where ``theta = acos(c) <= pi - m``, else ``c - m sin m``.

    ``cos(theta + m) = c cos m - sqrt(1 - c^2) sin m``, with the square root of
    ``(1 - c)(1 + c)`` taken by :func:`~keras_featreg.ops.pairwise.safe_sqrt`: no
    ``acos``, and a finite gradient at ``c = 1`` (a row equal to its class weight), where
    PML's ``acos`` gives an infinite one. ``theta <= pi - m`` is ``c >= -cos m``.
    """
    c = ops.clip(cos_y, -1.0, 1.0)
    cos_m, sin_m = math.cos(margin_radians), math.sin(margin_radians)
    sine = safe_sqrt((1.0 - c) * (1.0 + c))
    return ops.where(c >= -cos_m, c * cos_m - sine * sin_m, c - margin_radians * sin_m)


# ------------------------------------------------------------------------------ classes


class _ProxyLoss(BatchLoss):
    """Base: ``y_true`` labels ``(b,)``, ``y_pred`` the head's ``(b, num_classes)`` cosines.

    A subclass implements ``compute_loss(cosines, one_hot)`` on the validated cosines and
    the ``(b, C)`` one-hot labels; labels outside ``[0, num_classes)`` and non-finite
    cosines give NaN.
    """

    config_keys = ("num_classes", "embedding_size", "margin")

    head_initializer = staticmethod(large_margin_initializer)

    def __init__(self, num_classes, embedding_size=None, margin=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = _utils.check_int("num_classes", num_classes)
        self.embedding_size = _utils.check_optional_int("embedding_size", embedding_size)
        self.margin = _utils.check_number("margin", margin, minimum=0.0)

    def head(self, name=None):
        """A new :class:`ProxyHead` of this loss's size and PML's initializer."""
        return ProxyHead(self.num_classes, self.embedding_size,
                         initializer=self.head_initializer(), name=name)

    def call(self, y_true, y_pred):
        cosines = _utils.as_float_tensor(y_pred, name="y_pred", min_rank=2, max_rank=2)
        if cosines.shape[-1] is not None and int(cosines.shape[-1]) != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} expects `y_pred` = the (batch_size, num_classes) "
                "cosine matrix of its head: put `loss.head()` after the embedding layer "
                "(model output = loss.head()(embedding)). Expected: y_pred.shape[-1] == "
                f"num_classes == {self.num_classes}. Received: y_pred.shape={tuple(cosines.shape)}")
        labels, cosines = check_labels(y_true, cosines)
        labels = ops.cast(labels, "int32")
        if self.cross_replica:
            labels = _backend.gather_replicas(labels)
            cosines = _backend.gather_replicas(cosines)
        one_hot, in_range = _one_hot(labels, self.num_classes)
        value = _utils.propagate_nonfinite(self.compute_loss(cosines, one_hot), cosines)
        return _utils.nan_unless(in_range, value)

    def compute_loss(self, cosines, one_hot):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProxyAnchorLoss(_ProxyLoss):
    """Proxy-Anchor loss (Kim et al., CVPR 2020), as pytorch-metric-learning 2.9.

    ``y_true``: integer labels ``(b,)`` in ``[0, num_classes)``; ``y_pred``: the
    ``(b, num_classes)`` cosines of :meth:`head` (a :class:`ProxyHead`, which owns the
    trainable proxies). See :func:`proxy_anchor_loss` for the formula.

    Train with the head (``model output = loss.head()(embedding)``), retrieve with the
    embedding (:func:`keras_featreg.layers.embedding_model`): see this module's usage.

    Args:
        num_classes, embedding_size: the number of classes (int >= 1) and the embedding
            size (int >= 1, or None: the head infers it from its input).
        margin: float >= 0. Defaults to `0.1`.
        alpha: float > 0. Defaults to `32`.
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.BatchLoss`).

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

    config_keys = ("alpha",)

    head_initializer = staticmethod(proxy_anchor_initializer)

    def __init__(self, num_classes, embedding_size=None, margin=0.1, alpha=32.0, **kwargs):
        super().__init__(num_classes, embedding_size, margin, **kwargs)
        self.alpha = _utils.check_positive("alpha", alpha)

    def compute_loss(self, cosines, one_hot):
        alpha, margin = self.alpha, self.margin
        pos = masked_logsumexp(-alpha * (cosines - margin), one_hot, axis=0, include_zero=True)
        neg = masked_logsumexp(alpha * (cosines + margin), ops.logical_not(one_hot), axis=0,
                               include_zero=True)
        present = ops.sum(ops.cast(ops.any(one_hot, axis=0), cosines.dtype))
        return ops.sum(pos) / ops.maximum(present, 1.0) + ops.sum(neg) / float(self.num_classes)

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


class _MarginSoftmaxLoss(_ProxyLoss):
    """ArcFace and CosFace: a cross-entropy over ``scale`` times the cosines, the target
    cosine replaced by ``target(cos_y)``."""

    config_keys = ("scale",)

    def __init__(self, num_classes, embedding_size=None, margin=0.0, scale=64.0, **kwargs):
        super().__init__(num_classes, embedding_size, margin, **kwargs)
        self.scale = _utils.check_positive("scale", scale)

    def target(self, cos_y):
        raise NotImplementedError

    def _min_target(self):
        raise NotImplementedError

    def compute_loss(self, cosines, one_hot):
        cos_y = ops.sum(ops.where(one_hot, cosines, ops.zeros_like(cosines)), axis=1)
        logits = self.scale * ops.where(one_hot, ops.expand_dims(self.target(cos_y), 1), cosines)
        target = ops.sum(ops.where(one_hot, logits, ops.zeros_like(logits)), axis=1)
        return _utils.mean(ops.logsumexp(logits, axis=1) - target)

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


@keras.saving.register_keras_serializable(package=PACKAGE)
class ArcFaceLoss(_MarginSoftmaxLoss):
    """ArcFace additive angular margin loss (Deng et al., CVPR 2019), as PML 2.9.

    ``y_true``: integer labels ``(b,)`` in ``[0, num_classes)``; ``y_pred``: the
    ``(b, num_classes)`` cosines of :meth:`head` (a :class:`ProxyHead`, which owns the
    trainable class weights). See :func:`arcface_loss` for the formula; the margin is in
    degrees (PML's convention; 28.6 degrees = 0.5 rad). Unlike PML, the gradient is
    finite where an embedding equals its class weight.

    Train with the head (``model output = loss.head()(embedding)``), retrieve with the
    embedding (:func:`keras_featreg.layers.embedding_model`): see this module's usage.

    Args:
        num_classes, embedding_size: the number of classes (int >= 1) and the embedding
            size (int >= 1, or None: the head infers it from its input).
        margin: degrees, >= 0. Defaults to `28.6`.
        scale: float > 0. Defaults to `64`.
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.BatchLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import ArcFaceLoss
    >>> loss = ArcFaceLoss(num_classes=2, embedding_size=2, margin=90.0, scale=1.0)
    >>> # target cos(0 + 90 deg) = 0, other logit 0: cross-entropy log 2
    >>> round(float(loss(np.array([0]), np.array([[1.0, 0.0]]))), 6)
    0.693147
    """

    default_name = "arcface_loss"

    def __init__(self, num_classes, embedding_size=None, margin=28.6, scale=64.0, **kwargs):
        super().__init__(num_classes, embedding_size, margin, scale, **kwargs)

    def target(self, cos_y):
        return _arcface_target(cos_y, math.radians(self.margin))

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

    Train with the head (``model output = loss.head()(embedding)``), retrieve with the
    embedding (:func:`keras_featreg.layers.embedding_model`): see this module's usage.

    Args:
        num_classes, embedding_size: the number of classes (int >= 1) and the embedding
            size (int >= 1, or None: the head infers it from its input).
        margin: float >= 0. Defaults to `0.35`.
        scale: float > 0. Defaults to `64`.
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.BatchLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import CosFaceLoss
    >>> loss = CosFaceLoss(num_classes=2, embedding_size=2, margin=1.0, scale=1.0)
    >>> # target 1 - 1 = 0, other logit 0: cross-entropy log 2
    >>> round(float(loss(np.array([0]), np.array([[1.0, 0.0]]))), 6)
    0.693147
    """

    default_name = "cosface_loss"

    def __init__(self, num_classes, embedding_size=None, margin=0.35, scale=64.0, **kwargs):
        super().__init__(num_classes, embedding_size, margin, scale, **kwargs)

    def target(self, cos_y):
        return cos_y - self.margin

    def _min_target(self):
        return -1.0 - self.margin
