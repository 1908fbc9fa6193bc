"""Lifted structured losses: Oh Song et al. 2016 and the generalized form of Hermans et al. 2017."""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg.losses._base import PACKAGE, MetricLoss, check_batch_size
from keras_featreg.ops.masked import masked_logsumexp


class _LiftedLoss(MetricLoss):
    """What the two lifted losses share: the margins, a distance (not a similarity)."""

    config_keys = ("neg_margin", "pos_margin")

    default_distance = "euclidean"
    default_reducer = "mean"
    miner_output = "pairs"
    orientation = "distance"

    def __init__(self, neg_margin=1.0, pos_margin=0.0, **kwargs):
        super().__init__(**kwargs)
        self.neg_margin = _utils.check_number("neg_margin", neg_margin)
        self.pos_margin = _utils.check_number("pos_margin", pos_margin)


def _row_logsumexp(values, mask):
    """``(log sum_{mask} exp(values) per row, row has any)``; value 0 on empty rows."""
    return (masked_logsumexp(values, mask, axis=1),
            ops.any(mask, axis=1))


def _logaddexp_masked(la, has_a, lb, has_b):
    """``log(e^la [has_a] + e^lb [has_b])`` (broadcast), 0 where neither exists.

    Stable (shift by the larger, no gradient through the shift: it cancels) and with
    finite gradients everywhere: exponents are masked before ``exp``.
    """
    neg_inf = ops.cast(float("-inf"), la.dtype)
    shift = ops.maximum(ops.where(has_a, la, neg_inf), ops.where(has_b, lb, neg_inf))
    shift = ops.stop_gradient(ops.where(ops.isfinite(shift), shift, ops.zeros_like(shift)))
    zero = ops.zeros_like(shift)
    ea = ops.where(has_a, ops.exp(ops.where(has_a, la - shift, zero)), zero)
    eb = ops.where(has_b, ops.exp(ops.where(has_b, lb - shift, zero)), zero)
    either = ops.logical_or(has_a, has_b)
    total = ops.where(either, ea + eb, ops.ones_like(ea))
    return ops.where(either, ops.log(total) + shift, zero), either


def lifted_structure_loss(y_true, y_pred, **kwargs):
    """:class:`LiftedStructureLoss` ``(**kwargs)`` of a batch, as a function."""
    return LiftedStructureLoss(**kwargs).call(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class LiftedStructureLoss(_LiftedLoss):
    """Lifted structured embedding loss (Oh Song et al., "Deep Metric Learning via Lifted
    Structured Feature Embedding", CVPR 2016, eq. 4), the ``tfa.losses.LiftedStructLoss``
    of tensorflow-addons and pytorch-metric-learning's ``LiftedStructureLoss``.

    Formula, with ``D`` the distance (Euclidean on the embeddings as given), ``P`` the
    ordered positive pairs and ``N(i)`` the negatives of ``i``::

        J_ij = log( sum_{k in N(i)} exp(m_neg - D_ik) + sum_{l in N(j)} exp(m_neg - D_jl) )
               + D_ij - m_pos
        loss = 1 / (2 |P|) * sum_{(i, j) in P} [J_ij]_+^2

    i.e. the paper's ``1 / (2 |P^|) sum [J]_+^2`` over unordered positive pairs. The
    log-sum-exp is masked and shifted by its maximum (finite values and gradients
    however far apart the embeddings); identical rows get the zero gradient of the
    library's Euclidean distance at 0.

    Parity: tensorflow-addons ``LiftedStructLoss(margin=m)`` is
    ``LiftedStructureLoss(neg_margin=m)`` (both use the un-normalized embeddings).
    pytorch-metric-learning's default ``LpDistance`` L2-normalizes the embeddings first:
    its default loss is this one on ``l2_normalize(embeddings)`` (or with a
    ``keras.layers.UnitNormalization`` output layer).

    Differences: a batch with no positive pair or no negative pair gives 0 here, with
    zero gradient (tensorflow-addons gives NaN: ``0 / 0`` and ``-inf * 0``; PML gives 0).
    With a miner, ``N(i)`` holds the negatives kept for anchor ``i``; a kept positive
    pair whose two ends have no kept negative costs 0 (and still counts in ``|P|``),
    as in PML.

    Args:
        neg_margin: float, the margin ``alpha`` of the paper. Defaults to `1.0`.
        pos_margin: float, subtracted from ``D_ij``. Defaults to `0.0`.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"``, ``"cosine"`` or a
            :mod:`keras_featreg.distances` distance (smaller = closer; similarities are
            refused).
        miner: optional pair miner (:mod:`keras_featreg.miners`).
        reducer: averaging over the ordered positive pairs. Default ``"mean"``.
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import LiftedStructureLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[0.0], [0.5], [2.0]])  # 1-D embeddings
    >>> # pair (0, 1): D = .5, negatives D_02 = 2, D_12 = 1.5
    >>> j = np.log(np.exp(1 - 2.0) + np.exp(1 - 1.5)) + 0.5
    >>> loss = LiftedStructureLoss()(y_true, y_pred)
    >>> bool(np.isclose(float(loss), j ** 2 / 2, rtol=1e-6))
    True
    >>> lower, upper = LiftedStructureLoss().bounds(144)
    >>> lower, round(upper, 3)
    (0.0, 37.402)
    """

    _references_are_batch = True

    def compute(self, labels, embeddings, ref_labels=None, ref_embeddings=None,
                same_sample=None, ref_valid=None, pair_mask=None):
        # J_ij needs the negatives of the positive j: row j of the matrix when the
        # references are the batch, else the batch negatives of reference j (column j).
        self._references_are_batch = ref_embeddings is None
        try:
            return super().compute(labels, embeddings, ref_labels, ref_embeddings,
                                   same_sample, ref_valid, pair_mask)
        finally:
            self._references_are_batch = True

    def compute_loss(self, matrix, positive, negative, mined):
        pushed = self.neg_margin - matrix
        lse_rows, has_rows = _row_logsumexp(pushed, negative)
        if self._references_are_batch:
            lse_cols, has_cols = lse_rows, has_rows
        else:
            lse_cols = masked_logsumexp(pushed, negative, axis=0)
            has_cols = ops.any(negative, axis=0)
        lse, either = _logaddexp_masked(
            ops.expand_dims(lse_rows, 1), ops.expand_dims(has_rows, 1),
            ops.expand_dims(lse_cols, 0), ops.expand_dims(has_cols, 0))
        j = lse + matrix - self.pos_margin
        terms = ops.where(either, 0.5 * ops.square(ops.relu(j)), ops.zeros_like(j))
        value = self.reducer(terms, positive)
        has_pairs = ops.logical_and(ops.any(positive), ops.any(negative))
        return ops.where(has_pairs, value, ops.zeros_like(value))

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings, or None without a bounded distance.

        With ``D`` in the distance's unit range ``[lo, hi]`` (``[0, 2]`` Euclidean) and
        at most ``2 (b - 2)`` negative terms:
        ``J <= log(2 (b - 2)) + m_neg - lo + hi - m_pos``, so the loss lies in
        ``[0, [J_max]_+^2 / 2]`` (not tight).
        """
        b = check_batch_size(batch_size)
        unit = self.distance.unit_range
        if unit is None:
            return None
        lo, hi = unit
        j_max = math.log(2 * max(b - 2, 1)) + self.neg_margin - lo + hi - self.pos_margin
        return (0.0, 0.5 * max(j_max, 0.0) ** 2)


def generalized_lifted_structure_loss(y_true, y_pred, **kwargs):
    """:class:`GeneralizedLiftedStructureLoss` ``(**kwargs)`` of a batch, as a function."""
    return GeneralizedLiftedStructureLoss(**kwargs).call(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GeneralizedLiftedStructureLoss(_LiftedLoss):
    """Generalized lifted structure loss (Hermans et al., "In Defense of the Triplet Loss
    for Person Re-Identification", 2017, p. 4), as pytorch-metric-learning's
    ``GeneralizedLiftedStructureLoss``.

    Formula, per anchor ``i`` (``D`` the distance, ``P(i)``/``N(i)`` its positives and
    negatives)::

        l_i  = [ log sum_{p in P(i)} exp(D_ip - m_pos) + log sum_{n in N(i)} exp(m_neg - D_in) ]_+
        loss = 1/b * sum_i l_i

    An empty log-sum-exp counts 0 (PML), so an anchor without positive still pays
    ``[LSE_n (m_neg - D_in)]_+``, and a batch of one class or of singletons is not 0.

    Parity: PML's default ``LpDistance`` L2-normalizes the embeddings: its default loss
    is this one on ``l2_normalize(embeddings)``.

    Args:
        neg_margin: float. Defaults to `1.0`.
        pos_margin: float. Defaults to `0.0`.
        distance: ``"euclidean"`` (default) or another distance (similarities refused).
        miner: optional pair miner.
        reducer: averaging over the anchors. Default ``"mean"`` over all ``b`` (PML).
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import GeneralizedLiftedStructureLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[0.0], [0.5], [1.0]])  # 1-D embeddings
    >>> # anchor 0: .5 + (1 - 1); anchor 1: .5 + (1 - .5); anchor 2 (no positive): log(1 + e^.5)
    >>> loss = GeneralizedLiftedStructureLoss()(y_true, y_pred)
    >>> bool(np.isclose(float(loss), (0.5 + 1.0 + np.log1p(np.exp(0.5))) / 3, rtol=1e-6))
    True
    """

    def compute_loss(self, matrix, positive, negative, mined):
        pos = masked_logsumexp(matrix - self.pos_margin, positive, axis=1)
        neg = masked_logsumexp(self.neg_margin - matrix, negative, axis=1)
        return self.reducer(ops.relu(pos + neg), None)

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings, or None without a bounded distance.

        With ``D`` in ``[lo, hi]`` and ``|P| + |N| = b - 1``:
        ``l_i <= [log(b - 1) + hi - m_pos]_+ + [log(b - 1) + m_neg - lo]_+`` (an empty
        part is 0; not tight); the lower bound is 0.
        """
        b = check_batch_size(batch_size)
        unit = self.distance.unit_range
        if unit is None:
            return None
        lo, hi = unit
        log_count = math.log(b - 1)
        upper = (max(log_count + hi - self.pos_margin, 0.0)
                 + max(log_count + self.neg_margin - lo, 0.0))
        return (0.0, upper)
