"""Ranking (metric-learning) losses: contrastive, triplet, N-pair and angular.

A Keras 3, backend-agnostic replacement for the tensorflow-addons metric-learning
losses, with the lower/upper bounds of the SVMax paper (Taha et al., eqs. 5-12) that the
bounded SVMax regularizer needs.

Convention (as ``keras.losses.Circle``): ``y_true`` holds one integer class label per
sample, shape ``(b,)`` or ``(b, 1)``; ``y_pred`` holds the embeddings, shape ``(b, d)``.
Every loss is a *batch-level* scalar: it compares the samples of the batch with each
other, so the way batches are sampled matters (``p`` classes x ``l`` samples per class;
see each class). ``sample_weight`` is not supported.

Each loss is a pure function (``triplet_loss``, ``contrastive_loss``, ``npair_loss``,
``angular_loss``) plus a thin ``keras.losses.Loss`` subclass holding its configuration.
Triplet selection lives in :mod:`keras_featreg.mining`, distances in
:mod:`keras_featreg.ops.distances`.

Numerics: float16/bfloat16 embeddings are computed in float32 (the result is float32);
float64 stays float64. Degenerate batches -- one sample, no positive pair, no negative,
all embeddings identical, all-zero embeddings -- give finite values *and* finite
gradients; a loss with nothing to average over is 0. A NaN or an infinity anywhere in
``y_pred`` gives NaN (hinges, masked minima and maxima would otherwise hide it).
"""

import math
import numbers

import keras
from keras import ops

from keras_featreg import backend as _backend

from keras_featreg import _utils
from keras_featreg import mining as mining_lib
from keras_featreg.ops import distances as distances_lib

DISTANCES = distances_lib.METRICS
MINING = tuple(mining_lib.MINERS)
NEGATIVES = mining_lib.NEGATIVE_SETS

__all__ = [
    "AngularLoss",
    "ContrastiveLoss",
    "NPairLoss",
    "TripletLoss",
    "angular_loss",
    "angular_loss_bounds",
    "contrastive_loss",
    "contrastive_loss_bounds",
    "npair_loss",
    "npair_loss_bounds",
    "triplet_loss",
    "triplet_loss_bounds",
]


# --------------------------------------------------------------------------- validation


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def _check_margin(margin):
    return _utils.check_number("margin", margin, minimum=0.0)


def _check_power(power):
    if isinstance(power, bool) or power not in (1, 2):
        raise ValueError(f"`power` must be 1 or 2. Received: power={power!r}")
    return int(power)


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


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 2:
        raise ValueError(
            f"`batch_size` must be an integer >= 2. Received: batch_size={batch_size!r}"
        )
    return int(batch_size)


def _embeddings(y_pred):
    return _utils.as_float_tensor(y_pred, name="y_pred", min_rank=2, max_rank=2)


def _inputs(y_true, y_pred, cross_replica=False):
    """Validated ``(labels (b,), embeddings (b, d))`` in the compute dtype.

    ``cross_replica=True``: inside a replica of a multi-replica ``tf.distribute`` strategy,
    the labels and embeddings of all replicas, concatenated in replica order (the global
    batch); unchanged elsewhere.  See :func:`keras_featreg.backend.gather_replicas`.
    """
    embeddings = _embeddings(y_pred)
    labels = mining_lib.labels_vector(y_true, name="y_true")
    n_labels, n_embeddings = labels.shape[0], embeddings.shape[0]
    if n_labels is not None and n_embeddings is not None and n_labels != n_embeddings:
        raise ValueError(
            "`y_true` and `y_pred` must have the same batch size. Received: "
            f"y_true.shape={tuple(ops.shape(y_true))}, y_pred.shape={tuple(embeddings.shape)}"
        )
    if cross_replica:
        labels, embeddings = _gather_replicas(labels, embeddings)
    return labels, embeddings


def _gather_replicas(labels, embeddings):
    """Labels and embeddings of all replicas (no-op outside a multi-replica ``tf.distribute``).

    Two all-gathers: a batched one packs its inputs together and needs a single dtype and
    device memory kind (TensorFlow keeps int32 tensors in host memory).
    """
    return _backend.gather_replicas(labels), _backend.gather_replicas(embeddings)


def _masked_mean(values, mask):
    """Mean of `values` over `mask` (broadcast), 0 when the mask is empty."""
    weights = ops.cast(mask, values.dtype)
    weights = weights * ops.ones_like(values)
    total = ops.sum(values * weights)
    count = ops.sum(weights)
    return total / ops.maximum(count, 1.0)


def _num_negatives(batch_size, negatives):
    return batch_size // 2 - 1 if negatives == "positives" else batch_size - 2


# --------------------------------------------------------------------------- functions


def triplet_loss(y_true, y_pred, margin=0.2, mining="semi-hard", soft=False, distance="euclidean",
                 cross_replica=False):
    """Triplet loss over the triplets that `mining` selects from the batch (eq. 5).

    ``L = mean [D(a, p) - D(a, n) + margin]_+`` (``soft=False``) or
    ``L = mean log(1 + exp(D(a, p) - D(a, n)))`` (``soft=True``, margin unused), over the
    triplets of :func:`keras_featreg.mining.batch_semi_hard`, ``batch_hard`` or
    ``batch_all`` (the latter averages over the triplets with a positive loss).
    See :class:`TripletLoss`. `mining` may also be a callable
    ``(distances (b, b), labels (b,)) -> keras_featreg.mining.MinedTriplets``
    (``keras_featreg.mining.batch_all`` itself runs the O(b^2)-memory "all" path).

    ``cross_replica=True``: under a ``tf.distribute`` strategy, mine and average over the
    global batch (labels and embeddings of all replicas gathered); every replica returns
    the global value, unscaled like the formula. No-op outside a strategy and on JAX.

    Returns:
        Scalar tensor (float32 for half-precision `y_pred`); 0 when the batch has no
        valid triplet.
    """
    margin = _check_margin(margin)
    miner = mining if callable(mining) else mining_lib.get_miner(mining)
    _check_bool("soft", soft)
    _utils.check_choice("distance", distance, DISTANCES)
    labels, embeddings = _inputs(y_true, y_pred, cross_replica)

    pairwise = distances_lib.pairwise_distances(embeddings, metric=distance)
    if miner is mining_lib.batch_all:
        return _utils.propagate_nonfinite(_batch_all_loss(pairwise, labels, margin, soft),
                                          embeddings)
    mined = miner(pairwise, labels)
    difference = mined.positive_distances - mined.negative_distances
    if soft:
        losses = ops.softplus(difference)
    else:
        losses = ops.relu(difference + margin)
    mask = mined.mask
    if mined.average_over_active:
        mask = ops.logical_and(mask, ops.greater(losses, 0.0))
    return _utils.propagate_nonfinite(_masked_mean(losses, mask), embeddings)


def _batch_all_loss(distances, labels, margin, soft):
    """"Batch all" triplet loss without the ``(b, b, b)`` tensors of :func:`mining.batch_all`.

    Hinge: ``sum(sums) / max(sum(counts), 1)`` from
    :func:`keras_featreg.mining.batch_all_hinge_sums`, O(b^2 log b) time and O(b^2)
    memory. Soft margin: ``sum_{a, p, n} log(1 + exp(D[a, p] - D[a, n]))`` has no sorted
    form; :func:`keras_featreg.mining.batch_all_soft_mean` keeps O(b^3) time but O(b^2)
    memory (anchors in chunks).
    """
    if soft:
        return mining_lib.batch_all_soft_mean(distances, labels)
    sums, counts = mining_lib.batch_all_hinge_sums(distances, labels, margin)
    return ops.sum(sums) / ops.maximum(ops.sum(counts), 1.0)


def contrastive_loss(y_true, y_pred, margin=1.0, distance="euclidean", power=1,
                     cross_replica=False):
    """Contrastive loss over all pairs of the batch (eq. 6). See :class:`ContrastiveLoss`.

    ``L = mean_{i != j} [ d_ij D_ij^k + (1 - d_ij) [margin - D_ij]_+^k ]`` with
    ``d_ij = 1`` for same-label pairs and ``k = power``.

    ``cross_replica``: as in :func:`triplet_loss` (all pairs of the global batch).

    Returns:
        Scalar tensor; 0 for a batch of one sample.
    """
    margin = _check_margin(margin)
    _utils.check_choice("distance", distance, DISTANCES)
    power = _check_power(power)
    labels, embeddings = _inputs(y_true, y_pred, cross_replica)

    pairwise = distances_lib.pairwise_distances(embeddings, metric=distance)
    positive, negative = mining_lib.pair_masks(labels)
    pull = pairwise
    push = ops.relu(margin - pairwise)
    if power == 2:
        pull, push = ops.square(pull), ops.square(push)
    losses = ops.where(positive, pull, ops.where(negative, push, ops.zeros_like(push)))
    return _utils.propagate_nonfinite(
        _masked_mean(losses, ops.logical_or(positive, negative)), embeddings
    )


def npair_loss(y_true, y_pred, negatives="positives", l2_reg=0.0, cross_replica=False):
    """Multi-class N-pair loss (eq. 7, Sohn 2016). See :class:`NPairLoss`.

    ``L = mean_a [ -log( exp(a.p) / (exp(a.p) + sum_n exp(a.n)) ) ]
    + l2_reg / 4 * (mean_a ||a||^2 + mean_p ||p||^2)``.

    ``cross_replica``: as in :func:`triplet_loss` (layout read from the global batch).

    Returns:
        Scalar tensor; 0 when the batch holds no anchor/positive pair.
    """
    negatives = _check_negatives(negatives)
    l2_reg = _utils.check_number("l2_reg", l2_reg, minimum=0.0)
    labels, embeddings = _inputs(y_true, y_pred, cross_replica)

    layout = mining_lib.npair_layout(labels)
    negative = mining_lib.npair_negatives(labels, layout, negatives)
    similarity = distances_lib.pairwise_dot(embeddings)
    candidates = ops.logical_or(layout.positive_matrix, negative)
    log_normalizer = mining_lib.masked_logsumexp(similarity, candidates, axis=1)
    positive_logit = ops.sum(
        ops.where(layout.positive_matrix, similarity, ops.zeros_like(similarity)), axis=1
    )
    loss = _masked_mean(log_normalizer - positive_logit, layout.anchors)
    if l2_reg > 0.0:
        squared_norms = ops.sum(ops.square(embeddings), axis=1)
        positives = ops.any(layout.positive_matrix, axis=0)
        loss = loss + 0.25 * l2_reg * (
            _masked_mean(squared_norms, layout.anchors) + _masked_mean(squared_norms, positives)
        )
    return _utils.propagate_nonfinite(loss, embeddings)


def angular_loss(y_true, y_pred, alpha=45.0, negatives="positives", cross_replica=False):
    """Angular loss for N-pair batches (eqs. 9-10, Wang et al. 2017). See :class:`AngularLoss`.

    ``L = mean_a log(1 + sum_n exp(f_apn))``,
    ``f_apn = 4 tan^2(alpha) (a + p).n - 2 (1 + tan^2(alpha)) a.p``.

    ``cross_replica``: as in :func:`triplet_loss` (layout read from the global batch).

    Returns:
        Scalar tensor; 0 when the batch holds no anchor/positive pair.
    """
    alpha = _check_alpha(alpha)
    negatives = _check_negatives(negatives)
    labels, embeddings = _inputs(y_true, y_pred, cross_replica)

    tan2 = math.tan(math.radians(alpha)) ** 2
    layout = mining_lib.npair_layout(labels)
    negative = mining_lib.npair_negatives(labels, layout, negatives)
    # Row a of `positive_embeddings` is the positive of anchor a (zeros for non-anchors).
    positive_embeddings = ops.matmul(ops.cast(layout.positive_matrix, embeddings.dtype), embeddings)
    anchor_positive = ops.sum(embeddings * positive_embeddings, axis=1, keepdims=True)
    pair_negative = distances_lib.pairwise_dot(embeddings + positive_embeddings, embeddings)
    f = 4.0 * tan2 * pair_negative - 2.0 * (1.0 + tan2) * anchor_positive
    losses = mining_lib.masked_logsumexp(f, negative, axis=1, include_zero=True)
    return _utils.propagate_nonfinite(_masked_mean(losses, layout.anchors), embeddings)


# ------------------------------------------------------------------------------ bounds


def triplet_loss_bounds(margin=0.2, distance="euclidean", soft=False):
    """(lower, upper) of :func:`triplet_loss` for L2-normalized embeddings (eq. 5).

    With ``D_max`` the largest distance between unit vectors (2 for ``"euclidean"`` and
    ``"cosine"``, 4 for ``"squared_euclidean"``): ``[0, D_max + margin]`` for the hinge
    (the paper's ``[0, 2 + m]``), ``[log(1 + e^-D_max), log(1 + e^D_max)]`` for the soft
    margin. Holds for every mining strategy (each is a mean of per-triplet terms).
    """
    margin = _check_margin(margin)
    _check_bool("soft", soft)
    d_max = distances_lib.max_distance_on_unit_sphere(distance)
    if soft:
        return (math.log1p(math.exp(-d_max)), math.log1p(math.exp(d_max)))
    return (0.0, d_max + margin)


def contrastive_loss_bounds(margin=1.0, distance="euclidean", power=1):
    """(lower, upper) of :func:`contrastive_loss` for L2-normalized embeddings (eq. 6).

    A positive pair costs ``D^k <= D_max^k``, a negative pair ``[m - D]_+^k <= m^k``, so
    the mean lies in ``[0, max(D_max, m)^k]``: ``[0, 2]`` for the paper's Euclidean
    distance and ``m = 1 < 2``.
    """
    margin = _check_margin(margin)
    power = _check_power(power)
    d_max = distances_lib.max_distance_on_unit_sphere(distance)
    return (0.0, max(d_max, margin) ** power)


def npair_loss_bounds(batch_size, negatives="positives", l2_reg=0.0):
    """(lower, upper) of :func:`npair_loss` for L2-normalized embeddings (eq. 8).

    ``[log(e^2 + |n|) - 2, log(e^2 |n| + 1)]`` (+ ``l2_reg / 2`` when the regularizer is
    on: each squared norm is 1), with ``|n|`` the number of negatives per anchor of a
    ``p x 2`` batch of `batch_size` samples: ``b/2 - 1`` for ``negatives="positives"``,
    ``b - 2`` (the paper's count) for ``negatives="all"``.
    """
    batch_size = _check_batch_size(batch_size)
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
    batch_size = _check_batch_size(batch_size)
    negatives = _check_negatives(negatives)
    f_min, f_max = angular_f_bounds(alpha)
    n = _num_negatives(batch_size, negatives)
    return (math.log1p(n * math.exp(f_min)), math.log1p(n * math.exp(f_max)))


# ----------------------------------------------------------------------------- classes


class _RankingLoss(keras.losses.Loss):
    """Shared plumbing of the batch-level losses.

    ``keras.losses.Loss.__call__`` would cast ``y_pred`` *and the labels* to the loss
    dtype before ``call``: an integer ``y_pred`` would pass silently and integer labels
    above 2**24 would collide in float32. The batch losses already return a scalar, so
    there is nothing to reduce or weight: ``__call__`` validates, calls ``call`` on the
    inputs as given and casts the result to the loss dtype.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} is a batch-level loss and does not support "
                "`sample_weight` (or `class_weight`). Received: sample_weight="
                f"{type(sample_weight).__name__} of shape {tuple(getattr(sample_weight, 'shape', ()))}"
            )
        with keras.name_scope(self.name):
            # Keras divides each replica's loss by the number of replicas (the replicas'
            # gradients are then summed); a loss that returns a scalar must do it itself.
            value = ops.cast(self.call(y_true, y_pred), self.dtype)
            return _backend.scale_loss_for_replicas(value)


@keras.saving.register_keras_serializable(package="keras_featreg")
class TripletLoss(_RankingLoss):
    """Triplet loss with in-batch mining (semi-hard, batch-hard or batch-all).

    Formula (SVMax paper eq. 5; Schroff et al. 2015; Hermans et al. 2017)::

        loss = mean_{(a, p, n) mined} [D(a, p) - D(a, n) + margin]_+      # soft=False
        loss = mean_{(a, p, n) mined} log(1 + exp(D(a, p) - D(a, n)))     # soft=True

    Mining (:mod:`keras_featreg.mining`):

    * ``"semi-hard"``: for every positive pair ``(a, p)``, the closest negative farther
      than ``p``; if there is none, the farthest negative. Mean over positive pairs.
      Identical to ``tfa.losses.TripletSemiHardLoss``.
    * ``"hard"``: for every anchor, the farthest positive and the closest negative. Mean
      over anchors that have both. Identical to ``tfa.losses.TripletHardLoss`` on
      batches where every class appears at least twice.
    * ``"all"``: every valid triplet; mean over the triplets whose loss is > 0 (with
      ``soft=True``: over all valid triplets).

    Cost: ``"semi-hard"`` and ``"all"`` sort each anchor's negative distances once and
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
        mining: `"semi-hard"` (default), `"hard"` or `"all"`.
        soft: bool, softplus ("soft margin") instead of the hinge. Defaults to `False`.
        distance: `"euclidean"` (default, tfa's ``"L2"``), `"squared_euclidean"` (tfa's
            ``"squared-L2"``) or `"cosine"` (``1 - cos``, tfa's ``"angular"``).
        reduction: kept for Keras compatibility; the loss is already a scalar, so it has
            no effect.
        name: name of the loss. Defaults to `"triplet_loss"`.
        dtype: dtype of the returned loss. Defaults to `keras.backend.floatx()`. (The
            computation runs in float32, or float64 for float64 embeddings.)
        cross_replica: bool. Under a ``tf.distribute`` strategy, gather the labels and
            embeddings of all replicas and compute the loss (mining included) over the
            global batch; each replica receives the gradient of its own rows. Like every
            Keras loss, the value returned inside a replica is divided by the number of
            replicas, so one ``model.fit`` step and the reported loss equal a single-device
            step on the global batch. Defaults to `False` (each replica mines its own
            slice). No-op outside a strategy and on JAX, whose ``DataParallel`` step
            already sees the global batch. See ``docs/guides/multi-worker.md``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses_ranking import TripletLoss
    >>> y_true = np.array([0, 0, 1, 1])
    >>> y_pred = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> # every anchor: hardest positive sqrt(2), hardest negative sqrt(2)
    >>> round(float(TripletLoss(margin=0.2, mining="hard")(y_true, y_pred)), 6)
    0.2
    >>> TripletLoss().bounds(144)
    (0.0, 2.2)
    """

    def __init__(
        self,
        margin=0.2,
        mining="semi-hard",
        soft=False,
        distance="euclidean",
        reduction="sum_over_batch_size",
        name="triplet_loss",
        dtype=None,
        cross_replica=False,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.cross_replica = _check_bool("cross_replica", cross_replica)
        self.margin = _check_margin(margin)
        mining_lib.get_miner(mining)
        self.mining = mining
        self.soft = _check_bool("soft", soft)
        self.distance = _utils.check_choice("distance", distance, DISTANCES)

    def call(self, y_true, y_pred):
        return triplet_loss(
            y_true, y_pred, margin=self.margin, mining=self.mining, soft=self.soft,
            distance=self.distance, cross_replica=self.cross_replica,
        )

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings: ``[0, D_max + margin]`` (eq. 5)."""
        _check_batch_size(batch_size)
        return triplet_loss_bounds(self.margin, self.distance, self.soft)

    def get_config(self):
        config = super().get_config()
        config["cross_replica"] = self.cross_replica
        config.update(
            {"margin": self.margin, "mining": self.mining, "soft": self.soft, "distance": self.distance}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_featreg")
class ContrastiveLoss(_RankingLoss):
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
        distance: `"euclidean"` (default), `"squared_euclidean"` or `"cosine"`.
        power: 1 (default, the SVMax paper's eq. 6: ``D`` and ``[m - D]_+``) or 2
            (``D^2`` and ``[m - D]_+^2``, as tensorflow-addons).
        reduction: kept for Keras compatibility; the loss is already a scalar, so it has
            no effect.
        name: name of the loss. Defaults to `"contrastive_loss"`.
        dtype: dtype of the returned loss. Defaults to `keras.backend.floatx()`. (The
            computation runs in float32, or float64 for float64 embeddings.)
        cross_replica: bool. Under a ``tf.distribute`` strategy, gather the labels and
            embeddings of all replicas and compute the loss (mining included) over the
            global batch; each replica receives the gradient of its own rows. Like every
            Keras loss, the value returned inside a replica is divided by the number of
            replicas, so one ``model.fit`` step and the reported loss equal a single-device
            step on the global batch. Defaults to `False` (each replica mines its own
            slice). No-op outside a strategy and on JAX, whose ``DataParallel`` step
            already sees the global batch. See ``docs/guides/multi-worker.md``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses_ranking import ContrastiveLoss
    >>> y_true = np.array([0, 0, 1])
    >>> y_pred = np.array([[0.0], [0.5], [0.8]])  # 1-D embeddings
    >>> # pairs: (0,1) positive D=.5; (0,2) negative [1-.8]=.2; (1,2) negative [1-.3]=.7
    >>> round(float(ContrastiveLoss(margin=1.0)(y_true, y_pred)), 6)  # (.5+.2+.7)/3
    0.466667
    >>> ContrastiveLoss().bounds(144)
    (0.0, 2.0)
    """

    def __init__(
        self,
        margin=1.0,
        distance="euclidean",
        power=1,
        reduction="sum_over_batch_size",
        name="contrastive_loss",
        dtype=None,
        cross_replica=False,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.cross_replica = _check_bool("cross_replica", cross_replica)
        self.margin = _check_margin(margin)
        self.distance = _utils.check_choice("distance", distance, DISTANCES)
        self.power = _check_power(power)

    def call(self, y_true, y_pred):
        return contrastive_loss(
            y_true, y_pred, margin=self.margin, distance=self.distance, power=self.power,
            cross_replica=self.cross_replica,
        )

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized embeddings: ``[0, max(D_max, m)^power]`` (eq. 6)."""
        _check_batch_size(batch_size)
        return contrastive_loss_bounds(self.margin, self.distance, self.power)

    def get_config(self):
        config = super().get_config()
        config["cross_replica"] = self.cross_replica
        config.update({"margin": self.margin, "distance": self.distance, "power": self.power})
        return config


@keras.saving.register_keras_serializable(package="keras_featreg")
class NPairLoss(_RankingLoss):
    """Multi-class N-pair loss (Sohn 2016): softmax cross-entropy over ``a . x`` logits.

    Formula (SVMax paper eq. 7)::

        loss = mean_a -log( exp(a.p) / (exp(a.p) + sum_{n in N(a)} exp(a.n)) )
               + l2_reg / 4 * (mean_a ||a||^2 + mean_p ||p||^2)

    Batch layout, read from the labels (:func:`keras_featreg.mining.npair_layout`): the
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
        reduction: kept for Keras compatibility; the loss is already a scalar, so it has
            no effect.
        name: name of the loss. Defaults to `"npair_loss"`.
        dtype: dtype of the returned loss. Defaults to `keras.backend.floatx()`. (The
            computation runs in float32, or float64 for float64 embeddings.)
        cross_replica: bool. Under a ``tf.distribute`` strategy, gather the labels and
            embeddings of all replicas and compute the loss (mining included) over the
            global batch; each replica receives the gradient of its own rows. Like every
            Keras loss, the value returned inside a replica is divided by the number of
            replicas, so one ``model.fit`` step and the reported loss equal a single-device
            step on the global batch. Defaults to `False` (each replica mines its own
            slice). No-op outside a strategy and on JAX, whose ``DataParallel`` step
            already sees the global batch. See ``docs/guides/multi-worker.md``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses_ranking import NPairLoss
    >>> y_true = np.array([0, 1, 0, 1])  # anchors: samples 0, 1; positives: 2, 3
    >>> y_pred = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # each anchor: logits (1 for its positive, 0 for the other) -> log(1 + e^-1)
    >>> round(float(NPairLoss()(y_true, y_pred)), 6)
    0.313262
    >>> [round(v, 4) for v in NPairLoss().bounds(144)]  # |n| = 71
    [2.3617, 6.2646]
    """

    def __init__(
        self,
        negatives="positives",
        l2_reg=0.0,
        reduction="sum_over_batch_size",
        name="npair_loss",
        dtype=None,
        cross_replica=False,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.cross_replica = _check_bool("cross_replica", cross_replica)
        self.negatives = _check_negatives(negatives)
        self.l2_reg = _utils.check_number("l2_reg", l2_reg, minimum=0.0)

    def call(self, y_true, y_pred):
        return npair_loss(y_true, y_pred, negatives=self.negatives, l2_reg=self.l2_reg,
                          cross_replica=self.cross_replica)

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized ``p x 2`` batches of `batch_size` (eq. 8)."""
        return npair_loss_bounds(batch_size, self.negatives, self.l2_reg)

    def get_config(self):
        config = super().get_config()
        config["cross_replica"] = self.cross_replica
        config.update({"negatives": self.negatives, "l2_reg": self.l2_reg})
        return config


@keras.saving.register_keras_serializable(package="keras_featreg")
class AngularLoss(_RankingLoss):
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
        reduction: kept for Keras compatibility; the loss is already a scalar, so it has
            no effect.
        name: name of the loss. Defaults to `"angular_loss"`.
        dtype: dtype of the returned loss. Defaults to `keras.backend.floatx()`. (The
            computation runs in float32, or float64 for float64 embeddings.)
        cross_replica: bool. Under a ``tf.distribute`` strategy, gather the labels and
            embeddings of all replicas and compute the loss (mining included) over the
            global batch; each replica receives the gradient of its own rows. Like every
            Keras loss, the value returned inside a replica is divided by the number of
            replicas, so one ``model.fit`` step and the reported loss equal a single-device
            step on the global batch. Defaults to `False` (each replica mines its own
            slice). No-op outside a strategy and on JAX, whose ``DataParallel`` step
            already sees the global batch. See ``docs/guides/multi-worker.md``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses_ranking import AngularLoss
    >>> y_true = np.array([0, 1, 0, 1])
    >>> y_pred = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> # f = 4 (a + p).n - 4 a.p = 0 - 4 for each anchor -> log(1 + e^-4)
    >>> round(float(AngularLoss(alpha=45.0)(y_true, y_pred)), 6)
    0.01815
    >>> [round(v, 4) for v in AngularLoss().bounds(144)]  # |n| = 71, f in [-12, 6]
    [0.0004, 10.2627]
    """

    def __init__(
        self,
        alpha=45.0,
        negatives="positives",
        reduction="sum_over_batch_size",
        name="angular_loss",
        dtype=None,
        cross_replica=False,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.cross_replica = _check_bool("cross_replica", cross_replica)
        self.alpha = _check_alpha(alpha)
        self.negatives = _check_negatives(negatives)

    def call(self, y_true, y_pred):
        return angular_loss(y_true, y_pred, alpha=self.alpha, negatives=self.negatives,
                            cross_replica=self.cross_replica)

    def bounds(self, batch_size):
        """(lower, upper) for L2-normalized ``p x 2`` batches (eq. 12, corrected upper)."""
        return angular_loss_bounds(batch_size, self.alpha, self.negatives)

    def get_config(self):
        config = super().get_config()
        config["cross_replica"] = self.cross_replica
        config.update({"alpha": self.alpha, "negatives": self.negatives})
        return config
