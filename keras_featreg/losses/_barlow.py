"""Barlow Twins' two-view loss (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021)."""

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg.losses._base import PACKAGE
from keras_featreg.losses._vicreg import TwoViewLoss
from keras_featreg.ops import moments


def barlow_twins_loss(z_a, z_b, **kwargs):
    """:class:`BarlowTwinsLoss` ``(**kwargs)`` of two batches of embeddings ``(n, d)``.

    As the official code:

    ::

        C = bn(z_a)^T bn(z_b) / n            # bn: per-dimension standardization over the
                                             # batch, biased variance, eps = 1e-5, no affine
        loss = sum_i (1 - C_ii)^2 + lambda_ * sum_{i != j} C_ij^2

    (``facebookresearch/barlowtwins``, ``main.py``: ``BatchNorm1d(affine=False)``,
    ``c.div_(batch_size)``, ``on_diag + lambd * off_diag``; ``lambd = 0.0051``). With
    ``cross_replica=True`` both views are all-gathered under a ``tf.distribute`` strategy
    and ``n`` is the global batch (the official code's synchronized batch norm and
    all-reduce of ``c``). NaN when either view holds a NaN or an infinity.

    Example:

    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> bool(float(barlow_twins_loss(z, z)) < float(barlow_twins_loss(z, -z)))
    True
    """
    return BarlowTwinsLoss(**kwargs).call(z_a, z_b)


def barlow_twins_loss_bounds(dim, lambda_=0.0051):
    """(lower, upper) of :func:`barlow_twins_loss` for embeddings of dimension `dim`.

    Each ``C_ij`` is a correlation coefficient shrunk by ``eps``, so ``|C_ij| <= 1``:
    ``0 <= loss <= 4 d + lambda_ d (d - 1)``, whatever the inputs (normalized or not).
    """
    dim = _utils.check_int("dim", dim)
    lambda_ = _utils.check_number("lambda_", lambda_, 0.0)
    return (0.0, 4.0 * dim + lambda_ * dim * (dim - 1))


@keras.saving.register_keras_serializable(package=PACKAGE)
class BarlowTwinsLoss(TwoViewLoss):
    """Barlow Twins' two-view loss, called as ``loss(z_a, z_b)``.

    Formula (Zbontar et al., ICML 2021, eq. 1; official ``facebookresearch/barlowtwins``)::

        C = bn(z_a)^T bn(z_b) / n
        loss = sum_i (1 - C_ii)^2 + lambda_ * sum_{i != j} C_ij^2

    where ``bn`` standardizes every dimension over the batch (biased variance,
    ``epsilon``, no affine parameters). See :func:`barlow_twins_loss`. The loss is a
    batch statistic: ``sample_weight`` and a non-default ``reduction`` are refused.
    A batch of one sample (or of identical rows) gives ``C = 0``, loss ``d``, finite
    gradients.

    Args:
        lambda_: weight of the redundancy-reduction (off-diagonal) term, >= 0.
            Defaults to `0.0051` (the paper, for ``d = 8192``).
        epsilon: the batch-norm epsilon, > 0. Defaults to `1e-5` (``BatchNorm1d``).
        **kwargs: ``cross_replica`` (all-gather of both views), ``reduction``,
            ``name``, ``dtype``: see :class:`~keras_featreg.losses.BatchLoss`.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.losses import BarlowTwinsLoss
    >>> z = np.random.default_rng(0).normal(size=(256, 3)).astype("float32")
    >>> round(float(BarlowTwinsLoss()(z, z)), 4)  # C = I up to eps: nearly 0
    0.0
    >>> BarlowTwinsLoss().bounds(256) is None  # depends on d: see barlow_twins_loss_bounds
    True
    """

    config_keys = ("lambda_", "epsilon")

    def __init__(self, lambda_=0.0051, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.lambda_ = _utils.check_number("lambda_", lambda_, 0.0)
        self.epsilon = _utils.check_positive("epsilon", epsilon)

    def compute_loss(self, z_a, z_b):
        c = moments.cross_correlation(z_a, z_b, self.epsilon)
        diag = ops.diagonal(c)
        on_diag = ops.sum(ops.square(1.0 - diag))
        off_diag = ops.sum(ops.square(c)) - ops.sum(ops.square(diag))
        return on_diag + self.lambda_ * off_diag

    def bounds(self, batch_size):
        """None: the range ``[0, 4 d + lambda_ d (d - 1)]`` depends on the dimension ``d``,
        not on the batch size (see :func:`barlow_twins_loss_bounds`)."""
        return None
