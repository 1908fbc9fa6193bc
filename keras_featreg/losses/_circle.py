"""Circle loss (Sun et al., CVPR 2020) over all pairs or mined pairs of the batch."""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import reducers as reducers_lib
from keras_featreg.losses._base import PACKAGE, MetricLoss, check_batch_size
from keras_featreg.ops.masked import masked_logsumexp


def circle_loss(y_true, y_pred, **kwargs):
    """:class:`CircleLoss` ``(**kwargs)`` of a batch, as a function."""
    return CircleLoss(**kwargs).call(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CircleLoss(MetricLoss):
    """Circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR 2020, eq. 6 with the weights of eq. 5 and the margins of eq. 8),
    as pytorch-metric-learning.

    Formula, with ``S`` the cosine similarity of the pairs, ``P(i)`` the positives and
    ``N(i)`` the negatives of anchor ``i`` (all of them, or the pairs kept by the miner),
    ``sg`` a stop-gradient and ``[.]_+ = max(., 0)``::

        alpha_p = [1 + m - sg(S_ip)]_+           alpha_n = [sg(S_in) + m]_+
        l_i  = softplus( logsumexp_{p in P(i)} (-gamma alpha_p (S_ip - (1 - m)))
                       + logsumexp_{n in N(i)} ( gamma alpha_n (S_in - m)) )
             = log(1 + sum_{n in N(i)} sum_{p in P(i)} exp(gamma (alpha_n (S_in - m)
                                                      - alpha_p (S_ip - (1 - m)))))
        loss = mean of l_i over the anchors with l_i > 0

    An anchor without a positive or without a negative has ``l_i = 0`` with zero
    gradient. The mean runs over the anchors whose loss is > 0 (PML's
    ``AvgNonZeroReducer``, reducer ``"mean_nonzero"``): in practice the anchors that
    have both a positive and a negative. The weights ``alpha`` are constants for the
    gradient (PML, and the authors' code, detach them). Every other pair
    ``reducer`` receives the ``b`` values ``l_i`` (zeros included): ``"mean"`` divides
    by ``b`` (PML's ``MeanReducer``), ``"sum"`` adds them.

    Mining: any pair miner restricts ``P(i)`` and ``N(i)``, e.g.
    ``miner=keras_featreg.miners.MultiSimilarityMiner(epsilon=0.1)``.

    Differences from PML: when the mined pairs of a batch are exactly one positive pair
    and at most one negative pair, PML returns 0 (a guard of its pair-loss base class);
    here the loss of those pairs is computed. Only similarities are accepted
    (``"cosine_similarity"``, or ``"dot_product"`` for embeddings that are already
    L2-normalized); PML accepts only its ``CosineSimilarity``.

    Differences from ``keras.losses.Circle`` (``keras.losses.circle``), which computes
    ``S`` as the plain dot product of the inputs (it expects L2-normalized embeddings
    and clips ``1 - S`` at 0): on L2-normalized embeddings its per-anchor values equal
    ``l_i`` (with ``remove_diagonal=True``, its default; ``False`` adds each sample as
    its own positive); its default reduction divides their sum by the number of
    anchors with ``l_i > 0`` (the loss's Keras mask), like ``"mean_nonzero"``. Its
    gradient differs: Keras differentiates through ``alpha_p`` and ``alpha_n`` as well.

    Args:
        m: float, the relaxation margin: ``O_p = 1 + m``, ``O_n = -m``,
            ``Delta_p = 1 - m``, ``Delta_n = m``. Defaults to `0.4` (the paper's
            fine-grained retrieval setting; face recognition: 0.25).
        gamma: float > 0, the scale. Defaults to `80.0` (face recognition: 256).
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`):
            ``distance`` (default ``"cosine_similarity"``; a similarity is required),
            ``miner`` (a pair miner), ``reducer`` (default ``"mean_nonzero"``), ...

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import CircleLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    >>> # anchor 0: S_p = 0.6 = 1 - m, so its positive logit is 0; S_n = 0.8 gives
    >>> # 80 * 1.2 * 0.4 = 38.4. Anchor 1: 0 and 80 * 1.36 * 0.56. Anchor 2: no positive.
    >>> expected = (np.logaddexp(0.0, 38.4) + np.logaddexp(0.0, 80 * 1.36 * 0.56)) / 2
    >>> loss = CircleLoss()(y_true, y_pred)
    >>> bool(np.isclose(float(loss), expected, rtol=1e-6))
    True
    >>> lower, upper = CircleLoss().bounds(144)
    >>> lower, round(upper, 3)
    (0.0, 382.939)
    """

    default_distance = "cosine_similarity"
    default_reducer = "mean_nonzero"
    miner_output = "pairs"
    orientation = "similarity"
    config_keys = ("m", "gamma")

    def __init__(self, m=0.4, gamma=80.0, **kwargs):
        super().__init__(**kwargs)
        self.m = _utils.check_number("m", m)
        self.gamma = _utils.check_positive("gamma", gamma)

    def compute_loss(self, matrix, positive, negative, mined):
        weights = ops.stop_gradient(matrix)
        alpha_p = ops.relu(1.0 + self.m - weights)
        alpha_n = ops.relu(weights + self.m)
        pos = masked_logsumexp(-self.gamma * alpha_p * (matrix - (1.0 - self.m)), positive, axis=1)
        neg = masked_logsumexp(self.gamma * alpha_n * (matrix - self.m), negative, axis=1)
        valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
        losses = ops.where(valid, ops.softplus(pos + neg), ops.zeros_like(pos))
        return self.reducer(losses, None)

    def _logit_maxima(self):
        """The largest positive and negative logits over the distance's unit range."""
        lo, hi = self.distance.unit_range
        pos = max(-self.gamma * max(1.0 + self.m - s, 0.0) * (s - 1.0 + self.m) for s in (lo, hi))
        neg = max(self.gamma * max(s + self.m, 0.0) * (s - self.m) for s in (lo, hi))
        return pos, neg

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings, or None for a user-defined reducer.

        Over ``S`` in ``[lo, hi]`` (``[-1, 1]``) each logit is a convex parabola (or 0),
        largest at an end: ``gamma (2 + m)(2 - m)`` for a positive at ``S = -1``,
        ``gamma (1 + m)(1 - m)`` for a negative at ``S = 1``. With ``|P| + |N| <= b - 1``,
        ``l_i <= softplus(max_p + max_n + log(|P| |N|))``, ``|P| |N| <= floor((b-1)/2)
        ceil((b-1)/2)``; ``b = 2`` has no anchor with both, so 0. The lower bound is 0.
        """
        b = check_batch_size(batch_size)
        reducer = reducers_lib.name_of(self.reducer)
        if self.distance.unit_range is None or reducer not in (
                "mean", "mean_nonzero", "per_anchor_mean", "sum"):
            return None
        pairs = ((b - 1) // 2) * (b - (b - 1) // 2 - 1)
        if pairs == 0:
            return (0.0, 0.0)
        x = sum(self._logit_maxima()) + math.log(pairs)
        upper = x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
        return (0.0, upper * b if reducer == "sum" else upper)
