"""Backend-agnostic math of keras-featreg, written once in ``keras.ops``.

* :mod:`~keras_featreg.ops.spectral`: singular values, nuclear norm (exact, Gram and
  Newton-Schulz paths), mean singular value and its bounds.
* :mod:`~keras_featreg.ops.moments`: per-dimension standard deviation, VICReg's variance
  and covariance terms (d x d or Gram form).
* :mod:`~keras_featreg.ops.distances`: pairwise distances, numerically safe at zero.
"""

from keras_featreg.ops import distances, moments, spectral  # noqa: F401
