"""Pair and triplet selection ("mining") over a distance matrix and integer labels.

Pure ``keras.ops`` functions, shared by the ranking losses of
:mod:`keras_featreg.losses_ranking` and usable on their own. Nothing here depends on
a particular loss: a miner takes a ``(b, b)`` distance matrix and ``(b,)`` labels and
returns a :class:`MinedTriplets` -- the anchor-positive distances, the anchor-negative
distances (broadcastable against each other) and the mask of the terms that exist.
A triplet loss then applies its hinge or softplus to ``positive - negative`` and averages
over the mask.

Conventions:

* labels are compared for equality only (any integer or float dtype); ``(b,)`` or
  ``(b, 1)``.
* a *positive pair* ``(a, p)`` has ``label[a] == label[p]`` and ``a != p``; a *negative
  pair* ``(a, n)`` has ``label[a] != label[n]``; a *valid triplet* ``(a, p, n)`` has both.
* empty selections never produce NaN or infinity, in values or gradients: a masked
  reduction over an empty set returns 0 and the mask says it is empty.
* everything is O(b^2) memory except :func:`triplet_mask`, :func:`batch_all` and
  :func:`batch_semi_hard`, which are O(b^3) (as tensorflow-addons' semi-hard loss).
"""

import collections

from keras import ops

MinedTriplets = collections.namedtuple(
    "MinedTriplets",
    ["positive_distances", "negative_distances", "mask", "average_over_active"],
)
MinedTriplets.__doc__ = """Result of a triplet miner.

Attributes:
    positive_distances: anchor-positive distances, broadcastable with the two others.
    negative_distances: anchor-negative distances, broadcastable with the two others.
    mask: boolean tensor; True where the term exists (a valid triplet was selected).
    average_over_active: Python bool. If True the loss averages over the masked terms
        whose loss is > 0 ("batch all", Hermans et al. 2017); otherwise over all masked
        terms.
"""

NPairLayout = collections.namedtuple("NPairLayout", ["anchors", "positive_matrix", "positives"])
NPairLayout.__doc__ = """Anchor/positive layout of an N-pair batch (see :func:`npair_layout`).

Attributes:
    anchors: ``(b,)`` bool, True for samples used as anchors.
    positive_matrix: ``(b, b)`` bool, ``[a, p]`` True iff ``p`` is the positive of anchor
        ``a`` (at most one True per row).
    positives: ``(b,)`` bool, True for samples in the positive role.
"""

NEGATIVE_SETS = ("positives", "all")


def labels_vector(labels, name="y_true"):
    """Flattens labels of shape ``(b,)`` or ``(b, 1)`` to ``(b,)``.

    Raises:
        ValueError: if `labels` has rank > 2, or rank 2 with a last dimension other
            than 1.
    """
    labels = ops.convert_to_tensor(labels)
    rank = len(labels.shape)
    if rank > 2 or (rank == 2 and labels.shape[-1] not in (1, None)):
        raise ValueError(
            f"`{name}` must hold one integer label per sample, shape (batch_size,) or "
            f"(batch_size, 1). Received: {name}.shape={tuple(labels.shape)}"
        )
    return ops.reshape(labels, (-1,))


def _equal_matrix(labels):
    labels = labels_vector(labels)
    return ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))


def _not_eye(n):
    idx = ops.arange(n)
    return ops.not_equal(ops.expand_dims(idx, 1), ops.expand_dims(idx, 0))


def pair_masks(labels):
    """Boolean ``(b, b)`` masks of the positive and negative pairs.

    ``positive[i, j] = label_i == label_j and i != j``; ``negative[i, j] = label_i !=
    label_j``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.mining import pair_masks
    >>> pos, neg = pair_masks(np.array([0, 0, 1]))
    >>> np.asarray(pos).astype(int)
    array([[0, 1, 0],
           [1, 0, 0],
           [0, 0, 0]])
    >>> np.asarray(neg).astype(int)
    array([[0, 0, 1],
           [0, 0, 1],
           [1, 1, 0]])
    """
    same = _equal_matrix(labels)
    positive = ops.logical_and(same, _not_eye(ops.shape(same)[0]))
    return positive, ops.logical_not(same)


def triplet_mask(labels):
    """Boolean ``(b, b, b)`` mask, ``[a, p, n]`` True iff ``(a, p, n)`` is a valid triplet.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.mining import triplet_mask
    >>> int(np.asarray(triplet_mask(np.array([0, 0, 1]))).sum())  # (0,1,2) and (1,0,2)
    2
    """
    positive, negative = pair_masks(labels)
    return ops.logical_and(ops.expand_dims(positive, 2), ops.expand_dims(negative, 1))


def masked_min(x, mask, axis=-1):
    """Minimum of `x` over the True entries of `mask` along `axis`.

    Returns:
        ``(values, has_any)``: `values` is 0 where the selection is empty; `has_any`
        says whether it was. Gradients flow only to the selected minimum (split evenly
        between exact ties, as ``ops.min``), never NaN.
    """
    x = ops.convert_to_tensor(x)
    inf = ops.cast(float("inf"), x.dtype)
    filled = ops.where(mask, x, inf)
    values = ops.min(filled, axis=axis)
    has_any = ops.any(ops.logical_and(mask, ops.ones_like(filled, dtype="bool")), axis=axis)
    return ops.where(has_any, values, ops.zeros_like(values)), has_any


def masked_max(x, mask, axis=-1):
    """Maximum of `x` over the True entries of `mask` along `axis`.

    Returns:
        ``(values, has_any)``, `values` 0 where the selection is empty (see
        :func:`masked_min`).
    """
    x = ops.convert_to_tensor(x)
    inf = ops.cast(float("inf"), x.dtype)
    filled = ops.where(mask, x, -inf)
    values = ops.max(filled, axis=axis)
    has_any = ops.any(ops.logical_and(mask, ops.ones_like(filled, dtype="bool")), axis=axis)
    return ops.where(has_any, values, ops.zeros_like(values)), has_any


def masked_logsumexp(x, mask, axis=-1, include_zero=False):
    """``log(sum_{mask} exp(x))`` along `axis`, stable, with finite gradients.

    Args:
        x: float tensor.
        mask: boolean tensor broadcastable to `x`.
        axis: reduction axis.
        include_zero: if True, adds an implicit extra term ``exp(0) = 1`` inside the sum,
            i.e. computes ``log(1 + sum exp(x))``; the result is then >= 0 and defined
            for empty selections (0).

    Returns:
        The reduction; 0 where the selection is empty (and `include_zero` is False).
    """
    x = ops.convert_to_tensor(x)
    masked = ops.where(mask, x, ops.cast(float("-inf"), x.dtype))
    shift = ops.max(masked, axis=axis, keepdims=True)
    if include_zero:
        shift = ops.maximum(shift, 0.0)
    shift = ops.where(ops.isfinite(shift), shift, ops.zeros_like(shift))
    shift = ops.stop_gradient(shift)
    # Mask *before* exp: exp of an unselected entry could overflow, and inf * 0 = NaN in
    # the backward pass of a where() applied afterwards.
    terms = ops.where(mask, ops.exp(ops.where(mask, x - shift, ops.zeros_like(x))), 0.0)
    total = ops.sum(terms, axis=axis, keepdims=True)
    if include_zero:
        # log(exp(-shift) + total) + shift, accurate when the sum is tiny next to 1.
        return ops.squeeze(ops.log1p(ops.expm1(-shift) + total) + shift, axis=axis)
    nonempty = total > 0
    total = ops.where(nonempty, total, ops.ones_like(total))
    out = ops.where(nonempty, ops.log(total) + shift, ops.zeros_like(total))
    return ops.squeeze(out, axis=axis)


def batch_all(distances, labels):
    """Every valid triplet ``(a, p, n)`` of the batch ("batch all").

    The loss averages over the *active* triplets -- those with a loss > 0 -- as in
    Hermans et al. (2017), "In Defense of the Triplet Loss": averaging over all valid
    triplets would let the many already-satisfied ones wash the gradient out. With a
    softplus (soft margin) every triplet is active, so this is the mean over all valid
    triplets. O(b^3) memory.

    Args:
        distances: ``(b, b)`` float distance matrix.
        labels: ``(b,)`` or ``(b, 1)`` labels.

    Returns:
        :class:`MinedTriplets` with ``positive_distances`` ``(b, b, 1)``,
        ``negative_distances`` ``(b, 1, b)`` and ``mask`` ``(b, b, b)``.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.mining import batch_all
    >>> d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [2.0, 0.5, 0.0]])
    >>> mined = batch_all(d, np.array([0, 0, 1]))
    >>> diff = np.asarray(mined.positive_distances - mined.negative_distances)
    >>> diff[np.asarray(mined.mask)].tolist()  # triplets (0, 1, 2) and (1, 0, 2)
    [-1.0, 0.5]
    """
    distances = ops.convert_to_tensor(distances)
    return MinedTriplets(
        positive_distances=ops.expand_dims(distances, 2),
        negative_distances=ops.expand_dims(distances, 1),
        mask=triplet_mask(labels),
        average_over_active=True,
    )


def batch_hard(distances, labels):
    """Hardest positive and hardest negative of every anchor ("batch hard").

    For each anchor ``a``: ``max_p D[a, p]`` over its positives and ``min_n D[a, n]``
    over its negatives, as ``tfa.losses.TripletHardLoss`` (Hermans et al. 2017). The
    loss is the mean over anchors.

    Difference from tensorflow-addons: an anchor with no positive (a class seen once in
    the batch) or no negative (a single-class batch) has no triplet and is left out of
    the mean. tensorflow-addons keeps it, with ``D[a, a] = 0`` as its "hardest positive"
    (and the row maximum as its "hardest negative" when there is no negative). On
    batches where every class appears at least twice and there are two classes or more
    (``p x l`` batches with ``l >= 2``) both agree exactly.

    Args:
        distances: ``(b, b)`` float distance matrix.
        labels: ``(b,)`` or ``(b, 1)`` labels.

    Returns:
        :class:`MinedTriplets` of ``(b,)`` tensors.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.mining import batch_hard
    >>> d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [2.0, 0.5, 0.0]])
    >>> mined = batch_hard(d, np.array([0, 0, 1]))
    >>> np.asarray(mined.positive_distances).tolist(), np.asarray(mined.negative_distances).tolist()
    ([1.0, 1.0, 0.0], [2.0, 0.5, 0.5])
    >>> np.asarray(mined.mask).tolist()  # anchor 2 has no positive
    [True, True, False]
    """
    distances = ops.convert_to_tensor(distances)
    positive, negative = pair_masks(labels)
    hardest_positive, has_positive = masked_max(distances, positive, axis=1)
    hardest_negative, has_negative = masked_min(distances, negative, axis=1)
    return MinedTriplets(
        positive_distances=hardest_positive,
        negative_distances=hardest_negative,
        mask=ops.logical_and(has_positive, has_negative),
        average_over_active=False,
    )


def batch_semi_hard(distances, labels):
    """Semi-hard negative for every positive pair, exactly as ``tfa.losses.TripletSemiHardLoss``.

    For each positive pair ``(a, p)`` (Schroff et al. 2015, FaceNet): the negative is the
    *closest negative farther than the positive*, ``min {D[a, n] : D[a, n] > D[a, p]}``;
    if no negative of ``a`` is farther than ``p`` (no semi-hard negative), the fallback
    is the *farthest* negative of ``a``, ``max_n D[a, n]``. The loss is the mean over
    all positive pairs ``(a, p)``, ``a != p`` (including those with zero loss).

    Differences from tensorflow-addons, on degenerate batches only: a batch with no
    positive pair gives 0 here (NaN there, 0/0), and in a single-class batch (no
    negative at all) positive pairs have no triplet and are left out (tensorflow-addons
    uses 0 as the negative distance, i.e. ``margin + D[a, p]``).

    Args:
        distances: ``(b, b)`` float distance matrix.
        labels: ``(b,)`` or ``(b, 1)`` labels.

    Returns:
        :class:`MinedTriplets` of ``(b, b)`` tensors indexed ``[anchor, positive]``.
        O(b^3) memory during mining.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.mining import batch_semi_hard
    >>> d = np.array([[0.0, 1.0, 2.0, 0.5],
    ...               [1.0, 0.0, 0.5, 1.5],
    ...               [2.0, 0.5, 0.0, 1.0],
    ...               [0.5, 1.5, 1.0, 0.0]])
    >>> mined = batch_semi_hard(d, np.array([0, 0, 1, 1]))
    >>> # anchor 0, positive 1 (D=1): negatives at 2.0 and 0.5 -> semi-hard one is 2.0;
    >>> # anchor 1, positive 0 (D=1): negatives at 0.5 and 1.5 -> 1.5;
    >>> # anchor 2, positive 3 (D=1): negatives at 2.0 and 0.5 -> 2.0;
    >>> # anchor 3, positive 2 (D=1): negatives at 0.5, 1.5 -> 1.5
    >>> np.asarray(mined.negative_distances)[np.asarray(mined.mask)].tolist()
    [2.0, 1.5, 2.0, 1.5]
    """
    distances = ops.convert_to_tensor(distances)
    positive, negative = pair_masks(labels)
    anchor_negative = ops.expand_dims(distances, 1)  # (a, 1, n)
    anchor_positive = ops.expand_dims(distances, 2)  # (a, p, 1)
    farther = ops.logical_and(
        ops.expand_dims(negative, 1), ops.greater(anchor_negative, anchor_positive)
    )  # (a, p, n)
    outside, has_outside = masked_min(anchor_negative, farther, axis=2)  # (a, p)
    inside, has_negative = masked_max(distances, negative, axis=1)  # (a,)
    semi_hard = ops.where(has_outside, outside, ops.expand_dims(inside, 1))
    return MinedTriplets(
        positive_distances=distances,
        negative_distances=semi_hard,
        mask=ops.logical_and(positive, ops.expand_dims(has_negative, 1)),
        average_over_active=False,
    )


MINERS = {"all": batch_all, "hard": batch_hard, "semi-hard": batch_semi_hard}


def get_miner(name):
    """The miner called `name`: one of ``"all"``, ``"hard"``, ``"semi-hard"``."""
    if name not in MINERS:
        raise ValueError(f"`mining` must be one of {sorted(MINERS)}. Received: mining={name!r}")
    return MINERS[name]


def npair_layout(labels):
    """Anchor/positive roles of an N-pair batch, read from the labels.

    Rule: within each class, the first occurrence in the batch is the anchor and the
    second occurrence is its positive. A class seen once has no pair (its sample is not
    an anchor); third and later occurrences are neither anchor nor positive. The
    intended layout has every class exactly twice (``p x 2`` batches, in any order:
    ``[a1, p1, a2, p2, ...]`` or ``[a1, a2, ..., p1, p2, ...]``).

    Returns:
        :class:`NPairLayout`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.mining import npair_layout
    >>> layout = npair_layout(np.array([7, 3, 7, 3]))
    >>> np.asarray(layout.anchors).tolist(), np.asarray(layout.positives).tolist()
    ([True, True, False, False], [False, False, True, True])
    """
    same = _equal_matrix(labels)
    n = ops.shape(same)[0]
    idx = ops.arange(n)
    earlier = ops.less(ops.expand_dims(idx, 0), ops.expand_dims(idx, 1))  # [i, j]: j < i
    occurrence = ops.sum(ops.cast(ops.logical_and(same, earlier), "int32"), axis=1)
    first = ops.equal(occurrence, 0)
    second = ops.equal(occurrence, 1)
    positive_matrix = ops.logical_and(
        same, ops.logical_and(ops.expand_dims(first, 1), ops.expand_dims(second, 0))
    )
    return NPairLayout(
        anchors=ops.any(positive_matrix, axis=1),
        positive_matrix=positive_matrix,
        positives=second,
    )


def npair_negatives(labels, layout, negatives="positives"):
    """``(b, b)`` mask of the negatives of each anchor of an N-pair batch.

    Args:
        labels: ``(b,)`` labels.
        layout: the :class:`NPairLayout` of `labels`.
        negatives: ``"positives"`` -- the positives of the other classes (Sohn 2016's
            multi-class N-pair loss, tensorflow-addons' ``NpairsLoss``; ``|n| = b/2 - 1``
            for ``p x 2`` batches) -- or ``"all"`` -- every sample of another class, as
            written in the SVMax paper's eqs. 7 and 9 (``|n| = b - 2``).
    """
    if negatives not in NEGATIVE_SETS:
        raise ValueError(
            f"`negatives` must be one of {list(NEGATIVE_SETS)}. Received: negatives={negatives!r}"
        )
    different = ops.logical_not(_equal_matrix(labels))
    if negatives == "all":
        return different
    return ops.logical_and(different, ops.expand_dims(layout.positives, 0))
