"""pytorch-metric-learning's deterministic miners: triplet margin, easy/hard, angular, HDC.

Ports of PML 2.9's ``TripletMarginMiner``, ``BatchEasyHardMiner``, ``AngularMiner`` and
``HDCMiner``. PML returns index tuples of data-dependent length; these return masks over
the ``(b, m)`` pairs or the ``(b, m, m)`` triplets (static shapes, so they compile under
XLA and ``jax.jit``), selecting the same pairs or triplets. Every decision is taken on
``stop_gradient`` values; the selected entries keep their gradient in the loss.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg._utils import PACKAGE
from keras_featreg.miners._base import MinedPairs, MinedTriplets, Miner
from keras_featreg.miners._triplets import batch_all

# ----------------------------------------------------------------------------- helpers


def _euclidean(matrix, distance, who):
    """``(D, D^2)``: the Euclidean distance that `matrix` of `distance` stands for.

    Exact for ``"euclidean"`` and ``"squared_euclidean"`` (any embeddings, as PML's
    ``LpDistance(p=2)``); for ``"cosine"`` (``1 - cos``), ``"cosine_similarity"`` and
    ``"dot_product"`` it assumes L2-normalized embeddings (``||x - y||^2 = 2 - 2 cos``),
    as PML's ``LpDistance(normalize_embeddings=True)`` that these miners require.
    """
    name = getattr(distance, "name", None)
    p, power = getattr(distance, "p", None), getattr(distance, "power", 1)
    zero = ops.zeros_like(matrix)
    if name == "euclidean" or (p == 2 and power == 1 and not distance.is_inverted):
        return matrix, ops.square(matrix)
    if name == "squared_euclidean" or (p == 2 and power == 2 and not distance.is_inverted):
        squared = ops.maximum(matrix, zero)
    elif name == "cosine":
        squared = ops.maximum(2.0 * matrix, zero)
    elif name in ("cosine_similarity", "dot_product"):
        squared = ops.maximum(2.0 - 2.0 * matrix, zero)
    else:
        raise ValueError(
            f"{who} measures Euclidean geometry: its distance must be 'euclidean', "
            "'squared_euclidean', 'cosine', 'cosine_similarity' or 'dot_product' (the "
            f"last three on L2-normalized embeddings). Received: distance={distance!r}")
    return ops.sqrt(squared), squared


def _square_matrix(matrix, ref_labels, who):
    if ref_labels is not None or (matrix.shape[0] is not None and matrix.shape[1] is not None
                                  and matrix.shape[0] != matrix.shape[1]):
        raise ValueError(
            f"{who} needs the distances between the references themselves, so it mines "
            "a batch against itself only (no cross-batch references). Received: "
            f"matrix.shape={tuple(matrix.shape)}, ref_labels="
            f"{'None' if ref_labels is None else 'given'}")


def _cubic_triplets(d, positive, negative, keep):
    """:class:`MinedTriplets` of the ``(b, m, m)`` triplets ``keep`` (over valid ones)."""
    valid = ops.logical_and(ops.expand_dims(positive, 2), ops.expand_dims(negative, 1))
    return MinedTriplets(
        positive_distances=ops.expand_dims(d, 2),
        negative_distances=ops.expand_dims(d, 1),
        mask=ops.logical_and(valid, keep),
        average_over_active=True,
    )


@functools.lru_cache(maxsize=32)
def _ceil_table(fraction, size):
    """``[ceil(fraction * n) for n in 0..size]`` with Python's float64 product (PML's ``k``)."""
    return np.ceil(fraction * np.arange(size + 1, dtype=np.float64)).astype(np.int32)


def _keep_fraction(keys, candidates, fraction):
    """Mask of the ``ceil(fraction * n)`` candidates with the smallest `keys` (n candidates).

    One sort of all ``b * m`` entries (``top_k``), then each candidate's rank. The count
    is PML's ``int(math.ceil(filter_percentage * num_pairs))`` exactly (a table of the
    float64 products when the size is known while tracing; otherwise computed in the
    compute dtype). Ties at the cut-off: the backend's ``top_k`` order (lower flat index
    first on TensorFlow and JAX).
    """
    size = None
    if keys.shape[0] is not None and keys.shape[1] is not None:
        size = int(keys.shape[0]) * int(keys.shape[1])
    flat_candidates = ops.reshape(candidates, (-1,))
    flat = ops.where(flat_candidates, ops.reshape(keys, (-1,)),
                     ops.cast(float("inf"), keys.dtype))
    count = ops.sum(ops.cast(flat_candidates, "int32"))
    if size is not None:
        k = ops.take(ops.convert_to_tensor(_ceil_table(float(fraction), size)), count)
        n = size
    else:
        k = ops.cast(ops.ceil(fraction * ops.cast(count, keys.dtype)), "int32")
        n = ops.shape(flat)[0]
    _, order = _backend.top_k(-flat, n)
    order = ops.cast(order, "int32")
    rank = ops.scatter(ops.expand_dims(order, 1), ops.arange(n, dtype="int32"),
                       ops.shape(flat))
    keep = ops.logical_and(ops.less(rank, k), flat_candidates)
    return ops.reshape(keep, ops.shape(keys))


def _one_hot_rows(index, width):
    columns = ops.arange(width, dtype=index.dtype)
    return ops.equal(ops.expand_dims(index, 1), ops.expand_dims(columns, 0))


# --------------------------------------------------------------------- triplet margin


TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


@keras.saving.register_keras_serializable(package=PACKAGE)
class TripletMarginMiner(Miner):
    """Every triplet whose margin ``d_an - d_ap`` falls in a range (PML's ``TripletMarginMiner``).

    With ``t = d(a, n) - d(a, p)`` in "smaller is closer" orientation (for a similarity
    ``s``: ``t = s_ap - s_an``) and ``m`` the margin, the valid triplets ``(a, p, n)``
    (``p`` a positive and ``n`` a negative of ``a``) kept are::

        "all":      t <= m              (the triplets that violate the margin)
        "hard":     t <= 0              (the negative is at least as close as the positive)
        "semihard": 0 < t <= m          (farther than the positive, inside the margin)
        "easy":     t > m               (the complement of "all")

    PML's ``"semihard"`` keeps *every* negative in that band, for every positive pair;
    FaceNet's semi-hard mining (Schroff et al., CVPR 2015;
    :class:`~keras_featreg.miners.SemiHardMiner`, ``TripletLoss(mining="semi_hard")``)
    keeps *one* negative per positive pair -- the closest one farther than the positive
    (with no margin bound), falling back to the farthest negative when none is farther.
    A triplet ``(a, p, n)`` with ``t > m`` can be FaceNet's choice; an anchor-positive
    pair with several negatives in ``(0, m]`` gives several triplets here and one there.

    Returns :class:`~keras_featreg.miners.MinedTriplets` with the ``(b, m, m)`` mask of the
    kept triplets (O(b^3) memory, as PML's index construction) and
    ``average_over_active=True``: :class:`~keras_featreg.losses.TripletLoss` then averages
    over the triplets with a positive loss, as PML's ``TripletMarginLoss``
    (``AvgNonZeroReducer``).

    Difference from PML: none in the selected set (the comparisons are PML's, on the same
    values). PML computes the triplet margin on the matrix of its own distance; pass the
    loss's distance (``TripletLoss(distance=...)`` does).

    Args:
        margin: float >= 0. Defaults to `0.2`.
        type_of_triplets: `"all"` (default), `"hard"`, `"semihard"` or `"easy"`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.miners import TripletMarginMiner
    >>> d = np.array([[0.0, 1.0, 1.1, 0.5],
    ...               [1.0, 0.0, 2.0, 2.0],
    ...               [1.1, 2.0, 0.0, 1.0],
    ...               [0.5, 2.0, 1.0, 0.0]])
    >>> mined = TripletMarginMiner(0.2, "semihard")(d, np.array([0, 0, 1, 1]))
    >>> # (anchor, positive, negative): t = 1.1 - 1.0 for both, in (0, 0.2]
    >>> np.argwhere(np.asarray(mined.mask)).tolist()
    [[0, 1, 2], [2, 3, 0]]
    """

    output = "triplets"
    name = "triplet_margin"

    def __init__(self, margin=0.2, type_of_triplets="all"):
        self.margin = _utils.check_number("margin", margin, minimum=0.0)
        self.type_of_triplets = _utils.check_choice("type_of_triplets", type_of_triplets,
                                                    TRIPLET_TYPES)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        d = distance.as_distance(matrix)
        values = ops.stop_gradient(d)
        t = ops.expand_dims(values, 1) - ops.expand_dims(values, 2)  # [a, p, n]
        margin = ops.cast(self.margin, t.dtype)
        if self.type_of_triplets == "easy":
            keep = ops.greater(t, margin)
        else:
            keep = ops.less_equal(t, margin)
            if self.type_of_triplets == "hard":
                keep = ops.logical_and(keep, ops.less_equal(t, 0.0))
            elif self.type_of_triplets == "semihard":
                keep = ops.logical_and(keep, ops.greater(t, 0.0))
        return _cubic_triplets(d, positive, negative, keep)

    def get_config(self):
        return {"margin": self.margin, "type_of_triplets": self.type_of_triplets}


# ---------------------------------------------------------------------- easy / hard


STRATEGIES = ("hard", "semihard", "easy", "all")


def _check_range(name, value):
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
            or not value[0] <= value[1]):
        raise ValueError(f"`{name}` must be None or a pair (low, high) of numbers with "
                         f"low <= high. Received: {name}={value!r}")
    return (float(value[0]), float(value[1]))


def _pick(values, candidates, largest):
    """Per row, the index of the largest (or smallest) candidate value, and whether any."""
    fill = ops.cast(float("-inf") if largest else float("inf"), values.dtype)
    filled = ops.where(candidates, values, fill)
    index = ops.argmax(filled, axis=1) if largest else ops.argmin(filled, axis=1)
    return ops.cast(index, "int32"), ops.any(candidates, axis=1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchEasyHardMiner(Miner):
    """One positive and/or one negative per anchor by easy/hard strategies (Xuan et al. 2020).

    Xuan, Stylianou, Liu & Pless, "Improved Embeddings with Easy Positive Triplet
    Mining", WACV 2020: each anchor is pulled towards its *easiest* (closest) positive
    and pushed from a semi-hard negative (the paper pairs it with an NCA/softmax loss:
    PML's advice is ``NTXentLoss(temperature=0.1)``). PML's ``BatchEasyHardMiner``,
    in "smaller is closer" orientation ``d`` (a similarity is negated):

    * positive of anchor ``a``: ``"easy"`` the closest positive (min ``d``), ``"hard"``
      the farthest (max ``d``), ``"semihard"`` the farthest positive closer than the
      selected negative (``max {d_ap : d_ap < d_an*}``), ``"all"`` every positive pair;
    * negative: ``"easy"`` the farthest negative, ``"hard"`` the closest, ``"semihard"``
      the closest negative farther than the selected positive
      (``min {d_an : d_an > d_ap*}``), ``"all"`` every negative pair;
    * ``allowed_pos_range`` / ``allowed_neg_range`` ``(low, high)``: only pairs whose raw
      matrix value (a similarity for a similarity) lies in ``[low, high]`` are candidates.

    Without ``"all"``, an anchor is kept only when it has both a positive and a negative
    (one triplet per anchor); with ``"all"`` on one side, the other side's anchors are
    kept when they have a candidate. "semihard" may not be combined with "semihard" or
    "all" (as PML).

    Returns :class:`~keras_featreg.miners.MinedPairs` (``output="pairs"``, PML's
    ``(a1, p, a2, n)``) or :class:`~keras_featreg.miners.MinedTriplets`
    (``output="triplets"``, for :class:`~keras_featreg.losses.TripletLoss`): the
    triplets ``(a, p, n)`` with ``(a, p)`` and ``(a, n)`` both selected -- what PML's
    ``convert_to_triplets`` makes of the pairs -- averaged over the active ones as PML's
    ``TripletMarginLoss``. Shapes ``(b,)`` without ``"all"``, ``(b, m)`` with one
    ``"all"``, ``(b, m, m)`` with two.

    Difference from PML: none in the selection. Exact ties (two candidates at the same
    distance): one is chosen, the first by index (``argmin``/``argmax``); PML's
    ``torch.min``/``torch.max`` choose one too (not documented which).

    Args:
        pos_strategy: `"easy"` (default), `"hard"`, `"semihard"` or `"all"`.
        neg_strategy: `"semihard"` (default), `"hard"`, `"easy"` or `"all"`.
        allowed_pos_range: None (default) or ``(low, high)``.
        allowed_neg_range: None (default) or ``(low, high)``.
        output: `"pairs"` (default) or `"triplets"`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.miners import BatchEasyHardMiner
    >>> d = np.array([[0.0, 0.3, 0.9, 0.5, 0.2],
    ...               [0.3, 0.0, 0.6, 0.8, 0.7],
    ...               [0.9, 0.6, 0.0, 0.4, 1.0],
    ...               [0.5, 0.8, 0.4, 0.0, 0.6],
    ...               [0.2, 0.7, 1.0, 0.6, 0.0]])
    >>> mined = BatchEasyHardMiner()(d, np.array([0, 0, 0, 1, 1]))
    >>> # anchor 0: easiest positive 1 (0.3); closest negative farther than 0.3: 3 (0.5)
    >>> pos, neg = np.asarray(mined.positive), np.asarray(mined.negative)
    >>> np.argwhere(pos).tolist()[:1], np.argwhere(neg).tolist()[:1]
    ([[0, 1]], [[0, 3]])
    """

    name = "batch_easy_hard"

    def __init__(self, pos_strategy="easy", neg_strategy="semihard", allowed_pos_range=None,
                 allowed_neg_range=None, output="pairs"):
        self.pos_strategy = _utils.check_choice("pos_strategy", pos_strategy, STRATEGIES)
        self.neg_strategy = _utils.check_choice("neg_strategy", neg_strategy, STRATEGIES)
        pair = (self.pos_strategy, self.neg_strategy)
        if pair == ("semihard", "semihard"):
            raise ValueError("`pos_strategy` and `neg_strategy` cannot both be 'semihard'. "
                             f"Received: pos_strategy={pos_strategy!r}, "
                             f"neg_strategy={neg_strategy!r}")
        if "semihard" in pair and "all" in pair:
            raise ValueError("'semihard' cannot be combined with 'all' (`pos_strategy`, "
                             f"`neg_strategy`). Received: pos_strategy={pos_strategy!r}, "
                             f"neg_strategy={neg_strategy!r}")
        self.allowed_pos_range = _check_range("allowed_pos_range", allowed_pos_range)
        self.allowed_neg_range = _check_range("allowed_neg_range", allowed_neg_range)
        self.output = _utils.check_choice("output", output, ("pairs", "triplets"))

    @staticmethod
    def _in_range(candidates, raw, value_range):
        if value_range is None:
            return candidates
        inside = ops.logical_and(ops.greater_equal(raw, value_range[0]),
                                 ops.less_equal(raw, value_range[1]))
        return ops.logical_and(candidates, inside)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        d = distance.as_distance(matrix)
        values = ops.stop_gradient(d)
        raw = ops.stop_gradient(matrix)
        width = ops.shape(values)[1]
        pos_candidates = self._in_range(positive, raw, self.allowed_pos_range)
        neg_candidates = self._in_range(negative, raw, self.allowed_neg_range)
        pos_largest = self.pos_strategy in ("hard", "semihard")
        neg_largest = self.neg_strategy == "easy"

        def take(index):
            return _backend.take_rows(values, ops.expand_dims(index, 1))

        p_index = n_index = keep_p = keep_n = None
        if self.pos_strategy == "semihard":
            n_index, keep_n = _pick(values, neg_candidates, neg_largest)
            pos_candidates = ops.logical_and(pos_candidates, ops.less(values, take(n_index)))
            p_index, keep_p = _pick(values, pos_candidates, True)
        elif self.neg_strategy == "semihard":
            p_index, keep_p = _pick(values, pos_candidates, pos_largest)
            neg_candidates = ops.logical_and(neg_candidates, ops.greater(values, take(p_index)))
            n_index, keep_n = _pick(values, neg_candidates, False)
        else:
            if self.pos_strategy != "all":
                p_index, keep_p = _pick(values, pos_candidates, pos_largest)
            if self.neg_strategy != "all":
                n_index, keep_n = _pick(values, neg_candidates, neg_largest)
        if keep_p is not None and keep_n is not None:
            keep_p = keep_n = ops.logical_and(keep_p, keep_n)

        if self.output == "pairs":
            pos = positive if p_index is None else ops.logical_and(
                _one_hot_rows(p_index, width), ops.expand_dims(keep_p, 1))
            neg = negative if n_index is None else ops.logical_and(
                _one_hot_rows(n_index, width), ops.expand_dims(keep_n, 1))
            return MinedPairs(pos, neg)

        if p_index is None and n_index is None:
            mined = batch_all(d, None, masks=(positive, negative))
            return mined._replace(average_over_active=True)
        if p_index is None:
            return MinedTriplets(d, _backend.take_rows(d, ops.expand_dims(n_index, 1)),
                                 ops.logical_and(positive, ops.expand_dims(keep_n, 1)), True)
        if n_index is None:
            return MinedTriplets(_backend.take_rows(d, ops.expand_dims(p_index, 1)), d,
                                 ops.logical_and(ops.expand_dims(keep_p, 1), negative), True)
        return MinedTriplets(_backend.take_rows(d, ops.expand_dims(p_index, 1))[:, 0],
                             _backend.take_rows(d, ops.expand_dims(n_index, 1))[:, 0],
                             keep_p, True)

    def get_config(self):
        return {"pos_strategy": self.pos_strategy, "neg_strategy": self.neg_strategy,
                "allowed_pos_range": self.allowed_pos_range,
                "allowed_neg_range": self.allowed_neg_range, "output": self.output}


# --------------------------------------------------------------------------- angular


@keras.saving.register_keras_serializable(package=PACKAGE)
class AngularMiner(Miner):
    """Triplets whose angle at the negative exceeds ``angle`` (PML's ``AngularMiner``).

    Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss", ICCV 2017
    (eq. 5-6): with ``c = (x_a + x_p) / 2``, the triplet ``(a, p, n)`` is kept when
    ``tan^-1(||x_a - x_p|| / (2 ||x_n - c||)) > angle`` -- the triplets that violate the
    angular constraint ``||x_a - x_p|| <= 2 tan(angle) ||x_n - c||``.

    The miner sees the distance matrix, not the embeddings: ``||x_n - c||`` comes from
    Apollonius' theorem, ``||x_n - c||^2 = (D_an^2 + D_pn^2) / 2 - D_ap^2 / 4``, exact in
    Euclidean geometry. So it needs the batch against itself (not cross-batch
    references) and a Euclidean distance (``"euclidean"``, ``"squared_euclidean"``; or
    ``"cosine"``, ``"cosine_similarity"``, ``"dot_product"`` of L2-normalized
    embeddings). Returns the ``(b, b, b)`` triplet mask with ``average_over_active=True``.
    The test is ``D_ap^2 cos^2(angle) > 4 D_nc^2 sin^2(angle)`` (no arctangent over the
    ``b^3`` triplets); an angle of 90 degrees or more keeps nothing.

    Differences from PML: PML computes the angle on the raw (un-normalized) embeddings
    with ``torch.nn.functional.pairwise_distance``, which adds ``eps = 1e-6`` to every
    coordinate difference: for coinciding anchor and positive it sees
    ``||x_a - x_p|| = 1e-6 sqrt(d)`` instead of 0 -- an angle of about 0 for any other
    negative, but ``atan(1/2) = 26.6`` degrees when the negative coincides too (a
    collapsed batch: PML mines every triplet there, this miner none: ``D_ap = 0`` gives
    angle 0). Elsewhere the sets agree (up to float rounding exactly at the threshold).

    Args:
        angle: float in degrees, >= 0. Defaults to `20`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.miners import AngularMiner
    >>> from keras_featreg.distances import EuclideanDistance
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0]])
    >>> mined = AngularMiner(angle=30)(EuclideanDistance()(x), np.array([0, 0, 1, 1]))
    >>> # n = 2 lies near the pair (0, 1); the pair (2, 3) is far apart: both negatives
    >>> np.argwhere(np.asarray(mined.mask)).tolist()
    [[0, 1, 2], [1, 0, 2], [2, 3, 0], [2, 3, 1], [3, 2, 0], [3, 2, 1]]
    """

    output = "triplets"
    name = "angular"

    def __init__(self, angle=20):
        self.angle = _utils.check_number("angle", angle, minimum=0.0)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        _square_matrix(matrix, ref_labels, "AngularMiner")
        d = distance.as_distance(matrix)
        _, squared = _euclidean(ops.stop_gradient(matrix), distance, "AngularMiner")
        ap2 = ops.expand_dims(squared, 2)  # [a, p, 1]
        an2 = ops.expand_dims(squared, 1)  # [a, 1, n]
        pn2 = ops.expand_dims(squared, 0)  # [1, p, n]
        nc2 = ops.maximum(0.5 * (an2 + pn2) - 0.25 * ap2, ops.zeros_like(ap2 * an2))
        # atan(D_ap / (2 D_nc)) > angle  <=>  D_ap^2 cos^2 > 4 D_nc^2 sin^2 (both sides
        # >= 0, angle < 90 degrees): no square root or arctangent over the b^3 triplets.
        if self.angle >= 90.0:
            keep = ops.zeros_like(nc2, dtype="bool")
        else:
            radians = math.radians(self.angle)
            keep = ops.greater(ap2 * (math.cos(radians) ** 2), nc2 * (4.0 * math.sin(radians) ** 2))
        return _cubic_triplets(d, positive, negative, keep)

    def get_config(self):
        return {"angle": self.angle}


# ------------------------------------------------------------------------------- HDC


@keras.saving.register_keras_serializable(package=PACKAGE)
class HDCMiner(Miner):
    """The hardest fraction of the positive and of the negative pairs (PML's ``HDCMiner``).

    Yuan, Yang & Zhang, "Hard-Aware Deeply Cascaded Embedding", ICCV 2017: each stage of
    the cascade trains on the samples the previous stages found hard. PML's miner keeps,
    over the whole batch, the ``ceil(filter_percentage * n_pos)`` positive pairs with the
    largest distance and the ``ceil(filter_percentage * n_neg)`` negative pairs with
    the smallest (a similarity: smallest / largest similarity). Cascading: give a stage
    the pairs of the previous one (``masks=`` of the miner call; PML's
    ``set_idx_externally``).

    Static shapes: one sort of the ``b * m`` pair values per kind, and each candidate's
    rank compared with the count (PML's ``int(math.ceil(f * n))`` exactly: the float64
    product, from a table when the batch size is known while tracing).

    Difference from PML: at the cut-off, pairs tied in value (always the case for the
    two orderings ``[i, j]``, ``[j, i]`` of one pair of a symmetric matrix) are chosen
    by ``top_k`` order (lower index first on TensorFlow and JAX), PML's by
    ``torch.topk`` (unspecified); the selected values, and the loss of any loss
    symmetric in its pairs, are the same.

    Args:
        filter_percentage: float in ``(0, 1]``. Defaults to `0.5`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.miners import HDCMiner
    >>> d = np.array([[0.0, 0.4, 0.9, 0.2],
    ...               [0.4, 0.0, 0.3, 0.8],
    ...               [0.9, 0.3, 0.0, 0.5],
    ...               [0.2, 0.8, 0.5, 0.0]])
    >>> mined = HDCMiner(0.5)(d, np.array([0, 0, 1, 1]))
    >>> np.argwhere(np.asarray(mined.negative)).tolist()  # 4 of the 8 negative pairs
    [[0, 3], [1, 2], [2, 1], [3, 0]]
    """

    name = "hdc"

    def __init__(self, filter_percentage=0.5):
        self.filter_percentage = _utils.check_number(
            "filter_percentage", filter_percentage, minimum=0.0, strict=True, maximum=1.0)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        d = ops.stop_gradient(distance.as_distance(matrix))
        return MinedPairs(_keep_fraction(-d, positive, self.filter_percentage),
                          _keep_fraction(d, negative, self.filter_percentage))

    def get_config(self):
        return {"filter_percentage": self.filter_percentage}
