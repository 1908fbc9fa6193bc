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
* everything is O(b^2) memory except :func:`triplet_mask` and :func:`batch_all`, whose
  ``(b, b, b)`` mask is O(b^3). :func:`batch_semi_hard` (above ``CUBIC_MAX_BATCH``
  samples) and :func:`batch_all_hinge_sums` sort each anchor's negative distances once
  and binary-search them: O(b^2 log b) time, O(b^2) memory, the same values and
  gradients as the O(b^3) definitions (tensorflow-addons' semi-hard loss is O(b^3)).
  :func:`batch_all_soft_mean` keeps O(b^3) time (a softplus has no prefix-sum form) in
  O(b^2) memory. :func:`keras_featreg.losses_ranking.triplet_loss` uses these for
  ``mining="semi-hard"`` and ``"all"``.
"""

import collections

from keras import ops

from keras_featreg import backend as _backend

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


def _masks(labels, masks):
    """``pair_masks(labels)``, or the ``(positive, negative)`` masks given by the caller.

    Every miner accepts ``masks=(positive, negative)``, two boolean ``(b, m)`` tensors,
    instead of deriving them from `labels`: a rectangular distance matrix between a
    batch and a set of reference embeddings (a cross-batch memory) with their own
    labels, or a miner restricted to pairs chosen earlier.
    """
    if masks is None:
        return pair_masks(labels)
    positive, negative = masks
    return ops.convert_to_tensor(positive), ops.convert_to_tensor(negative)


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


def batch_all(distances, labels, masks=None):
    """Every valid triplet ``(a, p, n)`` of the batch ("batch all").

    The loss averages over the *active* triplets -- those with a loss > 0 -- as in
    Hermans et al. (2017), "In Defense of the Triplet Loss": averaging over all valid
    triplets would let the many already-satisfied ones wash the gradient out. With a
    softplus (soft margin) every triplet is active, so this is the mean over all valid
    triplets. O(b^3) memory: :func:`keras_featreg.losses_ranking.triplet_loss` with
    ``mining="all"`` (or this function as `mining`) computes the same loss without the
    ``(b, b, b)`` tensors (:func:`batch_all_hinge_sums`, :func:`batch_all_soft_mean`).

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
        mask=triplet_mask(labels) if masks is None else ops.logical_and(
            ops.expand_dims(masks[0], 2), ops.expand_dims(masks[1], 1)),
        average_over_active=True,
    )


def batch_hard(distances, labels, masks=None):
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
    positive, negative = _masks(labels, masks)
    hardest_positive, has_positive = masked_max(distances, positive, axis=1)
    hardest_negative, has_negative = masked_min(distances, negative, axis=1)
    return MinedTriplets(
        positive_distances=hardest_positive,
        negative_distances=hardest_negative,
        mask=ops.logical_and(has_positive, has_negative),
        average_over_active=False,
    )


# batch_semi_hard: batches up to this size (known while tracing) are mined by the O(b^3)
# broadcast, as fast or faster there (b^3 = 262 144 elements); larger ones, and batches of
# unknown size, by the sorted O(b^2 log b) form (see benchmarks/bench_mining.py).
CUBIC_MAX_BATCH = 64


def _static_batch(distances):
    """The batch size when it is known while tracing, else None."""
    return distances.shape[0]


def _sorted_negatives(distances, negative):
    """Each anchor's negative distances, sorted once: ``(order, keys, count)``.

    ``keys[a] = sort_n (D[a, n] if n is a negative of a else +inf)`` (no gradient),
    ``order[a]`` the permutation that sorts it (``keys[a, j] = D[a, order[a, j]]`` for
    ``j < count[a]``) and ``count`` the ``(b, 1)`` number of negatives of each anchor.
    Ties are not resolved: everything below depends on the sorted *values* and on counts
    only, never on the order among equal keys (``argsort`` is not stable on every
    backend). O(b^2 log b) time, O(b^2) memory.
    """
    inf = ops.cast(float("inf"), distances.dtype)
    masked = ops.where(negative, ops.stop_gradient(distances), inf)
    # One top_k gives the sorted values and the permutation (argsort + gather is slower).
    descending, order = ops.top_k(-masked, k=ops.shape(masked)[1], sorted=True)
    keys, order = -descending, ops.cast(order, "int32")
    count = ops.sum(ops.cast(negative, "int32"), axis=1, keepdims=True)
    return order, keys, count


def _prefix_length(keys, queries, predicate):
    """Per row, the length of the longest prefix of ``keys`` where ``predicate`` holds.

    ``result[a, q] = #{j : predicate(keys[a, j], queries[a, q])}`` for a `predicate`
    that is monotone along each sorted row (True, then False) and False for a key of
    ``+inf``. A branch-free binary search of ``s = ceil(log2(b + 1))`` steps (31 when b
    is unknown while tracing), each one gather: static shapes, O(b^2 log b) time for
    ``(b, b)`` queries.
    """
    width = keys.shape[1]
    if width is not None:
        steps = int(width).bit_length()
        # Pad with +inf to 2^s columns: every probe lands inside, no clipping.
        pad = ops.full((ops.shape(keys)[0], (1 << steps) - width), float("inf"), keys.dtype)
        keys = ops.concatenate([keys, pad], axis=1)
    else:
        steps, n = 31, ops.shape(keys)[1]
    length = ops.zeros_like(queries, dtype="int32")
    for k in reversed(range(steps)):
        candidate = length + (1 << k)
        if width is None:
            candidate = ops.minimum(candidate, n)
        ok = predicate(_backend.take_rows(keys, candidate - 1), queries)
        length = ops.where(ok, candidate, length)
    return length


def _prefix_length_searched(keys, queries, predicate, threshold):
    """:func:`_prefix_length` from the native row-wise search, exact for the predicate.

    ``threshold`` approximates the boundary: ``predicate(key, query)`` is assumed to be
    ``key < threshold`` up to rounding. One native search gives ``#{key < threshold}``;
    where that is not the boundary of the floating-point predicate (checked on both
    sides: the last counted key satisfies it, the next one does not), which rounding can
    cause only for keys within an ulp or so of the threshold, the branch-free binary
    search of :func:`_prefix_length` decides for the whole batch. None where no native search exists
    (JAX, XLA): the caller uses :func:`_prefix_length`.
    """
    if not _backend.has_native_row_search():
        return None
    n = ops.shape(keys)[1]
    count = _count_below(keys, threshold)
    # The boundary: the last counted key satisfies the predicate, the next one does not.
    last_ok = ops.logical_or(
        count == 0, predicate(_backend.take_rows(keys, ops.maximum(count - 1, 0)), queries))
    next_ok = ops.logical_or(
        count >= n,
        ops.logical_not(predicate(_backend.take_rows(keys, ops.minimum(count, n - 1)), queries)))
    exact = ops.all(ops.logical_and(last_ok, next_ok))
    return ops.cond(exact, lambda: count, lambda: _prefix_length(keys, queries, predicate))


def _count_at_most(keys, queries):
    """``#{j : keys[a, j] <= queries[a, q]}`` (upper bound in each sorted row)."""
    native = _backend.searchsorted_rows(keys, queries, "right")
    return _prefix_length(keys, queries, ops.less_equal) if native is None else native


def _count_below(keys, queries):
    """``#{j : keys[a, j] < queries[a, q]}`` (lower bound in each sorted row)."""
    native = _backend.searchsorted_rows(keys, queries, "left")
    return _prefix_length(keys, queries, ops.less) if native is None else native


def _run_sizes(keys, *positions):
    """Length of the run of equal keys (ties) that holds each sorted position.

    One tensor of lengths per tensor in `positions` (valid indices, ``0 <= . < width``).
    With a known width: run ids ``cumsum(keys[j] != keys[j - 1])`` and their lengths by
    one scatter-add, O(b^2); otherwise two binary searches per tensor.
    """
    if keys.shape[1] is None:
        values = [_backend.take_rows(keys, p) for p in positions]
        return [_count_at_most(keys, v) - _count_below(keys, v) for v in values]
    rows, width = ops.shape(keys)[0], keys.shape[1]
    starts = ops.concatenate(
        [ops.ones_like(keys[:, :1], dtype="int32"),
         ops.cast(ops.not_equal(keys[:, 1:], keys[:, :-1]), "int32")], axis=1)
    run = ops.cumsum(starts, axis=1) - 1
    row = ops.broadcast_to(ops.expand_dims(ops.arange(rows, dtype="int32"), 1), ops.shape(run))
    indices = ops.reshape(ops.stack([row, run], axis=-1), (-1, 2))
    sizes = ops.scatter(indices, ops.ones((rows * width,), "int32"), (rows, width))
    return [_backend.take_rows(sizes, _backend.take_rows(run, p)) for p in positions]


def _exclusive_cumsum(values):
    """``[0, v_0, v_0 + v_1, ...]`` along axis 1: ``(b, m)`` -> ``(b, m + 1)``."""
    zeros = ops.zeros_like(values[:, :1])
    return ops.concatenate([zeros, ops.cumsum(values, axis=1)], axis=1)


def _tie_mean(values, start, end):
    """``values[a, start]`` with the gradient of ``mean(values[a, start:end])``.

    `values` is sorted along axis 1 and ``values[a, start:end]`` is one run of equal
    values (a tie group), so the value is exactly the first one; its gradient is spread
    evenly over the group, as ``ops.min``/``ops.max`` spread theirs over exact ties.
    Positions with ``end <= start`` give ``values[a, start]`` with no gradient.
    """
    b = ops.shape(values)[1]
    first = _backend.take_rows(values, ops.minimum(start, b - 1))
    sums = _exclusive_cumsum(values)
    total = _backend.take_rows(sums, end) - _backend.take_rows(sums, start)
    size = ops.cast(ops.maximum(end - start, 1), values.dtype)
    mean = total / size
    # Forward: exactly `first` (mean - mean is 0). Backward: d mean.
    return ops.stop_gradient(first) + (mean - ops.stop_gradient(mean))


def batch_semi_hard(distances, labels, masks=None):
    """Semi-hard negative for every positive pair, exactly as ``tfa.losses.TripletSemiHardLoss``.

    For each positive pair ``(a, p)`` (Schroff et al. 2015, FaceNet): the negative is the
    *closest negative farther than the positive*, ``min {D[a, n] : D[a, n] > D[a, p]}``;
    if no negative of ``a`` is farther than ``p`` (no semi-hard negative), the fallback
    is the *farthest* negative of ``a``, ``max_n D[a, n]``. The loss is the mean over
    all positive pairs ``(a, p)``, ``a != p`` (including those with zero loss).

    Algorithm: O(b^2 log b) time, O(b^2) memory. Each anchor's negative distances are
    sorted once (``s_a``, ``k_a`` of them); for the pair ``(a, p)``,
    ``c = #{j : s_a[j] <= D[a, p]}`` (a binary search in ``s_a``) and the semi-hard
    negative is ``s_a[c]`` if ``c < k_a``, else the fallback ``s_a[k_a - 1]``. Values
    and gradients are those of the definition (``min``/``max`` over a ``(b, b, b)``
    mask, kept as ``_batch_semi_hard_cubic``): an exact tie between negatives shares
    the gradient evenly, as ``ops.min`` does. Batches of at most ``CUBIC_MAX_BATCH``
    samples (known while tracing) use the cubic form, faster there.

    Differences from tensorflow-addons, on degenerate batches only: a batch with no
    positive pair gives 0 here (NaN there, 0/0), and in a single-class batch (no
    negative at all) positive pairs have no triplet and are left out (tensorflow-addons
    uses 0 as the negative distance, i.e. ``margin + D[a, p]``).

    Args:
        distances: ``(b, b)`` float distance matrix.
        labels: ``(b,)`` or ``(b, 1)`` labels.

    Returns:
        :class:`MinedTriplets` of ``(b, b)`` tensors indexed ``[anchor, positive]``
        (``negative_distances`` is 0 where ``mask`` is False).

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
    b = _static_batch(distances)
    if b is not None and b <= CUBIC_MAX_BATCH:
        return _batch_semi_hard_cubic(distances, labels, masks)
    return _batch_semi_hard_sorted(distances, labels, masks)


def _batch_semi_hard_sorted(distances, labels, masks=None):
    """:func:`batch_semi_hard` by sorted negatives and binary searches (any batch size)."""
    distances = ops.convert_to_tensor(distances)
    positive, negative = _masks(labels, masks)
    order, keys, count = _sorted_negatives(distances, negative)
    n = ops.shape(keys)[1]
    # (a, p): [c, e) is the run of the closest negatives farther than p (c starts a run);
    c = _count_at_most(keys, ops.stop_gradient(distances))
    has_outside = c < count
    last = ops.maximum(count - 1, 0)  # the farthest negative: the fallback

    def with_ties():
        values = _backend.take_rows(distances, order)  # sorted, with gradient
        # a: [f, count) is the run of the farthest negatives (count - 1 ends one).
        if not _backend.has_native_row_search():
            size_c, size_last = _run_sizes(keys, ops.minimum(c, n - 1), last)
            e = c + size_c
            f = ops.maximum(count - size_last, 0)
        else:  # native row-wise search: the run ends of the selected keys
            e = _count_at_most(keys, _backend.take_rows(keys, ops.minimum(c, n - 1)))
            f = _count_below(keys, _backend.take_rows(keys, last))
        start = ops.where(has_outside, c, f)
        end = ops.where(has_outside, e, count)
        return _tie_mean(values, start, end)

    def without_ties():
        # No selected negative has an exact tie: one gather from `distances` (the
        # gradient goes to that entry), the value and gradient of `with_ties`.
        start = ops.minimum(ops.where(has_outside, c, last), n - 1)
        return _backend.take_rows(distances, _backend.take_rows(order, start))

    # Is any selected negative tied with another negative of its anchor? (Ties elsewhere
    # in the row, common in float32, do not matter.)
    key_c = _backend.take_rows(keys, ops.minimum(c, n - 1))
    key_next = _backend.take_rows(keys, ops.minimum(c + 1, n - 1))
    tied_outside = ops.logical_and(c + 1 < count, ops.equal(key_next, key_c))
    key_last = _backend.take_rows(keys, last)
    key_before = _backend.take_rows(keys, ops.maximum(count - 2, 0))
    tied_last = ops.logical_and(count >= 2, ops.equal(key_before, key_last))
    tied = ops.any(ops.logical_and(
        positive, ops.where(has_outside, tied_outside, tied_last)))
    semi_hard = ops.cond(tied, with_ties, without_ties)
    has_negative = count > 0
    return MinedTriplets(
        positive_distances=distances,
        negative_distances=ops.where(has_negative, semi_hard, ops.zeros_like(semi_hard)),
        mask=ops.logical_and(positive, has_negative),
        average_over_active=False,
    )


def batch_all_hinge_sums(distances, labels, margin, masks=None):
    """Per positive pair, the sum and the number of active hinge terms of "batch all".

    ``sums[a, p] = sum_{n in A} (D[a, p] - D[a, n] + margin)`` and ``counts[a, p] = |A|``
    with ``A = {n negative of a : (D[a, p] - D[a, n]) + margin > 0}``, the condition
    evaluated in floating point as the O(b^3) loss does (so exact ties at the margin
    fall on the same side). The "batch all" hinge loss is
    ``sum(sums) / max(sum(counts), 1)``, :func:`batch_all` with the hinge.

    Algorithm: O(b^2 log b) time, O(b^2) memory. The condition is monotone in
    ``D[a, n]``, so ``A`` is a prefix of the anchor's sorted negative distances
    ``s_a``: ``|A|`` is a binary search and ``sum_{n in A} D[a, n]`` a prefix sum,
    ``sums[a, p] = |A| (D[a, p] + margin) - sum_{j < |A|} s_a[j]``. Gradients are
    those of the triplet sum: ``|A|`` for ``D[a, p]``, ``-1`` per counted triplet for
    ``D[a, n]`` (``|A|`` is a constant, as the mask of the cubic form).

    Args:
        distances: ``(b, b)`` float distance matrix.
        labels: ``(b,)`` or ``(b, 1)`` labels.
        margin: float >= 0.

    Returns:
        ``(sums, counts)``, two ``(b, b)`` float tensors indexed ``[anchor, positive]``,
        0 off the positive pairs.
    """
    distances = ops.convert_to_tensor(distances)
    positive, negative = _masks(labels, masks)
    order, keys, _ = _sorted_negatives(distances, negative)
    values = _backend.take_rows(distances, order)

    def active(key, anchor_positive):
        return ops.greater((anchor_positive - key) + margin, 0.0)

    anchor_positive = ops.stop_gradient(distances)
    counts = _prefix_length_searched(keys, anchor_positive, active, anchor_positive + margin)
    if counts is None:
        counts = _prefix_length(keys, anchor_positive, active)
    prefix = _backend.take_rows(_exclusive_cumsum(values), counts)
    counts = ops.cast(counts, distances.dtype)
    sums = counts * (distances + margin) - prefix
    zeros = ops.zeros_like(sums)
    return ops.where(positive, sums, zeros), ops.where(positive, counts, zeros)


# Elements of the (chunk, b, b) block that the soft "batch all" computes at once.
SOFT_CHUNK_ELEMENTS = 2**23


def _soft_terms(rows, positive_rows, negative_rows):
    """Soft-margin "batch all" terms of the anchors in `rows` (``(s, b)``, any s).

    Returns ``(differences, losses, mask)``, ``(s, b, b)`` indexed ``[a, p, n]``:
    ``D[a, p] - D[a, n]``, its softplus, and the valid triplets whose softplus is > 0 (in
    floating point it underflows to 0 below about -104, as in the cubic form).
    """
    differences = ops.expand_dims(rows, 2) - ops.expand_dims(rows, 1)
    losses = ops.softplus(differences)
    mask = ops.logical_and(
        ops.logical_and(ops.expand_dims(positive_rows, 2), ops.expand_dims(negative_rows, 1)),
        ops.greater(losses, 0.0),
    )
    return differences, losses, mask


def _chunk_rows(tensors, index, chunk):
    """Rows ``[index * chunk, (index + 1) * chunk)`` of each of `tensors` (``(m, b)``)."""
    start = index * chunk
    return [ops.slice(t, [start, 0], [chunk, ops.shape(t)[1]]) for t in tensors]


def _soft_mean_chunked(distances, positive, negative, chunk):
    """:func:`batch_all_soft_mean` over anchors in chunks, with its gradient written out.

    Forward: ``(sum, count)`` accumulated chunk by chunk. Backward (autodiff of the loop
    would keep every chunk's ``(chunk, b, b)`` intermediates: O(b^3) memory again), by
    ``d/dD[a, p] = sum_n w_apn`` and ``d/dD[a, n] = -sum_p w_apn``, with
    ``w_apn = sigmoid(D[a, p] - D[a, n]) [active] / count``, chunk by chunk. O(b^2 + chunk b^2) memory.
    """
    dtype = distances.dtype
    b = distances.shape[0]
    if b is None:
        n_chunks, rows = ops.shape(distances)[0], None
    else:
        n_chunks = -(-b // chunk)
        rows = n_chunks * chunk

    def padded(t):
        if rows is None or rows == b:
            return t
        return ops.pad(t, [[0, rows - b], [0, 0]])

    @ops.custom_gradient
    def mean(d, positive_f, negative_f):
        blocks = [padded(d), padded(positive_f), padded(negative_f)]

        def forward(i, carry):
            d_rows, pos_rows, neg_rows = _chunk_rows(blocks, i, chunk)
            _, losses, mask = _soft_terms(d_rows, pos_rows > 0, neg_rows > 0)
            weights = ops.cast(mask, dtype)
            return carry[0] + ops.sum(losses * weights), carry[1] + ops.sum(weights)

        zero = ops.zeros((), dtype)
        total, count = ops.fori_loop(0, n_chunks, forward, (zero, zero))
        count = ops.maximum(count, 1.0)

        def backward(i, gradient):
            d_rows, pos_rows, neg_rows = _chunk_rows(blocks, i, chunk)
            differences, _, mask = _soft_terms(d_rows, pos_rows > 0, neg_rows > 0)
            w = ops.where(mask, ops.sigmoid(differences), ops.zeros_like(differences))
            rows_gradient = ops.sum(w, axis=2) - ops.sum(w, axis=1)
            return ops.slice_update(gradient, [i * chunk, 0], rows_gradient)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            gradient = ops.fori_loop(0, n_chunks, backward, ops.zeros_like(blocks[0]))
            gradient = gradient[: ops.shape(d)[0]] * (upstream / count)
            return gradient, ops.zeros_like(positive_f), ops.zeros_like(negative_f)

        return total / count, grad

    return mean(distances, ops.cast(positive, dtype), ops.cast(negative, dtype))


def batch_all_soft_mean(distances, labels, chunk_elements=None, masks=None):
    """Soft-margin "batch all" loss: the mean of ``log(1 + exp(D[a, p] - D[a, n]))``.

    Over the valid triplets ``(a, p, n)`` whose term is > 0 in floating point (all of
    them, unless ``D[a, p] - D[a, n]`` is below about -104), as :func:`batch_all` with
    a softplus. ``sum_n log(1 + e^{D[a, p] - D[a, n]})`` has no sorted (prefix-sum)
    form, so this keeps O(b^3) time, but its memory is O(b^2): anchors are processed
    ``chunk`` at a time (``chunk b^2 <= chunk_elements``, default
    ``SOFT_CHUNK_ELEMENTS``), forward and backward. A batch that fits in one chunk is
    computed in one broadcast, as the cubic form.

    Returns:
        Scalar tensor; 0 when the batch has no valid triplet.
    """
    distances = ops.convert_to_tensor(distances)
    positive, negative = _masks(labels, masks)
    chunk_elements = SOFT_CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    b = distances.shape[0]
    chunk = 1 if b is None else max(1, min(b, chunk_elements // max(b * b, 1)))
    if b is not None and chunk >= b:
        _, losses, mask = _soft_terms(distances, positive, negative)
        weights = ops.cast(mask, distances.dtype)
        return ops.sum(losses * weights) / ops.maximum(ops.sum(weights), 1.0)
    return _soft_mean_chunked(distances, positive, negative, chunk)


def _batch_semi_hard_cubic(distances, labels, masks=None):
    """:func:`batch_semi_hard` by its definition, with a ``(b, b, b)`` mask: O(b^3) time and memory.

    The reference the sorted form is tested against (and the faster of the two for small
    batches: :func:`batch_semi_hard` calls it when ``b <= CUBIC_MAX_BATCH``).
    """
    distances = ops.convert_to_tensor(distances)
    positive, negative = _masks(labels, masks)
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
