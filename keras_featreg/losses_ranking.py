"""Compatibility module: the ranking losses moved to :mod:`keras_featreg.losses`.

``keras_featreg.losses_ranking`` re-exports the triplet, contrastive, N-pair and angular
losses, their functions and bounds from :mod:`keras_featreg.losses`. New code imports from
:mod:`keras_featreg.losses`.
"""

from keras_featreg import losses as _losses
from keras_featreg import mining as _mining
from keras_featreg.losses._base import masked_mean as _masked_mean  # noqa: F401
from keras_featreg.losses._triplet import _batch_all_loss  # noqa: F401

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
globals().update({name: getattr(_losses, name) for name in __all__ + ["angular_f_bounds"]})

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
MINING = tuple(_mining.MINERS)
NEGATIVES = _mining.NEGATIVE_SETS
