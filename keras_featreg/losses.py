"""Losses: ranking losses for metric learning and VICReg's two-view loss.

Ranking losses follow ``keras.losses.Circle``'s convention: ``y_true`` holds integer class
labels ``(b,)`` and ``y_pred`` the embeddings ``(b, d)``.  They compose a distance
(:mod:`keras_featreg.ops.distances`) with a miner (:mod:`keras_featreg.mining`).
"""

from keras_featreg.losses_ranking import (  # noqa: F401
    AngularLoss,
    ContrastiveLoss,
    NPairLoss,
    TripletLoss,
    angular_loss,
    angular_loss_bounds,
    contrastive_loss,
    contrastive_loss_bounds,
    npair_loss,
    npair_loss_bounds,
    triplet_loss,
    triplet_loss_bounds,
)
from keras_featreg.losses_vicreg import VICRegLoss, vicreg_loss, vicreg_terms  # noqa: F401
