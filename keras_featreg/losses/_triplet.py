"""Triplet loss with in-batch mining: FaceNet semi-hard, batch-hard, batch-all."""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import distances as distances_lib
from keras_featreg import miners as miners_lib
from keras_featreg import reducers as reducers_lib
from keras_featreg.losses._base import PACKAGE, MetricLoss, check_batch_size


def triplet_loss(y_true, y_pred, **kwargs):
    """:class:`TripletLoss` ``(**kwargs)`` of a batch (eq. 5), as a function."""
    return TripletLoss(**kwargs).call(y_true, y_pred)


def triplet_loss_bounds(margin=0.2, distance="euclidean", soft=False):
    """(lower, upper) of :func:`triplet_loss` for L2-normalized embeddings (eq. 5).

    With ``D_max`` the largest distance between unit vectors (2 for ``"euclidean"`` and
    ``"cosine"``, 4 for ``"squared_euclidean"``; the width of the range of a
    similarity): ``[0, D_max + margin]`` for the hinge (the paper's ``[0, 2 + m]``),
    ``[log(1 + e^-D_max), log(1 + e^D_max)]`` for the soft margin. Holds for every
    mining strategy and reducer that averages (each is a mean of per-triplet terms).
    """
    margin = _utils.check_number("margin", margin, minimum=0.0)
    _utils.check_bool("soft", soft)
    d_max = _spread(distance)
    if soft:
        return (math.log1p(math.exp(-d_max)), math.log1p(math.exp(d_max)))
    return (0.0, d_max + margin)


def _spread(distance):
    """Largest ``D(a, n) - D(a, p)`` over unit vectors: the width of the distance's range."""
    distance = distances_lib.get(distance)
    if distance.unit_range is None:
        raise ValueError(f"{distance!r} has no range on unit vectors, so the loss has no bounds.")
    low, high = distance.unit_range
    return float(high - low)


def _batch_all_loss(distances, labels, margin, soft, masks=None, reducer=None):
    """"Batch all" triplet loss without the ``(b, b, b)`` tensors of :func:`keras_featreg.miners.batch_all`.

    Hinge: ``sum(sums) / max(sum(counts), 1)`` from
    :func:`keras_featreg.miners.batch_all_hinge_sums`, O(b^2 log b) time and O(b^2)
    memory. Soft margin: ``sum_{a, p, n} log(1 + exp(D[a, p] - D[a, n]))`` has no sorted
    form; :func:`keras_featreg.miners.batch_all_soft_mean` keeps O(b^3) time but O(b^2)
    memory (anchors in chunks). Another `reducer` than the default (mean over the
    active triplets): ``"mean"`` and ``"sum"`` from the same sums (hinge); otherwise the
    O(b^3)-memory triplet tensor.
    """
    default = reducer is None or type(reducer) is reducers_lib.AvgNonZeroReducer
    if soft and default:
        return miners_lib.batch_all_soft_mean(distances, labels, masks=masks)
    if not soft and (default or type(reducer) in (reducers_lib.MeanReducer,
                                                   reducers_lib.SumReducer)):
        sums, counts = miners_lib.batch_all_hinge_sums(distances, labels, margin, masks=masks)
        if default:
            return ops.sum(sums) / ops.maximum(ops.sum(counts), 1.0)
        positive, negative = masks
        negatives = ops.sum(ops.cast(negative, distances.dtype), axis=1, keepdims=True)
        num_terms = ops.sum(ops.cast(positive, distances.dtype) * negatives)
        return reducer.from_sums(ops.sum(sums), num_terms, ops.sum(counts))
    mined = miners_lib.batch_all(distances, labels, masks=masks)
    return _reduce_triplets(mined, margin, soft, reducer)


def _reduce_triplets(mined, margin, soft, reducer):
    difference = mined.positive_distances - mined.negative_distances
    losses = ops.softplus(difference) if soft else ops.relu(difference + margin)
    if reducer is None:
        reducer = (reducers_lib.AvgNonZeroReducer() if mined.average_over_active
                   else reducers_lib.MeanReducer())
    return reducer(losses, mined.mask)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TripletLoss(MetricLoss):
    """Triplet loss with in-batch mining (semi-hard, batch-hard or batch-all).

    Formula (SVMax paper eq. 5; Schroff et al. 2015; Hermans et al. 2017)::

        loss = mean_{(a, p, n) mined} [D(a, p) - D(a, n) + margin]_+      # soft=False
        loss = mean_{(a, p, n) mined} log(1 + exp(D(a, p) - D(a, n)))     # soft=True

    Mining (:mod:`keras_featreg.miners`):

    * ``"semi_hard"``: for every positive pair ``(a, p)``, the closest negative farther
      than ``p``; if there is none, the farthest negative. Mean over positive pairs.
      Identical to ``tfa.losses.TripletSemiHardLoss``.
    * ``"hard"``: for every anchor, the farthest positive and the closest negative. Mean
      over anchors that have both. Identical to ``tfa.losses.TripletHardLoss`` on
      batches where every class appears at least twice.
    * ``"all"``: every valid triplet; mean over the triplets whose loss is > 0 (with
      ``soft=True``: over all valid triplets).

    Cost: ``"semi_hard"`` and ``"all"`` sort each anchor's negative distances once and
    binary-search them, O(b^2 log b) time and O(b^2) memory (FaceNet's b = 1800 fits),
    with the values and gradients of the O(b^3) definitions; ``"all"`` with
    ``soft=True`` keeps O(b^3) time (a softplus has no prefix-sum form) in O(b^2)
    memory. ``"hard"`` is O(b^2).

    Batches: ``p`` classes x ``l >= 2`` samples (the paper: 24 x 6). Expects
    L2-normalized embeddings (e.g. ``keras.layers.UnitNormalization``) for the bounds.
    A batch without any valid triplet (one class, or no class twice) gives 0 with zero
    gradients.

    Args:
        margin: float >= 0, the margin ``m``. Defaults to `0.2` (the paper). Not used
            when ``soft=True`` (the soft-margin formulation has no margin, as
            tensorflow-addons' ``soft=True``).
        mining: the triplet miner: `"semi_hard"` (default), `"hard"`, `"all"`, a
            :mod:`keras_featreg.miners` triplet miner (``SemiHardMiner()``,
            ``BatchHardMiner()``, ``BatchAllMiner()``) or a callable
            ``(distances (b, b), labels (b,)) -> keras_featreg.miners.MinedTriplets``.
        soft: bool, softplus ("soft margin") instead of the hinge. Defaults to `False`.
        distance: `"euclidean"` (default, tfa's ``"L2"``), `"squared_euclidean"` (tfa's
            ``"squared-L2"``), `"cosine"` (``1 - cos``, tfa's ``"angular"``), or any
            :mod:`keras_featreg.distances` object; a similarity
            (``"cosine_similarity"``, ``"dot_product"``) gives ``[s_an - s_ap + m]_+``.
        reducer: how the mined terms are averaged (:mod:`keras_featreg.reducers`).
            Default: ``"mean_nonzero"`` for ``"all"`` (Hermans et al.), ``"mean"``
            otherwise (FaceNet: every positive pair; batch-hard: every anchor).
        miner: alias of `mining` (pytorch-metric-learning's name); when given it wins.
        **kwargs: ``cross_replica``, ``reduction``, ``name``, ``dtype``: see
            :class:`~keras_featreg.losses.MetricLoss`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import TripletLoss
    >>> y_true = np.array([0, 0, 1, 1])
    >>> y_pred = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> # every anchor: hardest positive sqrt(2), hardest negative sqrt(2)
    >>> round(float(TripletLoss(margin=0.2, mining="hard")(y_true, y_pred)), 6)
    0.2
    >>> TripletLoss().bounds(144)
    (0.0, 2.2)
    """

    miner_output = "triplets"

    def __init__(self, margin=0.2, mining="semi_hard", soft=False, distance="euclidean",
                 reducer=None, miner=None, **kwargs):
        miner_arg = "mining" if miner is None else "miner"
        miner = mining if miner is None else miner
        if miner is None:
            raise ValueError("`mining` must be a triplet miner; the triplet loss has no "
                             "meaning without one. Received: mining=None")
        self._explicit_reducer = reducer is not None
        super().__init__(distance=distance, miner=miner, reducer=reducer, miner_arg=miner_arg,
                         **kwargs)
        self.margin = _utils.check_number("margin", margin, minimum=0.0)
        self.soft = _utils.check_bool("soft", soft)
        self.mining = miners_lib.name_of(self.miner)

    def _mines_itself(self):
        return isinstance(self.miner, miners_lib.BatchAllMiner)

    def compute_loss(self, matrix, positive, negative, mined):
        reducer = self.reducer if self._explicit_reducer else None
        if self._mines_itself():
            return _batch_all_loss(self.distance.as_distance(matrix), None, self.margin,
                                   self.soft, masks=(positive, negative), reducer=reducer)
        if not isinstance(mined, miners_lib.MinedTriplets):
            raise ValueError(
                f"TripletLoss needs its miner to return keras_featreg.miners.MinedTriplets. "
                f"Received from {self.miner!r}: {type(mined).__name__}"
            )
        return _reduce_triplets(mined, self.margin, self.soft, reducer)

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings: ``[0, D_max + margin]`` (eq. 5)."""
        check_batch_size(batch_size)
        return triplet_loss_bounds(self.margin, self.distance, self.soft)

    def get_config(self):
        config = super().get_config()
        config["mining"] = config.pop("miner")
        if not self._explicit_reducer:
            config["reducer"] = None
        config.update({"margin": self.margin, "soft": self.soft})
        return config
