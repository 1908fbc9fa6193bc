"""Softmax contrastive losses: supervised contrastive (SupCon) and NT-Xent (SimCLR / InfoNCE).

Both take ``(labels, embeddings)`` like every ranking loss: samples sharing a label are
positives. The self-supervised two-view form ``(z_a, z_b)`` (row ``i`` of ``z_a`` and row
``i`` of ``z_b`` are two views of one sample) becomes one batch with
:func:`two_view_batch`.
"""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg.losses._base import PACKAGE, MetricLoss, check_batch_size, embeddings_of
from keras_featreg.ops.labels import check_labels
from keras_featreg.ops.masked import masked_logsumexp


def two_view_batch(z_a, z_b, labels=None):
    """One labelled batch from two views: ``(labels (2b,), embeddings (2b, d))``.

    Rows ``i`` and ``i + b`` of the result are ``z_a[i]`` and ``z_b[i]`` and share a
    label: ``labels[i]`` when `labels` is given (supervised, SupCon's multi-view batch),
    else ``i`` (self-supervised, SimCLR: each sample is its own class). Feed the result
    to :class:`NTXentLoss` or :class:`SupConLoss`.

    Args:
        z_a: ``(b, d)`` embeddings of the first view.
        z_b: ``(b, d)`` embeddings of the second view.
        labels: optional ``(b,)`` integer labels of the samples.

    Returns:
        ``(labels, embeddings)``: int32 (or the given labels' dtype) ``(2b,)`` and
        ``(2b, d)``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import two_view_batch
    >>> labels, embeddings = two_view_batch(np.ones((3, 2)), np.zeros((3, 2)))
    >>> np.asarray(labels).tolist(), tuple(embeddings.shape)
    ([0, 1, 2, 0, 1, 2], (6, 2))
    """
    z_a = embeddings_of(z_a, name="z_a")
    z_b = embeddings_of(z_b, name="z_b")
    if tuple(z_a.shape) != tuple(z_b.shape):
        raise ValueError(
            "`z_a` and `z_b` must have the same shape. "
            f"Received: z_a.shape={tuple(z_a.shape)}, z_b.shape={tuple(z_b.shape)}"
        )
    if z_a.dtype != z_b.dtype:
        z_b = ops.cast(z_b, z_a.dtype)
    if labels is None:
        labels = ops.arange(ops.shape(z_a)[0], dtype="int32")
    else:
        labels, z_a = check_labels(labels, z_a, name="labels", rows_name="z_a")
    return ops.concatenate([labels, labels], axis=0), ops.concatenate([z_a, z_b], axis=0)


def _logits(loss, matrix):
    """Similarity logits ``S / t`` (a distance is negated, as PML)."""
    return ops.negative(loss.distance.as_distance(matrix)) / loss.temperature


def _batch_has_pairs(positive, negative):
    """PML's guard: the loss is 0 unless the batch has a positive and a negative pair."""
    return ops.logical_and(ops.any(positive), ops.any(negative))


def _logit_width(loss):
    unit = loss.distance.unit_range
    return None if unit is None else (unit[1] - unit[0]) / loss.temperature


def supcon_loss(y_true, y_pred, **kwargs):
    """:class:`SupConLoss` ``(**kwargs)`` of a batch, as a function."""
    return SupConLoss(**kwargs).call(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SupConLoss(MetricLoss):
    """Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning",
    NeurIPS 2020, eq. 2, ``L^sup_out``), as pytorch-metric-learning's ``SupConLoss``.

    Formula, with ``Z_ij = S_ij / t`` (``S`` the cosine similarity by default),
    ``P(i)`` the other samples with the label of ``i`` and ``A(i) = P(i) u N(i)`` every
    other sample::

        L_i  = -1/|P(i)| * sum_{p in P(i)} [ Z_ip - log sum_{a in A(i)} exp(Z_ia) ]
        loss = mean of L_i over the anchors with L_i > 0 (those with a positive)

    The batch is 0 (zero gradient) when it has no positive pair or no negative pair
    (PML). A distance instead of a similarity is negated (``Z = -D / t``).

    Batch layout: any batch with several samples per class. For the paper's multi-view
    batches (two augmentations of each sample), build one batch with
    :func:`two_view_batch` ``(z_a, z_b, labels)``: rows ``i`` and ``i + b`` share a label.

    Args:
        temperature: float > 0. Defaults to `0.1` (PML; the paper uses 0.1 too).
        distance: a :mod:`keras_featreg.distances` name or object. Defaults to
            ``"cosine_similarity"``.
        miner: optional pair miner; ``P`` and ``A`` are then the kept pairs.
        reducer: averaging of the per-anchor ``L_i`` over the anchors with a positive.
            Default ``"mean_nonzero"`` (PML's ``AvgNonZeroReducer``).
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import SupConLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # anchors 0 and 1: Z_p = 1 / t = 2, Z_n = 0 -> log(1 + e^-2); anchor 2: no positive
    >>> loss = SupConLoss(temperature=0.5)(y_true, y_pred)
    >>> bool(np.isclose(float(loss), np.log1p(np.exp(-2.0)), rtol=1e-5))
    True
    """

    config_keys = ("temperature",)

    default_name = "supcon_loss"
    default_distance = "cosine_similarity"
    default_reducer = "mean_nonzero"
    miner_output = "pairs"

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _utils.check_positive("temperature", temperature)

    def compute_loss(self, matrix, positive, negative, mined):
        logits = _logits(self, matrix)
        denominator = masked_logsumexp(
            logits, ops.logical_or(positive, negative), axis=1)
        log_prob = logits - ops.expand_dims(denominator, 1)
        log_prob = ops.where(positive, log_prob, ops.zeros_like(log_prob))
        count = ops.sum(ops.cast(positive, logits.dtype), axis=1)
        per_anchor = -ops.sum(log_prob, axis=1) / ops.maximum(count, 1.0)
        has_positive = count > 0
        value = self.reducer(per_anchor, has_positive)
        return ops.where(_batch_has_pairs(positive, negative), value, ops.zeros_like(value))

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings, or None without a bounded distance.

        ``L_i = log sum_A exp(Z) - mean_P Z``; with logits in a range of width
        ``w = (hi - lo) / t`` (``2 / t`` for cosine) and ``|A| = b - 1``:
        ``0 <= L_i <= log(b - 1) + w``.
        """
        b = check_batch_size(batch_size)
        width = _logit_width(self)
        return None if width is None else (0.0, math.log(b - 1) + width)


def ntxent_loss(y_true, y_pred, **kwargs):
    """:class:`NTXentLoss` ``(**kwargs)`` of a batch, as a function."""
    return NTXentLoss(**kwargs).call(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NTXentLoss(MetricLoss):
    """NT-Xent, the normalized temperature-scaled cross entropy of SimCLR (Chen et al.,
    "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
    eq. 1; InfoNCE, van den Oord et al. 2018), as pytorch-metric-learning's ``NTXentLoss``.

    Formula, per ORDERED positive pair ``(a, p)`` (``Z = S / t``, ``S`` the cosine
    similarity by default, ``N(a)`` the negatives of ``a``)::

        l_ap = -log( exp(Z_ap) / (exp(Z_ap) + sum_{n in N(a)} exp(Z_an)) )
             = log(1 + sum_{n in N(a)} exp(Z_an - Z_ap))
        loss = mean over the ordered positive pairs

    The other positives of ``a`` are not in the denominator. The batch is 0 (zero
    gradient) when it has no positive pair or no negative pair (PML).

    Batch layout: SimCLR's two views ``(z_a, z_b)`` of ``b`` samples become one batch of
    ``2b`` rows with :func:`two_view_batch` (rows ``i`` and ``i + b`` share the label
    ``i``): then every anchor has one positive and ``2b - 2`` negatives, SimCLR's
    ``2N - 2``. With class labels, every same-label pair is a positive pair.

    Difference from PML: PML computes ``-log(ratio + tiny)``, which saturates at about
    87 (float32) / 708 (float64) when the ratio underflows; here the log-sum-exp form
    has no such cap.

    Args:
        temperature: float > 0. Defaults to `0.07` (PML; SimCLR uses 0.1 to 0.5).
        distance: a :mod:`keras_featreg.distances` name or object. Defaults to
            ``"cosine_similarity"``.
        miner: optional pair miner; the kept positive pairs are averaged and the kept
            negatives form the denominators.
        reducer: averaging over the positive pairs. Default ``"mean"`` (PML).
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import NTXentLoss, two_view_batch
    >>> z_a = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> labels, batch = two_view_batch(z_a, z_a)  # identical views
    >>> # each anchor: Z_p = 1/t, two negatives with Z = 0
    >>> loss = NTXentLoss(temperature=0.5)(labels, batch)
    >>> bool(np.isclose(float(loss), np.log1p(2 * np.exp(-2.0)), rtol=1e-5))
    True
    """

    config_keys = ("temperature",)

    default_distance = "cosine_similarity"
    default_reducer = "mean"
    miner_output = "pairs"

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _utils.check_positive("temperature", temperature)

    def compute_loss(self, matrix, positive, negative, mined):
        logits = _logits(self, matrix)
        negatives = masked_logsumexp(logits, negative, axis=1)
        has_negative = ops.expand_dims(ops.any(negative, axis=1), 1)
        # log(1 + sum_n exp(Z_an - Z_ap)) = softplus(LSE_n Z_an - Z_ap); 0 without negatives.
        terms = ops.softplus(ops.expand_dims(negatives, 1) - logits)
        terms = ops.where(has_negative, terms, ops.zeros_like(terms))
        value = self.reducer(terms, positive)
        return ops.where(_batch_has_pairs(positive, negative), value, ops.zeros_like(value))

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings, or None without a bounded distance.

        An anchor with a positive has at most ``b - 2`` negatives and logits in a range
        of width ``w = (hi - lo) / t``: ``0 <= l_ap <= log(1 + (b - 2) e^w)``.
        """
        b = check_batch_size(batch_size)
        width = _logit_width(self)
        if width is None:
            return None
        if b == 2:
            return (0.0, 0.0)
        return (0.0, math.log(b - 2) + width + math.log1p(math.exp(-(math.log(b - 2) + width))))
