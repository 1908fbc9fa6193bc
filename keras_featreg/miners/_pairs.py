"""Pair miners: which positive and negative pairs a pair-based loss is computed on."""

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg._utils import PACKAGE
from keras_featreg.miners._base import MinedPairs, Miner
from keras_featreg.ops import masked as _masked


def _check_float(name, value, minimum=None):
    return _utils.check_number(name, value, minimum=minimum)


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        hardest_positive, has_positive = _masked.masked_min(sim, positive, axis=1)
        hardest_negative, has_negative = _masked.masked_max(sim, negative, axis=1)
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


@keras.saving.register_keras_serializable(package=PACKAGE)
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


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        self.num_pairs = _utils.check_optional_int("num_pairs", num_pairs)

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
