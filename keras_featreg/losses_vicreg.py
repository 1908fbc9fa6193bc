"""Compatibility module: VICReg's two-view loss moved to :mod:`keras_featreg.losses`."""

from keras_featreg.losses._vicreg import VICRegLoss, vicreg_loss, vicreg_terms  # noqa: F401

__all__ = ["VICRegLoss", "vicreg_loss", "vicreg_terms"]
