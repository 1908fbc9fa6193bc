"""Losses by family, built from parts: distances, miners and reducers.

Ranking (metric-learning) losses follow ``keras.losses.Circle``'s convention: ``y_true``
holds integer class labels ``(b,)`` and ``y_pred`` the embeddings ``(b, d)``; samples
sharing a label are positives. Each composes a distance
(:mod:`keras_featreg.distances`), optionally a miner (:mod:`keras_featreg.miners`) and a
reducer (:mod:`keras_featreg.reducers`) on the private base
:class:`~keras_featreg.losses._base.MetricLoss`. Two-view losses (VICReg) take the two
views as ``(z_a, z_b)``.

Families (one private module each):

* ``_triplet``: :class:`TripletLoss` (semi-hard, batch-hard, batch-all mining).
* ``_contrastive``: :class:`ContrastiveLoss` (all pairs, or mined pairs).
* ``_npair``: :class:`NPairLoss`, :class:`AngularLoss` (``p x 2`` batches).
* ``_vicreg``: :class:`VICRegLoss` (two views).
* ``_barlow``: :class:`BarlowTwinsLoss` (two views).
* ``_xbm``: :class:`CrossBatchMemory` (a pair/triplet loss against a memory of past
  batches, kept in a :class:`keras_featreg.layers.EmbeddingMemory` layer).
* ``_multi_similarity``: :class:`MultiSimilarityLoss`.
* ``_contrastive_ssl``: :class:`SupConLoss`, :class:`NTXentLoss`, :func:`two_view_batch`.
* ``_lifted``: :class:`LiftedStructureLoss`, :class:`GeneralizedLiftedStructureLoss`.
* ``_circle``: :class:`CircleLoss`.
* ``_proxy``: :class:`ProxyAnchorLoss`, :class:`ArcFaceLoss`, :class:`CosFaceLoss` (class
  weights owned by a :class:`keras_featreg.layers.ProxyHead` layer; ``y_pred`` = the
  head's cosines).

Each loss is a class holding the math (``compute_loss``) and its configuration; the
arguments every loss shares (``distance``, ``miner``, ``reducer``, ``cross_replica``,
``reduction``, ``name``, ``dtype``) are taken by the bases :class:`MetricLoss` and
:class:`BatchLoss` and documented there once. The function of the same name
(``triplet_loss(y_true, y_pred, **kwargs)``) is ``TripletLoss(**kwargs).call(y_true,
y_pred)``.

:func:`get` resolves a loss from its name (``"triplet"``, ``"TripletLoss"``, ...), a
serialized config or an instance.
"""

import keras

from keras_featreg.losses._base import BatchLoss, MetricLoss, _snake  # noqa: F401
from keras_featreg.losses._vicreg import TwoViewLoss  # noqa: F401
from keras_featreg.losses._contrastive import (  # noqa: F401
    ContrastiveLoss,
    contrastive_loss,
    contrastive_loss_bounds,
)
from keras_featreg.losses._npair import (  # noqa: F401
    AngularLoss,
    NPairLoss,
    angular_f_bounds,
    angular_loss,
    angular_loss_bounds,
    npair_loss,
    npair_loss_bounds,
)
from keras_featreg.losses._proxy import (  # noqa: F401
    ArcFaceLoss,
    CosFaceLoss,
    ProxyAnchorLoss,
    arcface_loss,
    arcface_loss_from_embeddings,
    cosface_loss,
    cosface_loss_from_embeddings,
    proxy_anchor_loss,
    proxy_anchor_loss_from_embeddings,
)
from keras_featreg.losses._triplet import TripletLoss, triplet_loss, triplet_loss_bounds  # noqa: F401
from keras_featreg.losses._vicreg import VICRegLoss, vicreg_loss, vicreg_terms  # noqa: F401
from keras_featreg.losses._barlow import (  # noqa: F401
    BarlowTwinsLoss,
    barlow_twins_loss,
    barlow_twins_loss_bounds,
)
from keras_featreg.losses._xbm import CrossBatchMemory  # noqa: F401

from keras_featreg.losses._multi_similarity import (  # noqa: F401
    MultiSimilarityLoss,
    multi_similarity_loss,
)
from keras_featreg.losses._contrastive_ssl import (  # noqa: F401
    NTXentLoss,
    SupConLoss,
    ntxent_loss,
    supcon_loss,
    two_view_batch,
)
from keras_featreg.losses._lifted import (  # noqa: F401
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    generalized_lifted_structure_loss,
    lifted_structure_loss,
)

from keras_featreg.losses._circle import CircleLoss, circle_loss  # noqa: F401

_CLASSES = [TripletLoss, ContrastiveLoss, NPairLoss, AngularLoss, VICRegLoss]
_CLASSES += [BarlowTwinsLoss, CrossBatchMemory]
_CLASSES += [MultiSimilarityLoss, SupConLoss, NTXentLoss, LiftedStructureLoss,
             GeneralizedLiftedStructureLoss]
_CLASSES += [ProxyAnchorLoss, ArcFaceLoss, CosFaceLoss]
_CLASSES += [CircleLoss]

# -- issue 21: PML's pair, ranking and average-precision half (one block per family) --
# [parts: SNR contrastive, DynamicSoftMargin, SelfSupervisedLoss, MultipleLosses]
# [pair losses: TupletMargin, IntraPairVariance, Margin, NCA, Instance, Manifold]
# [ranking / AP losses: FastAP, SmoothAP, PNP, Histogram, RankedList, ThresholdConsistentMargin]


def _aliases():
    table = {}
    for cls in _CLASSES:
        snake = getattr(cls, "default_name", None) or _snake(cls.__name__)  # "triplet_loss"
        for alias in (cls.__name__, snake, snake[: -len("_loss")] if snake.endswith("_loss") else snake):
            table[alias] = cls
    return table


def get(identifier, **kwargs):
    """A loss instance from a name, a serialized config, an instance or a class.

    Names: the class name (``"TripletLoss"``), its snake case (``"triplet_loss"``) or
    without the suffix (``"triplet"``, ``"proxy_anchor"``, ``"vicreg"``); `kwargs` go to
    the constructor.

    Example:

    >>> from keras_featreg import losses
    >>> loss = losses.get("triplet", margin=0.1)
    >>> type(loss).__name__, loss.margin
    ('TripletLoss', 0.1)
    """
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    table = _aliases()
    if isinstance(identifier, str) and identifier in table:
        return table[identifier](**kwargs)
    if isinstance(identifier, type) and issubclass(identifier, keras.losses.Loss):
        return identifier(**kwargs)
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    raise ValueError(
        f"`identifier` must be one of {sorted(set(table))}, a keras Loss, or a serialized "
        f"loss config. Received: identifier={identifier!r}"
    )


def register(cls):
    """Add a loss class to :func:`get`'s names (used by the families and by user code)."""
    if cls not in _CLASSES:
        _CLASSES.append(cls)
    return cls
