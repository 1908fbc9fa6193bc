"""Miners as objects: which pairs or triplets of a batch a loss is computed on.

A miner looks at the matrix of a :class:`~keras_featreg.distances.Distance` between a
batch and its references (the batch itself, or a cross-batch memory), and at their
labels, and returns either

* :class:`MinedPairs` -- boolean ``(b, m)`` masks of the selected positive and negative
  pairs (pair miners: :class:`MultiSimilarityMiner`, :class:`PairMarginMiner`,
  :class:`BalancedPairMiner`), which any pair-based loss (contrastive,
  Multi-Similarity, lifted structure, SupCon, NT-Xent) intersects with its own pairs; or
* :class:`~keras_featreg.mining.MinedTriplets` -- anchor-positive and anchor-negative
  values with the mask of the triplets that exist (triplet miners:
  :class:`SemiHardMiner`, :class:`BatchHardMiner`, :class:`BatchAllMiner`), which
  :class:`~keras_featreg.losses.TripletLoss` consumes.

Every miner has static output shapes (masks over the ``(b, m)`` matrix, never index
lists of data-dependent length), so it compiles under XLA and ``jax.jit``. Mining is
done on ``stop_gradient`` values where it only *selects*; the selected entries keep
their gradient in the loss. Triplet miners work in "smaller is closer" orientation
(:meth:`Distance.as_distance`: a similarity is negated), so the hinge
``[d_ap - d_an + m]_+`` becomes PML's ``[s_an - s_ap + m]_+`` for similarities.

A user-written miner is a subclass of :class:`Miner` with
``mine(matrix, labels, ref_labels, positive, negative, distance)``, or a plain callable
``(matrix, labels) -> MinedPairs | MinedTriplets`` (wrapped by :func:`get`).

String identifiers (:func:`get`): ``"semi-hard"``, ``"hard"``, ``"all"``,
``"multi_similarity"``, ``"pair_margin"``, ``"balanced_pair"``.
"""

import collections
import numbers

import keras
from keras import ops

from keras_featreg import _parts, _utils
from keras_featreg import distances as distances_lib
from keras_featreg import mining as _mining
from keras_featreg.mining import MinedTriplets

_PACKAGE = "keras_featreg"

__all__ = [
    "BalancedPairMiner",
    "BatchAllMiner",
    "BatchHardMiner",
    "MinedPairs",
    "MinedTriplets",
    "Miner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "SemiHardMiner",
    "get",
    "reference_masks",
]

MinedPairs = collections.namedtuple("MinedPairs", ["positive", "negative"])
MinedPairs.__doc__ = """Result of a pair miner: boolean ``(b, m)`` masks.

Attributes:
    positive: True for the selected positive pairs ``[anchor, reference]``.
    negative: True for the selected negative pairs.
"""


def reference_masks(labels, ref_labels=None, same_sample=None):
    """Positive and negative ``(b, m)`` masks between a batch and its references.

    ``positive[i, j] = labels[i] == ref_labels[j] and not same_sample[i, j]``,
    ``negative[i, j] = labels[i] != ref_labels[j]``. Without `ref_labels` the references
    are the batch itself and `same_sample` defaults to the diagonal
    (:func:`keras_featreg.mining.pair_masks`).
    """
    if ref_labels is None and same_sample is None:
        return _mining.pair_masks(labels)
    labels = _mining.labels_vector(labels)
    ref = labels if ref_labels is None else _mining.labels_vector(ref_labels, name="ref_labels")
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(ref, 0))
    positive = same if same_sample is None else ops.logical_and(same, ops.logical_not(same_sample))
    return positive, ops.logical_not(same)


class Miner(_parts.Part):
    """Base class of the miners.

    ``miner(matrix, labels, ref_labels=None, masks=None, distance=None)``:

    Args:
        matrix: ``(b, m)`` values of `distance` between the batch and its references.
        labels: ``(b,)`` labels of the batch.
        ref_labels: ``(m,)`` labels of the references; None when they are the batch.
        masks: optional ``(positive, negative)`` ``(b, m)`` masks of the pairs that
            exist (default :func:`reference_masks`).
        distance: the :class:`~keras_featreg.distances.Distance` that produced
            `matrix` (default Euclidean: smaller is closer).

    Subclasses implement :meth:`mine` and set ``output`` to ``"pairs"`` or
    ``"triplets"``.
    """

    output = "pairs"
    name = None

    def __call__(self, matrix, labels, ref_labels=None, masks=None, distance=None):
        matrix = ops.convert_to_tensor(matrix)
        positive, negative = masks if masks is not None else reference_masks(labels, ref_labels)
        distance = distances_lib.get(distance) or distances_lib.EuclideanDistance()
        return self.mine(matrix, labels, ref_labels, positive, negative, distance)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        raise NotImplementedError



# ------------------------------------------------------------------------ triplet miners


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SemiHardMiner(Miner):
    """FaceNet's semi-hard negative for every positive pair (Schroff et al. 2015).

    For each positive pair ``(a, p)``: the closest negative farther than ``p``; if there
    is none, the farthest negative. One triplet per positive pair, exactly
    ``tfa.losses.TripletSemiHardLoss`` (:func:`keras_featreg.mining.batch_semi_hard`,
    O(b^2 log b) time, O(b^2) memory). Not PML's ``TripletMarginMiner("semihard")``,
    which keeps every triplet with ``0 < d_an - d_ap <= margin``.
    """

    output = "triplets"
    name = "semi-hard"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return _mining.batch_semi_hard(distance.as_distance(matrix), labels,
                                       masks=(positive, negative))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchHardMiner(Miner):
    """Hardest positive and hardest negative of every anchor (Hermans et al. 2017).

    One triplet per anchor that has both (:func:`keras_featreg.mining.batch_hard`).
    """

    output = "triplets"
    name = "hard"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return _mining.batch_hard(distance.as_distance(matrix), labels, masks=(positive, negative))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchAllMiner(Miner):
    """Every valid triplet ("batch all", Hermans et al. 2017).

    :class:`~keras_featreg.losses.TripletLoss` recognizes this miner and computes the
    loss by sorted prefix sums, never building the ``(b, m, m)`` triplet tensor (O(b^2)
    memory); called directly it returns that tensor
    (:func:`keras_featreg.mining.batch_all`).
    """

    output = "triplets"
    name = "all"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return _mining.batch_all(distance.as_distance(matrix), labels, masks=(positive, negative))


# --------------------------------------------------------------------------- pair miners


def _check_float(name, value, minimum=None):
    return _utils.check_number(name, value, minimum=minimum)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiSimilarityMiner(Miner):
    """Multi-Similarity pair mining (Wang et al., CVPR 2019, eq. 8-9), as PML's.

    With ``s`` the similarity (larger = closer; a distance is negated), a negative pair
    ``(i, k)`` is kept when ``s_ik + epsilon > min_{p in P_i} s_ip`` and a positive pair
    when ``s_ip - epsilon < max_{n in N_i} s_in``. An anchor without positives keeps no
    negative, an anchor without negatives no positive.

    Args:
        epsilon: float >= 0, the margin of the mining condition. Defaults to `0.1`.
    """

    name = "multi_similarity"

    def __init__(self, epsilon=0.1):
        self.epsilon = _check_float("epsilon", epsilon, minimum=0.0)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        sim = ops.stop_gradient(ops.negative(distance.as_distance(matrix)))
        hardest_positive, has_positive = _mining.masked_min(sim, positive, axis=1)
        hardest_negative, has_negative = _mining.masked_max(sim, negative, axis=1)
        keep_negative = ops.logical_and(
            negative,
            ops.logical_and(ops.expand_dims(has_positive, 1),
                            ops.greater(sim + self.epsilon, ops.expand_dims(hardest_positive, 1))),
        )
        keep_positive = ops.logical_and(
            positive,
            ops.logical_and(ops.expand_dims(has_negative, 1),
                            ops.less(sim - self.epsilon, ops.expand_dims(hardest_negative, 1))),
        )
        return MinedPairs(keep_positive, keep_negative)

    def get_config(self):
        return {"epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PairMarginMiner(Miner):
    """Pairs that violate a margin (PML's ``PairMarginMiner``).

    In "smaller is closer" orientation ``d`` (a similarity is negated): positive pairs
    with ``d > pos_margin`` and negative pairs with ``d < neg_margin``.

    Args:
        pos_margin: float. Defaults to `0.2`.
        neg_margin: float. Defaults to `0.8`.
    """

    name = "pair_margin"

    def __init__(self, pos_margin=0.2, neg_margin=0.8):
        self.pos_margin = _check_float("pos_margin", pos_margin)
        self.neg_margin = _check_float("neg_margin", neg_margin)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        d = ops.stop_gradient(distance.as_distance(matrix))
        if distance.is_inverted:
            pos_margin, neg_margin = -self.pos_margin, -self.neg_margin
        else:
            pos_margin, neg_margin = self.pos_margin, self.neg_margin
        return MinedPairs(
            ops.logical_and(positive, ops.greater(d, pos_margin)),
            ops.logical_and(negative, ops.less(d, neg_margin)),
        )

    def get_config(self):
        return {"pos_margin": self.pos_margin, "neg_margin": self.neg_margin}


def _top_k_mask(scores, mask, k):
    """Boolean mask of the `k` largest `scores` among the True entries of `mask` (flattened).

    Fewer than `k` candidates: all of them. Ties at the k-th value are broken by position
    (``top_k``'s order), so exactly ``min(k, #candidates)`` entries are True.
    """
    shape = ops.shape(scores)
    flat_scores = ops.reshape(scores, (-1,))
    flat_mask = ops.reshape(mask, (-1,))
    lowest = ops.cast(float("-inf"), flat_scores.dtype)
    masked = ops.where(flat_mask, flat_scores, lowest)
    k = min(k, int(flat_scores.shape[0])) if flat_scores.shape[0] is not None else k
    _, index = ops.top_k(masked, k=k, sorted=False)
    chosen = ops.scatter(ops.expand_dims(index, 1), ops.ones((k,), "int32"),
                         ops.shape(flat_scores))
    selected = ops.logical_and(ops.greater(chosen, 0), flat_mask)
    return ops.reshape(selected, shape)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BalancedPairMiner(Miner):
    """The same number of positive and negative pairs: the hardest of each kind.

    The SVMax paper trains its contrastive loss on "72 positive and 72 negative pairs"
    of each 36 x 4 batch (b = 144). Averaging a pair loss over *all* pairs of such a
    batch (216 positive, 10 080 negative unordered pairs) lets the thousands of negative
    pairs already beyond the margin (zero loss) dilute it -- by about an order of
    magnitude -- which changes what a regularizer weight next to it means. This miner
    selects ``num_pairs`` unordered positive pairs with the largest distance and
    ``num_pairs`` unordered negative pairs with the smallest distance (both symmetric
    copies ``[i, j]`` and ``[j, i]`` of a selected pair are marked, so a loss that
    averages over the mask weighs each selected pair once per direction, as it does
    all pairs). Selection is deterministic (hardest first; ties broken by position).

    Args:
        num_pairs: int >= 1, pairs of each kind; None (default): half the batch size,
            the paper's 72 for b = 144.

    Example (the dilution, on random unit embeddings of a 36 x 4 batch, d = 128):

    >>> import numpy as np
    >>> from keras_featreg.losses import ContrastiveLoss
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(36), 4)
    >>> x = rng.normal(size=(144, 128)).astype("float32")
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> round(float(ContrastiveLoss()(y, x)), 4)  # mean over all 10 296 pairs
    0.0297
    >>> round(float(ContrastiveLoss(miner="balanced_pair")(y, x)), 4)  # 72 + 72 pairs
    0.7405
    >>> round(float(ContrastiveLoss(reducer="mean_nonzero")(y, x)), 4)  # active pairs only
    1.4151
    """

    name = "balanced_pair"

    def __init__(self, num_pairs=None):
        if num_pairs is not None and (isinstance(num_pairs, bool)
                                      or not isinstance(num_pairs, numbers.Integral)
                                      or num_pairs < 1):
            raise ValueError(
                f"`num_pairs` must be None or an integer >= 1. Received: num_pairs={num_pairs!r}"
            )
        self.num_pairs = None if num_pairs is None else int(num_pairs)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        b, m = matrix.shape[0], matrix.shape[1]
        if b is None or m is None:
            raise ValueError(
                "BalancedPairMiner needs a batch size known while tracing (static shapes). "
                f"Received: matrix.shape={tuple(matrix.shape)}"
            )
        k = self.num_pairs if self.num_pairs is not None else max(b // 2, 1)
        d = ops.stop_gradient(distance.as_distance(matrix))
        if ref_labels is None and b == m:
            # Unordered pairs: choose in the upper triangle, then mirror.
            idx = ops.arange(b)
            upper = ops.less(ops.expand_dims(idx, 1), ops.expand_dims(idx, 0))
            pos = _top_k_mask(d, ops.logical_and(positive, upper), k)
            neg = _top_k_mask(-d, ops.logical_and(negative, upper), k)
            pos = ops.logical_or(pos, ops.transpose(pos))
            neg = ops.logical_or(neg, ops.transpose(neg))
            return MinedPairs(pos, neg)
        return MinedPairs(_top_k_mask(d, positive, k), _top_k_mask(-d, negative, k))

    def get_config(self):
        return {"num_pairs": self.num_pairs}


class _CallableMiner(Miner):
    """A user callable ``(matrix, labels) -> MinedPairs | MinedTriplets`` as a miner."""

    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", repr(fn))

    @property
    def output(self):
        return "unknown"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return self.fn(distance.as_distance(matrix), labels)

    def __eq__(self, other):
        return isinstance(other, _CallableMiner) and other.fn is self.fn

    def __hash__(self):
        return hash(self.fn)


_BY_NAME = {cls.name: cls for cls in (SemiHardMiner, BatchHardMiner, BatchAllMiner,
                                      MultiSimilarityMiner, PairMarginMiner, BalancedPairMiner)}
NAMES = tuple(_BY_NAME)
TRIPLET_NAMES = ("semi-hard", "hard", "all")
_FUNCTIONS = {_mining.batch_semi_hard: SemiHardMiner, _mining.batch_hard: BatchHardMiner,
              _mining.batch_all: BatchAllMiner}


def get(identifier, arg="miner"):
    """A :class:`Miner` from a name, an instance, a serialized config, a callable or None.

    Names: ``"semi-hard"``, ``"hard"``, ``"all"`` (triplets), ``"multi_similarity"``,
    ``"pair_margin"``, ``"balanced_pair"`` (pairs). The functions
    :func:`keras_featreg.mining.batch_semi_hard` / ``batch_hard`` / ``batch_all`` map to
    their miner objects; any other callable ``(matrix, labels) -> MinedPairs |
    MinedTriplets`` is wrapped (it is given the matrix in "smaller is closer"
    orientation).
    """
    if callable(identifier) and not isinstance(identifier, (str, dict, type, Miner)):
        if identifier in _FUNCTIONS:
            return _FUNCTIONS[identifier]()
        return _CallableMiner(identifier)
    try:
        return _parts.lookup(identifier, Miner, _BY_NAME, arg)
    except ValueError as error:
        raise ValueError(str(error).replace(" Received:", " or a callable. Received:")) from None


def name_of(miner):
    """The name of a built-in miner with default arguments (for configs), else the object."""
    return _parts.name_of(miner, _BY_NAME)
