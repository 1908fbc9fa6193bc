"""Contrastive loss (Hadsell et al. 2006) over all pairs or mined pairs of the batch."""

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import distances as distances_lib
from keras_featreg.losses._base import PACKAGE, MetricLoss, check_batch_size


def _check_power(power):
    if isinstance(power, bool) or power not in (1, 2):
        raise ValueError(f"`power` must be 1 or 2. Received: power={power!r}")
    return int(power)


def contrastive_loss(y_true, y_pred, **kwargs):
    """:class:`ContrastiveLoss` ``(**kwargs)`` of a batch (eq. 6), as a function."""
    return ContrastiveLoss(**kwargs).call(y_true, y_pred)


def contrastive_loss_bounds(margin=1.0, distance="euclidean", power=1):
    """(lower, upper) of :func:`contrastive_loss` for L2-normalized embeddings (eq. 6).

    A positive pair costs ``D^k <= D_max^k``, a negative pair ``[m - D]_+^k <= m^k``, so
    the mean lies in ``[0, max(D_max, m)^k]``: ``[0, 2]`` for the paper's Euclidean
    distance and ``m = 1 < 2``.
    """
    margin = _utils.check_number("margin", margin, minimum=0.0)
    power = _check_power(power)
    distance = distances_lib.get(distance)
    d_max = distance.unit_range[1]
    return (0.0, max(d_max, margin) ** power)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContrastiveLoss(MetricLoss):
    """Contrastive loss over every pair of the batch (Hadsell et al. 2006).

    Formula (SVMax paper eq. 6, ``power=1``)::

        loss = 1 / (b (b - 1)) * sum_{i != j} [ d_ij * D_ij^k + (1 - d_ij) * [margin - D_ij]_+^k ]

    with ``d_ij = 1`` when ``y_true[i] == y_true[j]``, ``D`` the pairwise `distance` and
    ``k = power``. Averaging: the plain mean over all ``b (b - 1) / 2`` unordered pairs
    (each counted once), positives and negatives alike -- a ``p x l`` batch has
    ``p l (l - 1) / 2`` positive pairs and many more negative ones (the paper's
    36 x 4 batch: 216 positive, 10 080 negative). ``power=2`` is the squared form of
    Hadsell et al. and ``tfa.losses.ContrastiveLoss``.

    A single sample gives 0; a batch without positive (or negative) pairs averages the
    other kind.

    Args:
        margin: float >= 0. Defaults to `1.0` (the paper).
        distance: `"euclidean"` (default), `"squared_euclidean"`, `"cosine"` or a
            :mod:`keras_featreg.distances` distance (smaller = closer; similarities are
            refused: use ``"cosine"``, ``1 - cos``).
        power: 1 (default, the SVMax paper's eq. 6: ``D`` and ``[m - D]_+``) or 2
            (``D^2`` and ``[m - D]_+^2``, as tensorflow-addons).
        miner: optional pair miner (:mod:`keras_featreg.miners`), e.g.
            ``"balanced_pair"`` (the paper's 72 positive + 72 negative pairs of a 36 x 4
            batch) or ``"pair_margin"``. Default None: every pair.
        reducer: how the pair terms are averaged (:mod:`keras_featreg.reducers`).
            Default ``"mean"`` (over the pairs that exist: all pairs, or the mined
            ones); ``"mean_nonzero"`` averages over the active pairs only.
        **kwargs: the arguments of every loss (:class:`~keras_featreg.losses.MetricLoss`).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import ContrastiveLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[0.0], [0.5], [0.8]])  # 1-D embeddings
    >>> # pairs: (0,1) positive D=.5; (0,2) negative [1-.8]=.2; (1,2) negative [1-.3]=.7
    >>> round(float(ContrastiveLoss(margin=1.0)(y_true, y_pred)), 6)  # (.5+.2+.7)/3
    0.466667
    >>> ContrastiveLoss().bounds(144)
    (0.0, 2.0)
    """

    config_keys = ("margin", "power")

    miner_output = "pairs"
    orientation = "distance"

    def __init__(self, margin=1.0, power=1, **kwargs):
        super().__init__(**kwargs)
        self.margin = _utils.check_number("margin", margin, minimum=0.0)
        self.power = _check_power(power)

    def compute_loss(self, matrix, positive, negative, mined):
        pull = matrix
        push = ops.relu(self.margin - matrix)
        if self.power == 2:
            pull, push = ops.square(pull), ops.square(push)
        losses = ops.where(positive, pull, ops.where(negative, push, ops.zeros_like(push)))
        return self.reducer(losses, ops.logical_or(positive, negative))

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings: ``[0, max(D_max, m)^power]`` (eq. 6)."""
        check_batch_size(batch_size)
        return contrastive_loss_bounds(self.margin, self.distance, self.power)
