"""Compatibility module: the ranking losses moved to :mod:`keras_featreg.losses`.

``keras_featreg.losses_ranking`` re-exports the triplet, contrastive, N-pair and angular
losses, their functions and bounds from the families of :mod:`keras_featreg.losses`
(``_triplet``, ``_contrastive``, ``_npair``). New code imports from
:mod:`keras_featreg.losses`.
"""

from keras_featreg import distances as _distances
from keras_featreg import mining as _mining
from keras_featreg.losses._base import masked_mean as _masked_mean  # noqa: F401
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
from keras_featreg.losses._triplet import (  # noqa: F401
    TripletLoss,
    _batch_all_loss,
    triplet_loss,
    triplet_loss_bounds,
)

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
MINING = tuple(_mining.MINERS)
NEGATIVES = _mining.NEGATIVE_SETS

__all__ = [
    "AngularLoss",
    "ContrastiveLoss",
    "NPairLoss",
    "TripletLoss",
    "angular_loss",
    "angular_loss_bounds",
    "contrastive_loss",
    "contrastive_loss_bounds",
    "npair_loss",
    "npair_loss_bounds",
    "triplet_loss",
    "triplet_loss_bounds",
]
del _distances
