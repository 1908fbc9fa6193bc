"""keras-featreg: feature-embedding regularizers and metric learning for Keras 3."""

from keras_featreg import (  # noqa: F401
    backend,
    distances,
    layers,
    losses,
    metrics,
    miners,
    ops,
    reducers,
    regularizers,
)
from keras_featreg.layers import EmbeddingRegularization, attach_regularizer  # noqa: F401
from keras_featreg.regularizers import SVMax, SpreadOut, VICReg  # noqa: F401

__version__ = "0.1.0"
