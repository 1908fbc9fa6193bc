"""The miner contract: :class:`Miner`, and what miners return."""

import collections

from keras import ops

from keras_featreg import _parts, _utils
from keras_featreg import distances as distances_lib
from keras_featreg.ops import labels as _labels

MinedPairs = collections.namedtuple("MinedPairs", ["positive", "negative"])
MinedPairs.__doc__ = """Result of a pair miner: boolean ``(b, m)`` masks.

Attributes:
    positive: True for the selected positive pairs ``[anchor, reference]``.
    negative: True for the selected negative pairs.
"""

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


class Miner(_parts.Part):
    """Base class of the miners.

    ``miner(matrix, labels, ref_labels=None, masks=None, distance=None)``:

    Args:
        matrix: ``(b, m)`` values of `distance` between the batch and its references.
        labels: ``(b,)`` labels of the batch.
        ref_labels: ``(m,)`` labels of the references; None when they are the batch.
        masks: optional ``(positive, negative)`` ``(b, m)`` masks of the pairs that
            exist (default :func:`keras_featreg.ops.labels.pair_masks`).
        distance: the :class:`~keras_featreg.distances.Distance` that produced
            `matrix` (default Euclidean: smaller is closer).

    Subclasses implement :meth:`mine` and set ``output`` to ``"pairs"`` or
    ``"triplets"``.
    """

    output = "pairs"
    name = None

    def __call__(self, matrix, labels, ref_labels=None, masks=None, distance=None):
        matrix = _utils.as_float_tensor(matrix, name="matrix", min_rank=2, max_rank=2)
        if labels is not None:
            labels, matrix = _labels.check_labels(labels, matrix, name="labels",
                                                  rows_name="matrix")
        positive, negative = masks if masks is not None else _labels.pair_masks(labels, ref_labels)
        distance = distances_lib.get(distance) or distances_lib.EuclideanDistance()
        return self.mine(matrix, labels, ref_labels, positive, negative, distance)

    def mine(self, matrix, labels, ref_labels, positive, negative, distance):
        raise NotImplementedError


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
