"""Backend-agnostic math of keras-featreg, written once in ``keras.ops``.

* :mod:`~keras_featreg.ops.spectral`: singular values, nuclear norm (exact, Gram and
  Newton-Schulz paths), mean singular value and its bounds.
* :mod:`~keras_featreg.ops.moments`: per-dimension standard deviation, VICReg's variance
  and covariance terms (d x d or Gram form).
* :mod:`~keras_featreg.ops.pairwise`: pairwise distances and similarities, numerically
  safe at zero (the functions behind :mod:`keras_featreg.distances`).
* :mod:`~keras_featreg.ops.labels`: the label check of every loss, miner and metric, and
  the positive/negative pair masks.
* :mod:`~keras_featreg.ops.masked`: min, max, mean and log-sum-exp over a mask.
"""

from keras_featreg.ops import labels, masked, moments, pairwise, spectral  # noqa: F401
