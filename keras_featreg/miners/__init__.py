"""Miners as objects: which pairs or triplets of a batch a loss is computed on.

A miner looks at the matrix of a :class:`~keras_featreg.distances.Distance` between a
batch and its references (the batch itself, or a cross-batch memory), and at their
labels, and returns either

* :class:`MinedPairs` -- boolean ``(b, m)`` masks of the selected positive and negative
  pairs (pair miners: :class:`MultiSimilarityMiner`, :class:`PairMarginMiner`,
  :class:`BalancedPairMiner`, :class:`HDCMiner`, :class:`UniformHistogramMiner`,
  :class:`BatchEasyHardMiner`), which any pair-based loss (contrastive,
  Multi-Similarity, lifted structure, SupCon, NT-Xent) intersects with its own pairs; or
* :class:`MinedTriplets` -- anchor-positive and anchor-negative
  values with the mask of the triplets that exist (triplet miners:
  :class:`SemiHardMiner`, :class:`BatchHardMiner`, :class:`BatchAllMiner`,
  :class:`TripletMarginMiner`, :class:`AngularMiner`, :class:`DistanceWeightedMiner`;
  :class:`BatchEasyHardMiner` with ``output="triplets"``), which
  :class:`~keras_featreg.losses.TripletLoss` consumes.

The miners ported from pytorch-metric-learning 2.9 select the same pairs or triplets as
PML's (whose index tuples become masks); :class:`DistanceWeightedMiner` and
:class:`UniformHistogramMiner` draw at random from a seeded
:class:`keras.random.SeedGenerator` (``seed=``).

Every miner has static output shapes (masks over the ``(b, m)`` matrix, never index
lists of data-dependent length), so it compiles under XLA and ``jax.jit``. Mining is
done on ``stop_gradient`` values where it only *selects*; the selected entries keep
their gradient in the loss. Triplet miners work in "smaller is closer" orientation
(:meth:`Distance.as_distance`: a similarity is negated), so the hinge
``[d_ap - d_an + m]_+`` becomes PML's ``[s_an - s_ap + m]_+`` for similarities.

A user-written miner is a subclass of :class:`Miner` with
``mine(matrix, labels, ref_labels, positive, negative, distance)``, or a plain callable
``(matrix, labels) -> MinedPairs | MinedTriplets`` (wrapped by :func:`get`).

String identifiers (:func:`get`): ``"semi_hard"``, ``"hard"``, ``"all"``,
``"multi_similarity"``, ``"pair_margin"``, ``"balanced_pair"``, ``"triplet_margin"``,
``"batch_easy_hard"``, ``"distance_weighted"``, ``"angular"``, ``"hdc"``,
``"uniform_histogram"``.
"""

from keras_featreg import _parts
from keras_featreg.miners._base import MinedPairs, MinedTriplets, Miner, _CallableMiner
from keras_featreg.miners._pairs import BalancedPairMiner, MultiSimilarityMiner, PairMarginMiner
from keras_featreg.miners._pml import AngularMiner, BatchEasyHardMiner, HDCMiner, TripletMarginMiner
from keras_featreg.miners._sampling import (
    DistanceWeightedMiner,
    UniformHistogramMiner,
    histogram_bins,
    sample_rows,
)
from keras_featreg.miners._triplets import (
    CUBIC_MAX_BATCH,
    SOFT_CHUNK_ELEMENTS,
    BatchAllMiner,
    BatchHardMiner,
    SemiHardMiner,
    batch_all,
    batch_all_hinge_sums,
    batch_all_soft_mean,
    batch_hard,
    batch_semi_hard,
)

__all__ = [
    "AngularMiner",
    "BalancedPairMiner",
    "BatchAllMiner",
    "BatchEasyHardMiner",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "HDCMiner",
    "MinedPairs",
    "MinedTriplets",
    "Miner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "SemiHardMiner",
    "TripletMarginMiner",
    "UniformHistogramMiner",
    "batch_all",
    "batch_all_hinge_sums",
    "batch_all_soft_mean",
    "batch_hard",
    "batch_semi_hard",
    "get",
    "histogram_bins",
    "name_of",
    "sample_rows",
]

_BY_NAME = {cls.name: cls for cls in (SemiHardMiner, BatchHardMiner, BatchAllMiner,
                                      MultiSimilarityMiner, PairMarginMiner, BalancedPairMiner,
                                      TripletMarginMiner, BatchEasyHardMiner,
                                      DistanceWeightedMiner, AngularMiner, HDCMiner,
                                      UniformHistogramMiner)}
NAMES = tuple(_BY_NAME)
TRIPLET_NAMES = ("semi_hard", "hard", "all")
_FUNCTIONS = {batch_semi_hard: SemiHardMiner, batch_hard: BatchHardMiner,
              batch_all: BatchAllMiner}


def get(identifier, arg="miner"):
    """A :class:`Miner` from a name, an instance, a serialized config, a callable or None.

    Names: ``"semi_hard"``, ``"hard"``, ``"all"``, ``"triplet_margin"``, ``"angular"``,
    ``"distance_weighted"`` (triplets), ``"multi_similarity"``, ``"pair_margin"``,
    ``"balanced_pair"``, ``"hdc"``, ``"uniform_histogram"``, ``"batch_easy_hard"``
    (pairs). The functions
    :func:`keras_featreg.miners.batch_semi_hard` / ``batch_hard`` / ``batch_all`` map to
    their miner objects; any other callable ``(matrix, labels) -> MinedPairs |
    MinedTriplets`` is wrapped (it is given the matrix in "smaller is closer"
    orientation).
    """
    if callable(identifier) and not isinstance(identifier, (str, dict, type, Miner)):
        if identifier in _FUNCTIONS:
            return _FUNCTIONS[identifier]()
        return _CallableMiner(identifier)
    if identifier == "semi-hard":  # the spelling of earlier versions
        identifier = "semi_hard"
    try:
        return _parts.lookup(identifier, Miner, _BY_NAME, arg)
    except ValueError as error:
        raise ValueError(str(error).replace(" Received:", " or a callable. Received:")) from None


def name_of(miner):
    """The name of a built-in miner with default arguments (for configs), else the object."""
    return _parts.name_of(miner, _BY_NAME)
