"""Multi-Similarity loss (Wang et al., CVPR 2019) over all pairs or mined pairs of the batch."""

import math

import keras

from keras_featreg import _utils
from keras_featreg.losses._base import PACKAGE, MetricLoss, check_batch_size
from keras_featreg.ops.masked import masked_logsumexp


def multi_similarity_loss(y_true, y_pred, **kwargs):
    """:class:`MultiSimilarityLoss` ``(**kwargs)`` of a batch, as a function."""
    return MultiSimilarityLoss(**kwargs).call(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiSimilarityLoss(MetricLoss):
    """Multi-Similarity loss (Wang et al., "Multi-Similarity Loss with General Pair
    Weighting for Deep Metric Learning", CVPR 2019, eq. 10), as pytorch-metric-learning.

    Formula, with ``S`` the similarity of the pairs (cosine by default), ``P(i)`` the
    positives and ``N(i)`` the negatives of anchor ``i`` (all of them, or the pairs kept
    by the miner)::

        l_i  = 1/alpha * log(1 + sum_{k in P(i)} exp(-alpha (S_ik - base)))
             + 1/beta  * log(1 + sum_{k in N(i)} exp( beta (S_ik - base)))
        loss = 1/b * sum_i l_i

    The mean runs over all ``b`` anchors (PML's ``MeanReducer``): an anchor with no
    positive (or no negative) pays 0 for that term and still counts in the divisor.
    ``log(1 + sum exp)`` is computed stably (max shift, empty sets give 0).

    With a distance instead of a similarity (``distance="euclidean"``, ``"cosine"``),
    as PML: ``-alpha (S - base)`` becomes ``alpha (D - base)`` and ``beta (S - base)``
    becomes ``beta (base - D)``.

    Mining: the paper pairs the loss with its mining step (eq. 8-9), ``miner=
    keras_featreg.miners.MultiSimilarityMiner(epsilon=0.1)`` (or ``"multi_similarity"``);
    the loss then runs on the kept pairs only.

    Difference from PML: when the mined pairs of a batch are exactly one positive pair
    and at most one negative pair, PML returns 0 (a guard of its pair-loss base class);
    here the loss of that pair is computed.

    Args:
        alpha: float > 0, the positive scale. Defaults to `2.0` (the paper's CUB setting).
        beta: float > 0, the negative scale. Defaults to `50.0`.
        base: float, the similarity offset ``lambda``. Defaults to `0.5`.
        distance: a :mod:`keras_featreg.distances` name or object. Defaults to
            ``"cosine_similarity"`` (PML's default; embeddings are L2-normalized by it).
        miner: optional pair miner (:mod:`keras_featreg.miners`), e.g.
            ``MultiSimilarityMiner(epsilon=0.1)``. Default None: every pair.
        reducer: how the per-anchor terms are averaged (:mod:`keras_featreg.reducers`).
            Default ``"mean"`` over all ``b`` anchors (PML).
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import MultiSimilarityLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # anchors 0, 1: one positive (S = 1), one negative (S = 0); anchor 2: two negatives
    >>> pos, neg = np.log1p(np.exp(-1.0)) / 2, np.log1p(np.exp(-25.0)) / 50
    >>> expected = (2 * (pos + neg) + np.log1p(2 * np.exp(-25.0)) / 50) / 3
    >>> loss = MultiSimilarityLoss()(y_true, y_pred)
    >>> bool(np.isclose(float(loss), expected, atol=1e-6))
    True
    >>> lower, upper = MultiSimilarityLoss().bounds(144)
    >>> lower, round(upper, 3)
    (0.0, 4.581)
    """

    config_keys = ("alpha", "beta", "base")

    default_distance = "cosine_similarity"
    default_reducer = "mean"
    miner_output = "pairs"

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _utils.check_positive("alpha", alpha)
        self.beta = _utils.check_positive("beta", beta)
        self.base = _utils.check_number("base", base)

    def compute_loss(self, matrix, positive, negative, mined):
        # x > 0 means "closer than base", for a similarity or a distance alike.
        if self.distance.is_inverted:
            x = matrix - self.base
        else:
            x = self.base - matrix
        pos = masked_logsumexp(-self.alpha * x, positive, axis=1, include_zero=True) / self.alpha
        neg = masked_logsumexp(self.beta * x, negative, axis=1, include_zero=True) / self.beta
        return self.reducer(pos + neg, None)

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings, or None without a bounded distance.

        Each anchor has ``|P| + |N| = b - 1`` others and every ``S`` lies in the
        distance's unit range ``[lo, hi]`` (``[-1, 1]`` for cosine), so
        ``l_i <= 1/alpha log(1 + (b-1) e^{alpha (base - lo)})
        + 1/beta log(1 + (b-1) e^{beta (hi - base)})`` (not tight: a pair is not both a
        positive and a negative); the lower bound is 0 (every term is >= 0).
        """
        b = check_batch_size(batch_size)
        unit = self.distance.unit_range
        if unit is None:
            return None
        lo, hi = unit
        if self.distance.is_inverted:
            pos_max, neg_max = self.base - lo, hi - self.base
        else:
            pos_max, neg_max = hi - self.base, self.base - lo
        return (0.0, _log1p_exp(math.log(b - 1) + self.alpha * pos_max) / self.alpha
                + _log1p_exp(math.log(b - 1) + self.beta * neg_max) / self.beta)


def _log1p_exp(x):
    """``log(1 + e^x)`` in Python floats without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
