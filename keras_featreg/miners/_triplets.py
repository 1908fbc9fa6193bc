"""Triplet mining: FaceNet semi-hard, batch-hard and batch-all, functions and miners.

Pure ``keras.ops`` functions behind the triplet miners (and usable on their own). Nothing here depends on
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
  O(b^2) memory. :class:`keras_featreg.losses.TripletLoss` uses these for
  ``mining="semi_hard"`` and ``"all"``.
"""

import keras
from keras import ops

from keras_featreg import backend as _backend
from keras_featreg._utils import PACKAGE
from keras_featreg.miners._base import MinedTriplets, Miner
from keras_featreg.ops import labels as _labels
from keras_featreg.ops import masked as _masked


def _masks(labels, masks):
    """``pair_masks(labels)``, or the ``(positive, negative)`` masks given by the caller.

    Every miner accepts ``masks=(positive, negative)``, two boolean ``(b, m)`` tensors,
    instead of deriving them from `labels`: a rectangular distance matrix between a
    batch and a set of reference embeddings (a cross-batch memory) with their own
    labels, or a miner restricted to pairs chosen earlier.
    """
    if masks is None:
        return _labels.pair_masks(labels)
    positive, negative = masks
    return ops.convert_to_tensor(positive), ops.convert_to_tensor(negative)


def batch_all(distances, labels, masks=None):
    """Every valid triplet ``(a, p, n)`` of the batch ("batch all").

    The loss averages over the *active* triplets -- those with a loss > 0 -- as in
    Hermans et al. (2017), "In Defense of the Triplet Loss": averaging over all valid
    triplets would let the many already-satisfied ones wash the gradient out. With a
    softplus (soft margin) every triplet is active, so this is the mean over all valid
    triplets. O(b^3) memory: :class:`keras_featreg.losses.TripletLoss` with
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
    >>> from keras_featreg.miners import batch_all
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
        mask=_labels.triplet_mask(labels) if masks is None else ops.logical_and(
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
    >>> from keras_featreg.miners import batch_hard
    >>> d = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [2.0, 0.5, 0.0]])
    >>> mined = batch_hard(d, np.array([0, 0, 1]))
    >>> np.asarray(mined.positive_distances).tolist(), np.asarray(mined.negative_distances).tolist()
    ([1.0, 1.0, 0.0], [2.0, 0.5, 0.5])
    >>> np.asarray(mined.mask).tolist()  # anchor 2 has no positive
    [True, True, False]
    """
    distances = ops.convert_to_tensor(distances)
    positive, negative = _masks(labels, masks)
    hardest_positive, has_positive = _masked.masked_max(distances, positive, axis=1)
    hardest_negative, has_negative = _masked.masked_min(distances, negative, axis=1)
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
    >>> from keras_featreg.miners import batch_semi_hard
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
    outside, has_outside = _masked.masked_min(anchor_negative, farther, axis=2)  # (a, p)
    inside, has_negative = _masked.masked_max(distances, negative, axis=1)  # (a,)
    semi_hard = ops.where(has_outside, outside, ops.expand_dims(inside, 1))
    return MinedTriplets(
        positive_distances=distances,
        negative_distances=semi_hard,
        mask=ops.logical_and(positive, ops.expand_dims(has_negative, 1)),
        average_over_active=False,
    )


# ------------------------------------------------------------------------ triplet miners


@keras.saving.register_keras_serializable(package=PACKAGE)
class SemiHardMiner(Miner):
    """FaceNet's semi-hard negative for every positive pair (Schroff et al. 2015).

    For each positive pair ``(a, p)``: the closest negative farther than ``p``; if there
    is none, the farthest negative. One triplet per positive pair, exactly
    ``tfa.losses.TripletSemiHardLoss`` (:func:`keras_featreg.miners.batch_semi_hard`,
    O(b^2 log b) time, O(b^2) memory). Not PML's ``TripletMarginMiner("semihard")``,
    which keeps every triplet with ``0 < d_an - d_ap <= margin``.
    """

    output = "triplets"
    name = "semi_hard"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return batch_semi_hard(distance.as_distance(matrix), labels,
                                       masks=(positive, negative))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchHardMiner(Miner):
    """Hardest positive and hardest negative of every anchor (Hermans et al. 2017).

    One triplet per anchor that has both (:func:`keras_featreg.miners.batch_hard`).
    """

    output = "triplets"
    name = "hard"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return batch_hard(distance.as_distance(matrix), labels, masks=(positive, negative))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchAllMiner(Miner):
    """Every valid triplet ("batch all", Hermans et al. 2017).

    :class:`~keras_featreg.losses.TripletLoss` recognizes this miner and computes the
    loss by sorted prefix sums, never building the ``(b, m, m)`` triplet tensor (O(b^2)
    memory); called directly it returns that tensor
    (:func:`keras_featreg.miners.batch_all`).
    """

    output = "triplets"
    name = "all"

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        return batch_all(distance.as_distance(matrix), labels, masks=(positive, negative))
