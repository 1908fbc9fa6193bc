"""N-pair and angular losses: softmax-style losses over ``p x 2`` batches.

Multi-class N-pair (Sohn 2016) and angular (Wang et al. 2017) losses with the bounds of
the SVMax paper (Taha et al., eqs. 7-12). The batch layout is read from the labels
(:func:`npair_layout`); the similarity is the dot product of the
embeddings as given (both papers normalize).
"""

import collections
import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg.losses._base import PACKAGE, BatchLoss, check_batch_size, inputs
from keras_featreg.ops.labels import pair_masks
from keras_featreg.ops.masked import masked_logsumexp, masked_mean
from keras_featreg.ops.pairwise import pairwise_dot

NEGATIVES = ("positives", "all")

NPairLayout = collections.namedtuple("NPairLayout", ["anchors", "positive_matrix", "positives"])
NPairLayout.__doc__ = """Anchor/positive layout of an N-pair batch (see :func:`npair_layout`).

Attributes:
    anchors: ``(b,)`` bool, True for samples used as anchors.
    positive_matrix: ``(b, b)`` bool, ``[a, p]`` True iff ``p`` is the positive of anchor
        ``a`` (at most one True per row).
    positives: ``(b,)`` bool, True for samples in the positive role.
"""


def npair_layout(labels):
    """Anchor/positive roles of an N-pair batch, read from the labels.

    Rule: within each class, the first occurrence in the batch is the anchor and the
    second occurrence is its positive. A class seen once has no pair (its sample is not
    an anchor); third and later occurrences are neither anchor nor positive. The
    intended layout has every class exactly twice (``p x 2`` batches, in any order:
    ``[a1, p1, a2, p2, ...]`` or ``[a1, a2, ..., p1, p2, ...]``).

    Returns:
        :class:`NPairLayout`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses._npair import npair_layout
    >>> layout = npair_layout(np.array([7, 3, 7, 3]))
    >>> np.asarray(layout.anchors).tolist(), np.asarray(layout.positives).tolist()
    ([True, True, False, False], [False, False, True, True])
    """
    same = ops.logical_not(pair_masks(labels)[1])
    n = ops.shape(same)[0]
    idx = ops.arange(n)
    earlier = ops.less(ops.expand_dims(idx, 0), ops.expand_dims(idx, 1))  # [i, j]: j < i
    occurrence = ops.sum(ops.cast(ops.logical_and(same, earlier), "int32"), axis=1)
    first = ops.equal(occurrence, 0)
    second = ops.equal(occurrence, 1)
    positive_matrix = ops.logical_and(
        same, ops.logical_and(ops.expand_dims(first, 1), ops.expand_dims(second, 0))
    )
    return NPairLayout(
        anchors=ops.any(positive_matrix, axis=1),
        positive_matrix=positive_matrix,
        positives=second,
    )


def npair_negatives(labels, layout, negatives="positives"):
    """``(b, b)`` mask of the negatives of each anchor of an N-pair batch.

    Args:
        labels: ``(b,)`` labels.
        layout: the :class:`NPairLayout` of `labels`.
        negatives: ``"positives"`` -- the positives of the other classes (Sohn 2016's
            multi-class N-pair loss, tensorflow-addons' ``NpairsLoss``; ``|n| = b/2 - 1``
            for ``p x 2`` batches) -- or ``"all"`` -- every sample of another class, as
            written in the SVMax paper's eqs. 7 and 9 (``|n| = b - 2``).
    """
    negatives = _check_negatives(negatives)
    _, different = pair_masks(labels)
    if negatives == "all":
        return different
    return ops.logical_and(different, ops.expand_dims(layout.positives, 0))


def _check_alpha(alpha):
    alpha = _utils.check_number("alpha", alpha, minimum=0.0, strict=True)
    if alpha >= 90.0:
        raise ValueError(
            f"`alpha` must be an angle in degrees in the open interval (0, 90). "
            f"Received: alpha={alpha!r}"
        )
    return alpha


def _check_negatives(negatives):
    return _utils.check_choice("negatives", negatives, NEGATIVES)


def _num_negatives(batch_size, negatives):
    return batch_size // 2 - 1 if negatives == "positives" else batch_size - 2


def npair_loss(y_true, y_pred, **kwargs):
    """:class:`NPairLoss` ``(**kwargs)`` of a batch (eq. 7, Sohn 2016), as a function."""
    return NPairLoss(**kwargs).call(y_true, y_pred)


def angular_loss(y_true, y_pred, **kwargs):
    """:class:`AngularLoss` ``(**kwargs)`` of a batch (eqs. 9-10), as a function."""
    return AngularLoss(**kwargs).call(y_true, y_pred)


def npair_loss_bounds(batch_size, negatives="positives", l2_reg=0.0):
    """(lower, upper) of :func:`npair_loss` for L2-normalized embeddings (eq. 8).

    ``[log(e^2 + |n|) - 2, log(e^2 |n| + 1)]`` (+ ``l2_reg / 2`` when the regularizer is
    on: each squared norm is 1), with ``|n|`` the number of negatives per anchor of a
    ``p x 2`` batch of `batch_size` samples: ``b/2 - 1`` for ``negatives="positives"``,
    ``b - 2`` (the paper's count) for ``negatives="all"``.
    """
    batch_size = check_batch_size(batch_size)
    negatives = _check_negatives(negatives)
    l2_reg = _utils.check_number("l2_reg", l2_reg, minimum=0.0)
    n = _num_negatives(batch_size, negatives)
    regularizer = 0.5 * l2_reg
    return (math.log1p(n * math.exp(-2.0)) + regularizer, math.log1p(n * math.exp(2.0)) + regularizer)


def angular_f_bounds(alpha=45.0):
    """Exact range of ``f_apn`` (eq. 10) over unit vectors a, p, n.

    With ``t = tan^2(alpha)``: the minimum ``-10 t - 2`` (``p = a``, ``n = -a``; the
    paper's eq. 11) and the maximum ``2 (1 + t) + 4 t^2 / (1 + t)``, reached at
    ``a.p = 2 t^2 / (1 + t)^2 - 1`` with ``n`` along ``a + p``. The paper's eq. 11 upper
    value ``6 t - 2`` (``p = a``) is *not* an upper bound: at 45 degrees f reaches 6, not
    4 (``a.p = -1/2``, ``n = (a + p) / ||a + p||``).
    """
    alpha = _check_alpha(alpha)
    t = math.tan(math.radians(alpha)) ** 2
    return (-10.0 * t - 2.0, 2.0 * (1.0 + t) + 4.0 * t * t / (1.0 + t))


def angular_loss_bounds(batch_size, alpha=45.0, negatives="positives"):
    """(lower, upper) of :func:`angular_loss` for L2-normalized embeddings (eq. 12).

    ``[log(1 + |n| e^{f_min}), log(1 + |n| e^{f_max})]`` with ``(f_min, f_max)`` from
    :func:`angular_f_bounds` and ``|n|`` as in :func:`npair_loss_bounds`. At 45 degrees
    ``f_min = -12`` (as the paper) and ``f_max = 6`` (the paper's eq. 12 has 4, which
    real embeddings exceed).
    """
    batch_size = check_batch_size(batch_size)
    negatives = _check_negatives(negatives)
    f_min, f_max = angular_f_bounds(alpha)
    n = _num_negatives(batch_size, negatives)
    return (math.log1p(n * math.exp(f_min)), math.log1p(n * math.exp(f_max)))


class _NPairBatchLoss(BatchLoss):
    """What the N-pair and angular losses share: the ``p x 2`` layout and its negatives."""

    config_keys = ("negatives",)

    def __init__(self, negatives="positives", **kwargs):
        super().__init__(**kwargs)
        self.negatives = _check_negatives(negatives)

    def call(self, y_true, y_pred):
        labels, embeddings = inputs(y_true, y_pred, self.cross_replica)
        layout = npair_layout(labels)
        negative = npair_negatives(labels, layout, self.negatives)
        value = self.compute_loss(embeddings, layout, negative)
        return _utils.propagate_nonfinite(value, embeddings)

    def compute_loss(self, embeddings, layout, negative):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package=PACKAGE)
class NPairLoss(_NPairBatchLoss):
    """Multi-class N-pair loss (Sohn 2016): softmax cross-entropy over ``a . x`` logits.

    Formula (SVMax paper eq. 7)::

        loss = mean_a -log( exp(a.p) / (exp(a.p) + sum_{n in N(a)} exp(a.n)) )
               + l2_reg / 4 * (mean_a ||a||^2 + mean_p ||p||^2)

    Batch layout, read from the labels (:func:`npair_layout`): the
    first occurrence of a class in the batch is an anchor ``a``, its second occurrence
    the positive ``p``; the intended batch is ``p x 2`` (the paper: 72 x 2), every class
    exactly twice, in any order. Classes seen once have no pair; third and later
    occurrences are ignored (``negatives="positives"``) or only used as negatives
    (``negatives="all"``).

    Negatives ``N(a)``: with ``negatives="positives"`` (default) the positives of the
    other classes -- the common formulation (Sohn's reference code,
    ``tfa.losses.NpairsLoss``: rows of ``anchors @ positives.T`` as logits), ``b/2 - 1``
    negatives; with ``negatives="all"`` every sample of another class, as the paper's
    eq. 7 reads, ``b - 2`` negatives.

    The embedding L2 regularizer of Sohn's paper (``tf.contrib``'s ``npairs_loss``
    ``reg_lambda``, default 0.002 there) is off by default (``l2_reg=0``): it is
    meaningless for L2-normalized embeddings, and ``tfa.losses.NpairsLoss`` has none.

    The embeddings are used as given (not normalized): the bounds assume unit vectors.
    A batch without any pair gives 0.

    Args:
        negatives: `"positives"` (default) or `"all"`, see above.
        l2_reg: float >= 0, weight of the embedding L2 regularizer. Defaults to `0.0`.
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.BatchLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import NPairLoss
    >>> y_true = np.array([0, 1, 0, 1])  # anchors: samples 0, 1; positives: 2, 3
    >>> y_pred = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # each anchor: logits (1 for its positive, 0 for the other) -> log(1 + e^-1)
    >>> round(float(NPairLoss()(y_true, y_pred)), 6)
    0.313262
    >>> [round(v, 4) for v in NPairLoss().bounds(144)]  # |n| = 71
    [2.3617, 6.2646]
    """

    config_keys = ("l2_reg",)

    def __init__(self, negatives="positives", l2_reg=0.0, **kwargs):
        super().__init__(negatives, **kwargs)
        self.l2_reg = _utils.check_number("l2_reg", l2_reg, minimum=0.0)

    def compute_loss(self, embeddings, layout, negative):
        similarity = pairwise_dot(embeddings)
        candidates = ops.logical_or(layout.positive_matrix, negative)
        log_normalizer = masked_logsumexp(similarity, candidates, axis=1)
        positive_logit = ops.sum(
            ops.where(layout.positive_matrix, similarity, ops.zeros_like(similarity)), axis=1
        )
        loss = masked_mean(log_normalizer - positive_logit, layout.anchors)
        if self.l2_reg > 0.0:
            squared_norms = ops.sum(ops.square(embeddings), axis=1)
            positives = ops.any(layout.positive_matrix, axis=0)
            loss = loss + 0.25 * self.l2_reg * (
                masked_mean(squared_norms, layout.anchors) + masked_mean(squared_norms, positives)
            )
        return loss

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized ``p x 2`` batches of `batch_size` (eq. 8)."""
        return npair_loss_bounds(batch_size, self.negatives, self.l2_reg)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AngularLoss(_NPairBatchLoss):
    """Angular loss for N-pair batches (Wang et al. 2017, "Deep Metric Learning with Angular Loss").

    Formula (SVMax paper eqs. 9-10), ``t = tan^2(alpha)``::

        loss = mean_a log(1 + sum_{n in N(a)} exp(f_apn))
        f_apn = 4 t (a + p).n - 2 (1 + t) a.p

    Same batch layout and ``negatives`` choice as :class:`NPairLoss` (first occurrence
    of a class = anchor, second = positive; ``p x 2`` batches, the paper: 72 x 2).
    Expects L2-normalized embeddings (Wang et al. normalize; the bounds assume it). A
    batch without any pair gives 0; an anchor without negatives contributes 0.

    Args:
        alpha: angle in degrees, in (0, 90). Defaults to `45.0` (the paper).
        negatives: `"positives"` (default, Wang et al.'s N-pair code: the other classes'
            positives) or `"all"` (every sample of another class, eq. 9's ``n in B``).
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.BatchLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import AngularLoss
    >>> y_true = np.array([0, 1, 0, 1])
    >>> y_pred = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # f = 4 (a + p).n - 4 a.p = 0 - 4 for each anchor -> log(1 + e^-4)
    >>> round(float(AngularLoss(alpha=45.0)(y_true, y_pred)), 6)
    0.01815
    >>> [round(v, 4) for v in AngularLoss().bounds(144)]  # |n| = 71, f in [-12, 6]
    [0.0004, 10.2627]
    """

    config_keys = ("alpha",)

    def __init__(self, alpha=45.0, negatives="positives", **kwargs):
        super().__init__(negatives, **kwargs)
        self.alpha = _check_alpha(alpha)

    def compute_loss(self, embeddings, layout, negative):
        tan2 = math.tan(math.radians(self.alpha)) ** 2
        # Row a of `positive_embeddings` is the positive of anchor a (zeros for non-anchors).
        positive_embeddings = ops.matmul(ops.cast(layout.positive_matrix, embeddings.dtype), embeddings)
        anchor_positive = ops.sum(embeddings * positive_embeddings, axis=1, keepdims=True)
        pair_negative = pairwise_dot(embeddings + positive_embeddings, embeddings)
        f = 4.0 * tan2 * pair_negative - 2.0 * (1.0 + tan2) * anchor_positive
        losses = masked_logsumexp(f, negative, axis=1, include_zero=True)
        return masked_mean(losses, layout.anchors)

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized ``p x 2`` batches (eq. 12, corrected upper)."""
        return angular_loss_bounds(batch_size, self.alpha, self.negatives)
