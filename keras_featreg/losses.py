"""Losses: ranking losses for metric learning and VICReg's two-view loss.

Ranking losses follow ``keras.losses.Circle``'s convention: ``y_true`` holds integer class
labels ``(b,)`` and ``y_pred`` the embeddings ``(b, d)``.
"""

from keras_featreg.losses_vicreg import VICRegLoss, vicreg_loss, vicreg_terms  # noqa: F401
