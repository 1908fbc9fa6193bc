"""Distances as objects: what losses, miners and the evaluation compare embeddings with.

A :class:`Distance` maps two batches of embeddings ``(n, d)`` and ``(m, d)`` to an
``(n, m)`` matrix. It knows its direction: ``is_inverted`` is False for a *distance*
(smaller = closer: Euclidean, squared Euclidean, cosine distance) and True for a
*similarity* (larger = closer: cosine similarity, dot product), as in
pytorch-metric-learning. Losses and miners that rank pairs use :meth:`Distance.closer`
/ :meth:`Distance.as_distance` instead of assuming a direction, so any distance works
with any of them where that is meaningful.

The math lives once, in :mod:`keras_featreg.ops.pairwise`: every object here calls
:func:`~keras_featreg.ops.pairwise.pairwise_distances` or
:func:`~keras_featreg.ops.pairwise.cosine_similarity_matrix` /
:func:`~keras_featreg.ops.pairwise.pairwise_dot` (the "same numbers on every machine"
guarantees carry over). ``evaluation_metric`` names the equivalent ranking of
:mod:`keras_featreg.evaluation` (``recall_at_k(..., metric=distance)`` accepts the
objects).

String identifiers (:func:`get`): ``"euclidean"``, ``"squared_euclidean"``,
``"cosine"`` (cosine *distance* ``1 - cos``), ``"cosine_similarity"``,
``"dot_product"``.

Example:

>>> import numpy as np
>>> from keras_featreg import distances
>>> x = np.array([[1.0, 0.0], [0.0, 2.0]])
>>> np.asarray(distances.get("euclidean")(x), dtype=float).round(4).tolist()
[[0.0, 2.2361], [2.2361, 0.0]]
>>> sim = distances.CosineSimilarity()
>>> sim.is_inverted, np.asarray(sim(x)).tolist()
(True, [[1.0, 0.0], [0.0, 1.0]])
"""

import keras
from keras import ops

from keras_featreg import _parts, _utils
from keras_featreg.ops import pairwise as _ops


__all__ = [
    "CosineDistance",
    "CosineSimilarity",
    "Distance",
    "DotProductSimilarity",
    "EuclideanDistance",
    "SquaredEuclideanDistance",
    "get",
    "serialize",
    "deserialize",
]


class Distance(_parts.Part):
    """Base class: ``distance(x, y=None) -> (n, m)`` matrix.

    Subclasses implement :meth:`pairwise` in ``keras.ops`` and set the class attributes:

    * ``is_inverted``: True when larger values mean closer (a similarity).
    * ``unit_range``: ``(min, max)`` over L2-normalized embeddings (for loss bounds),
      or None when unbounded.
    * ``evaluation_metric``: the :mod:`keras_featreg.evaluation` metric that ranks
      neighbours the same way, or None.

    A user-defined distance is a subclass with :meth:`pairwise` (and ``get_config`` if
    it has arguments); register it with ``keras.saving.register_keras_serializable`` to
    save it inside a loss.
    """

    is_inverted = False
    unit_range = None
    evaluation_metric = None

    def pairwise(self, x, y=None):
        raise NotImplementedError

    def __call__(self, x, y=None):
        return self.pairwise(x, y)

    def as_distance(self, matrix):
        """``matrix`` oriented so that smaller means closer (negated for similarities)."""
        return ops.negative(matrix) if self.is_inverted else matrix

    def closer(self, a, b):
        """Elementwise: is value `a` closer than value `b`?"""
        return ops.greater(a, b) if self.is_inverted else ops.less(a, b)



@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class EuclideanDistance(Distance):
    """``D[i, j] = ||x_i - y_j||_2``, exact 0 (zero gradient) for identical rows.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.distances import EuclideanDistance
    >>> np.asarray(EuclideanDistance()(np.array([[0.0, 0.0], [3.0, 4.0]]))).tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    """

    name = "euclidean"
    unit_range = (0.0, 2.0)
    evaluation_metric = "euclidean"

    def pairwise(self, x, y=None):
        return _ops.pairwise_distances(x, y, metric=self.name)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class SquaredEuclideanDistance(EuclideanDistance):
    """``D[i, j] = ||x_i - y_j||_2^2``."""

    name = "squared_euclidean"
    unit_range = (0.0, 4.0)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class CosineDistance(EuclideanDistance):
    """``D[i, j] = 1 - cos(x_i, y_j)`` in ``[0, 2]`` (tensorflow-addons' ``"angular"``)."""

    name = "cosine"
    unit_range = (0.0, 2.0)
    evaluation_metric = "cosine"


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class CosineSimilarity(Distance):
    """``S[i, j] = cos(x_i, y_j)`` in ``[-1, 1]``; larger = closer (``is_inverted``).

    Rows are L2-normalized first (an all-zero row has similarity 0 with everything).
    pytorch-metric-learning's default for Multi-Similarity, SupCon, NT-Xent and
    Proxy-Anchor.
    """

    name = "cosine_similarity"
    is_inverted = True
    unit_range = (-1.0, 1.0)
    evaluation_metric = "cosine"

    def pairwise(self, x, y=None):
        return _ops.cosine_similarity_matrix(x, y)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class DotProductSimilarity(Distance):
    """``S[i, j] = <x_i, y_j>``; larger = closer (``is_inverted``).

    Equals :class:`CosineSimilarity` on L2-normalized embeddings (without normalizing).
    """

    name = "dot_product"
    is_inverted = True
    unit_range = (-1.0, 1.0)
    evaluation_metric = "dot_product"

    def pairwise(self, x, y=None):
        return _ops.pairwise_dot(x, y)


_BY_NAME = {
    cls.name: cls
    for cls in (EuclideanDistance, SquaredEuclideanDistance, CosineDistance, CosineSimilarity,
                DotProductSimilarity)
}
NAMES = tuple(_BY_NAME)


def serialize(distance):
    return keras.saving.serialize_keras_object(distance)


def deserialize(config):
    return keras.saving.deserialize_keras_object(config)


def get(identifier, arg="distance"):
    """A :class:`Distance` from a name, an instance, a serialized config or None.

    Args:
        identifier: one of ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"``,
            ``"cosine_similarity"``, ``"dot_product"``; a :class:`Distance`; a dict from
            :func:`serialize`; or None (returns None).
        arg: the argument name used in the error message.

    Raises:
        ValueError: for anything else, naming the accepted values.
    """
    return _parts.lookup(identifier, Distance, _BY_NAME, arg)


def name_of(distance):
    """The name of a built-in distance with default arguments (for configs), else the object."""
    return _parts.name_of(distance, _BY_NAME)
