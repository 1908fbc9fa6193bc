"""pytorch-metric-learning's sampling miners: distance-weighted and uniform-histogram.

Both draw at random, from a :class:`keras.random.SeedGenerator` owned by the miner
(``seed=``): reproducible, and jit-safe (static shapes; no Python randomness). The draws
advance the generator on every call in eager mode, in ``tf.function`` (with or without
XLA) and on torch. JAX traces a compiled function once, as a pure function: inside
``jax.jit`` the miner draws from its generator's current state without advancing it
(a state update cannot leave the trace); under ``model.fit`` the generator advances
when it is model state -- attach it to the model (``model.miner_seed =
miner.seed_generator``), as Keras requires for any random op traced by JAX.
TensorFlow's stateless random ops pick another algorithm under XLA (ThreeFry; Philox
without), so one seed draws differently with and without ``jit_compile``; each mode is
reproducible.
"""

import numbers

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg._utils import PACKAGE
from keras_featreg.miners._base import MinedPairs, MinedTriplets, Miner
from keras_featreg.miners._pml import _euclidean
from keras_featreg.miners._triplets import _count_at_most
from keras_featreg.ops import masked as _masked


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be None or an integer >= 0. Received: seed={seed!r}")
    return int(seed)


class _RandomMiner(Miner):
    """A miner that draws: owns ``seed_generator`` (a :class:`keras.random.SeedGenerator`)."""

    def _set_seed(self, seed):
        self.seed = _check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def _draw(self, like):
        """The seed of this call's draws (see the module docstring for JAX)."""
        if _backend.backend_name() == "jax" and not _backend.is_concrete(like):
            from keras.src.backend.common.stateless_scope import in_stateless_scope

            if not in_stateless_scope():
                return self.seed_generator.state.value
        return self.seed_generator


def sample_rows(weights, num_samples, seed):
    """``(b, num_samples)`` int32 draws, row ``a`` from ``P(j) ∝ weights[a, j]``.

    Inverse transform sampling: one uniform ``u`` per draw and a binary search of
    ``u * sum_j weights[a, j]`` in the row's cumulative sums: O(b s log m) time, no
    ``(b, s, m)`` tensor. Entries of weight 0 are never drawn; a row of zeros gives
    index 0 (the caller masks it).

    Args:
        weights: ``(b, m)`` non-negative float weights (need not sum to 1).
        num_samples: int, draws per row.
        seed: an int, a :class:`keras.random.SeedGenerator` or a JAX key.
    """
    weights = ops.convert_to_tensor(weights)
    cdf = ops.cumsum(weights, axis=1)
    total = cdf[:, -1:]
    u = keras.random.uniform((ops.shape(weights)[0], num_samples), dtype=weights.dtype,
                             seed=seed)
    index = _count_at_most(cdf, u * total)
    # u * total can round up to total: clamp to the last entry of positive weight.
    width = ops.shape(weights)[1]
    flipped = ops.flip(ops.greater(weights, 0.0), axis=1)
    last = (width - 1) - ops.cast(ops.argmax(ops.cast(flipped, "int32"), axis=1), "int32")
    return ops.minimum(index, ops.expand_dims(last, 1))


# ------------------------------------------------------------------ distance weighted


@keras.saving.register_keras_serializable(package=PACKAGE)
class DistanceWeightedMiner(_RandomMiner):
    """Negatives sampled with weights ``1 / q(d)`` (Wu et al., "Sampling Matters", ICCV 2017).

    Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep Embedding Learning",
    ICCV 2017, Section 4: on the unit sphere in ``n = embedding_size`` dimensions,
    pairwise distances have density ``q(d) ∝ d^(n-2) (1 - d^2/4)^((n-3)/2)``; sampling a
    negative with probability ``∝ 1/q(d)`` spreads the negatives over all distances::

        log w_an = (2 - n) log d - ((n - 3) / 2) log(1 - d^2 / 4),  d = max(D_an, cutoff)
        P(n | a) = w_an / sum_n' w_an'    over negatives with d < nonzero_loss_cutoff

    (``cutoff`` bounds the weights of close pairs; ``nonzero_loss_cutoff`` drops the
    negatives too far to give a margin-loss gradient.) For every positive pair
    ``(a, p)``, one negative is drawn from ``P(. | a)`` -- as the paper's code (one
    negative per anchor-positive pair); an anchor whose weights are all 0 gets no
    triplet. :meth:`weights` returns ``P``.

    Returns :class:`~keras_featreg.miners.MinedTriplets` of ``(b, m)`` tensors indexed
    ``[anchor, positive]`` (the drawn negative's distance with its gradient), averaged
    over the active ones (``average_over_active=True``, PML's ``AvgNonZeroReducer``).

    Differences from PML: (1) PML draws ``|class|`` positives per anchor uniformly *with
    replacement* (a positive pair may appear twice, another not at all); here every
    positive pair appears once, with its own negative. (2) PML subtracts one maximum
    over the whole batch before exponentiating, so with a large ``n`` a row far from the
    batch's closest pair can underflow to all zeros (and lose its anchor); here each row
    subtracts its own maximum -- the same ``P`` wherever PML's is representable.
    (3) The distance: PML requires its normalized ``LpDistance``; here any Euclidean
    distance of L2-normalized embeddings (``"euclidean"``, ``"squared_euclidean"``,
    ``"cosine"``, ``"cosine_similarity"``, ``"dot_product"``, converted to the Euclidean
    distance). (4) ``embedding_size`` is an argument: the miner sees distances, not the
    embeddings whose dimension PML reads.

    Args:
        cutoff: float >= 0, the smallest distance used in the weights. Defaults to `0.5`.
        nonzero_loss_cutoff: float > 0; negatives at this distance or farther are never
            drawn. Defaults to `1.4`.
        embedding_size: int >= 1, the dimension ``n`` of the embeddings (required when
            mining; None by default so that ``get("distance_weighted")`` constructs).
        seed: None or an int >= 0, the seed of the draws (see the module docstring).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.miners import DistanceWeightedMiner
    >>> from keras_featreg.distances import EuclideanDistance
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(8, 16))
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> miner = DistanceWeightedMiner(embedding_size=16, seed=1)
    >>> p = np.asarray(miner.weights(EuclideanDistance()(x), labels))
    >>> bool(np.allclose(p.sum(axis=1), 1.0)), bool((p[labels[:, None] == labels] == 0).all())
    (True, True)
    >>> mined = miner(EuclideanDistance()(x), labels)
    >>> int(np.asarray(mined.mask).sum())  # one triplet per positive pair
    8
    """

    output = "triplets"
    name = "distance_weighted"

    def __init__(self, cutoff=0.5, nonzero_loss_cutoff=1.4, embedding_size=None, seed=None):
        self.cutoff = _utils.check_number("cutoff", cutoff, minimum=0.0)
        self.nonzero_loss_cutoff = _utils.check_number(
            "nonzero_loss_cutoff", nonzero_loss_cutoff, minimum=0.0, strict=True)
        self.embedding_size = _utils.check_optional_int("embedding_size", embedding_size)
        self._set_seed(seed)

    def _probabilities(self, matrix, negative, distance):
        if self.embedding_size is None:
            raise ValueError(
                "DistanceWeightedMiner needs the dimension of the embeddings (its weights "
                "depend on it): DistanceWeightedMiner(embedding_size=d). Received: "
                "embedding_size=None")
        dist, _ = _euclidean(ops.stop_gradient(matrix), distance, "DistanceWeightedMiner")
        dim = float(self.embedding_size)
        d = ops.maximum(dist, ops.cast(self.cutoff, dist.dtype))
        log_w = (2.0 - dim) * ops.log(d) - ((dim - 3.0) / 2.0) * ops.log(1.0 - 0.25 * d * d)
        eligible = ops.logical_and(
            negative, ops.logical_and(ops.isfinite(log_w),
                                      ops.less(d, ops.cast(self.nonzero_loss_cutoff, d.dtype))))
        row_max, _ = _masked.masked_max(log_w, eligible, axis=1)
        shifted = ops.where(eligible, log_w - ops.expand_dims(row_max, 1), ops.zeros_like(log_w))
        w = ops.where(eligible, ops.exp(shifted), ops.zeros_like(log_w))
        total = ops.sum(w, axis=1, keepdims=True)
        return w / ops.where(total > 0, total, ops.ones_like(total))

    def weights(self, matrix, labels, ref_labels=None, masks=None, distance=None):
        """``(b, m)`` sampling probabilities of the negatives (rows sum to 1, or 0 when the
        anchor has no eligible negative); PML's ``weights`` with its NaN rows as 0."""
        matrix = _utils.as_float_tensor(matrix, name="matrix", min_rank=2, max_rank=2)
        from keras_featreg import distances as distances_lib
        from keras_featreg.ops import labels as _labels

        _, negative = masks if masks is not None else _labels.pair_masks(labels, ref_labels)
        distance = distances_lib.get(distance) or distances_lib.EuclideanDistance()
        return self._probabilities(matrix, negative, distance)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        p = self._probabilities(matrix, negative, distance)
        has = ops.any(ops.greater(p, 0.0), axis=1)
        index = sample_rows(p, ops.shape(p)[1], self._draw(matrix))
        d = distance.as_distance(matrix)
        return MinedTriplets(
            positive_distances=d,
            negative_distances=_backend.take_rows(d, index),
            mask=ops.logical_and(positive, ops.expand_dims(has, 1)),
            average_over_active=True,
        )

    def get_config(self):
        return {"cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
                "embedding_size": self.embedding_size, "seed": self.seed}


# ------------------------------------------------------------------ uniform histogram


def histogram_bins(values, candidates, num_bins):
    """Bin of every candidate among ``num_bins`` equal bins over ``[min, max]`` (PML's).

    The edges are ``torch.linspace(min, max, num_bins + 1)`` (from the low end in the first
    half, from the high end in the second); bin ``i`` holds ``edge_i <= v < edge_{i+1}``,
    the last one ``v <= max`` too. Returns int32 ``(b, m)`` (``num_bins`` off the
    candidates).
    """
    values, candidates = ops.convert_to_tensor(values), ops.convert_to_tensor(candidates)
    lo, _ = _masked.masked_min(ops.reshape(values, (-1,)), ops.reshape(candidates, (-1,)))
    hi, _ = _masked.masked_max(ops.reshape(values, (-1,)), ops.reshape(candidates, (-1,)))
    dtype = values.dtype
    step = (hi - lo) / float(num_bins)
    i = ops.arange(num_bins + 1, dtype=dtype)
    edges = ops.where(i < (num_bins + 1) // 2, lo + step * i, hi - step * (num_bins - i))
    positive_step = ops.greater(step, 0.0)
    safe = ops.where(positive_step, step, ops.ones_like(step))
    guess = ops.floor((values - lo) / safe)
    guess = ops.where(positive_step, guess, ops.full_like(guess, num_bins - 1))
    guess = ops.cast(ops.clip(guess, 0, num_bins - 1), "int32")
    below = ops.less(values, ops.take(edges, guess))
    guess = ops.where(ops.logical_and(below, guess > 0), guess - 1, guess)
    above = ops.logical_and(guess < num_bins - 1,
                            ops.greater_equal(values, ops.take(edges, guess + 1)))
    guess = ops.where(above, guess + 1, guess)
    return ops.where(candidates, guess, ops.full_like(guess, num_bins))


def _uniform_per_bin(values, candidates, num_bins, per_bin, seed):
    """Per bin, ``min(per_bin, count)`` candidates drawn uniformly without replacement."""
    bins = ops.reshape(histogram_bins(values, candidates, num_bins), (-1,))
    n = ops.shape(bins)[0]
    resolution = min((2**31 - 1) // (num_bins + 1), 2**24)
    u = keras.random.uniform(ops.shape(bins), seed=seed)
    draw = ops.cast(ops.minimum(ops.floor(u * resolution), resolution - 1), "int32")
    keys = bins * resolution + draw  # sorts by bin, then randomly within the bin
    order = ops.cast(ops.argsort(keys), "int32")
    counts = ops.segment_sum(ops.ones_like(bins), bins, num_segments=num_bins + 1)
    starts = ops.cumsum(counts) - counts
    sorted_bins = ops.take(bins, order)
    rank = ops.arange(n, dtype="int32") - ops.take(starts, sorted_bins)
    chosen = ops.logical_and(ops.less(rank, per_bin), ops.less(sorted_bins, num_bins))
    chosen = ops.scatter(ops.expand_dims(order, 1), ops.cast(chosen, "int32"), ops.shape(bins))
    return ops.reshape(ops.greater(chosen, 0), ops.shape(values))


@keras.saving.register_keras_serializable(package=PACKAGE)
class UniformHistogramMiner(_RandomMiner):
    """Pairs spread uniformly over the range of distances (PML's ``UniformHistogramMiner``).

    The positive pairs' values are cut into ``num_bins`` equal bins between their
    minimum and maximum (PML's ``torch.linspace`` edges, on the raw matrix: similarities
    for a similarity), and ``pos_per_bin`` pairs are drawn uniformly from each non-empty
    bin; the same for the negative pairs with ``neg_per_bin``. The loss then sees about
    as many easy as hard pairs, whatever the distribution of distances.

    Returns :class:`~keras_featreg.miners.MinedPairs`. :func:`histogram_bins` gives each
    pair's bin.

    Difference from PML: PML draws ``per_bin`` pairs per bin *with replacement*, which
    a mask cannot hold (a pair drawn twice weighs twice in PML's loss). Here a bin keeps
    ``min(per_bin, its size)`` distinct pairs, drawn uniformly without replacement:
    every pair of a bin of at most ``per_bin`` pairs is kept (PML keeps a random
    multiset of them), a larger bin keeps exactly ``per_bin``.

    Args:
        num_bins: int >= 1. Defaults to `100`.
        pos_per_bin: int >= 1. Defaults to `10`.
        neg_per_bin: int >= 1. Defaults to `10`.
        seed: None or an int >= 0, the seed of the draws (see the module docstring).

    Example:

    >>> import numpy as np
    >>> from keras_featreg.miners import UniformHistogramMiner
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(4), 4)
    >>> d = rng.uniform(size=(16, 16))
    >>> mined = UniformHistogramMiner(num_bins=4, pos_per_bin=2, neg_per_bin=5, seed=1)(d, labels)
    >>> int(np.asarray(mined.positive).sum()), int(np.asarray(mined.negative).sum())
    (8, 20)
    """

    name = "uniform_histogram"

    def __init__(self, num_bins=100, pos_per_bin=10, neg_per_bin=10, seed=None):
        self.num_bins = _utils.check_int("num_bins", num_bins)
        self.pos_per_bin = _utils.check_int("pos_per_bin", pos_per_bin)
        self.neg_per_bin = _utils.check_int("neg_per_bin", neg_per_bin)
        self._set_seed(seed)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        values = ops.stop_gradient(matrix)
        seed = self._draw(matrix)
        if not isinstance(seed, keras.random.SeedGenerator):  # one JAX key: split it
            seeds = [seed, ops.convert_to_tensor(seed) + ops.cast([0, 1], seed.dtype)]
        else:
            seeds = [seed, seed]
        return MinedPairs(
            _uniform_per_bin(values, positive, self.num_bins, self.pos_per_bin, seeds[0]),
            _uniform_per_bin(values, negative, self.num_bins, self.neg_per_bin, seeds[1]),
        )

    def get_config(self):
        return {"num_bins": self.num_bins, "pos_per_bin": self.pos_per_bin,
                "neg_per_bin": self.neg_per_bin, "seed": self.seed}
