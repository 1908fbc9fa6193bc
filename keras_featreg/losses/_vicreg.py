"""VICReg's two-view loss (Bardes, Ponce & LeCun, ICLR 2022)."""

import keras
import numpy as np

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg.losses._base import PACKAGE, BatchLoss
from keras_featreg.ops import moments


def vicreg_terms(z_a, z_b, gamma=1.0, epsilon=1e-4, covariance_method="auto",
                 cross_replica=False):
    """The unweighted VICReg terms of two views, as a dict of scalar tensors.

    ``invariance`` = MSE over the ``n d`` elements, ``variance`` = ``v(Z_a)/2 + v(Z_b)/2``
    (the official code's per-branch halving), ``covariance`` = ``c(Z_a) + c(Z_b)``.
    With ``cross_replica=True`` the terms are computed on the global batch under a
    ``tf.distribute`` strategy (both views all-gathered, as the official ``FullGatherLayer``).
    Every term is NaN when either view holds a NaN or an infinity.

    Raises:
        ValueError: when ``z_a`` and ``z_b`` do not have the same static shape
            ``(batch_size, dim)``, or are not float matrices.
    """
    z_a, z_b = _views(z_a, z_b)
    if cross_replica:
        z_a, z_b = _backend.gather_replicas([z_a, z_b])
    finite = _utils.all_finite(z_a, z_b)
    terms = _terms(z_a, z_b, gamma, epsilon, covariance_method)
    return {name: _utils.nan_unless(finite, term) for name, term in terms.items()}


def _terms(z_a, z_b, gamma, epsilon, covariance_method):
    return {
        "invariance": moments.invariance_penalty(z_a, z_b),
        "variance": 0.5 * moments.variance_penalty(z_a, gamma, epsilon)
        + 0.5 * moments.variance_penalty(z_b, gamma, epsilon),
        "covariance": moments.covariance_penalty(z_a, covariance_method)
        + moments.covariance_penalty(z_b, covariance_method),
    }


def _views(z_a, z_b):
    """Both views as float tensors of rank 2 and the same static shape.

    Raises:
        ValueError: naming both arguments and both shapes when the ranks or any
            statically known dimension differ (a different batch size included).
    """
    z_a, z_b = (x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
                for x in (z_a, z_b))
    _utils.check_same_shape("z_a", z_a, "z_b", z_b)
    return (_utils.as_float_tensor(z_a, name="z_a", min_rank=2, max_rank=2),
            _utils.as_float_tensor(z_b, name="z_b", min_rank=2, max_rank=2))


def vicreg_loss(z_a, z_b, **kwargs):
    """:class:`VICRegLoss` ``(**kwargs)`` of two batches of embeddings, as a function.

    As the official code computes it:

    ::

        loss = invariance_factor * mse(Z_a, Z_b)
             + variance_factor * (v(Z_a) / 2 + v(Z_b) / 2)
             + covariance_factor * (c(Z_a) + c(Z_b))

    The paper's eq. writes ``mu [v(Z) + v(Z')]``; the official implementation (and
    pytorch-metric-learning, lightly) halve each branch's variance term, which these
    defaults reproduce: ``variance_factor=25`` here equals the paper's ``mu = 12.5``.

    ``cross_replica=True``: under a ``tf.distribute`` strategy every replica returns the loss
    of the global batch (see :func:`vicreg_terms`); unscaled, like the formula.
    """
    return VICRegLoss(**kwargs).call(z_a, z_b)


class TwoViewLoss(BatchLoss):
    """Base of the two-view losses, called as ``loss(z_a, z_b)``: both views validated
    (same shape, float), gathered over replicas with ``cross_replica``, NaN when either
    holds a NaN or an infinity. A subclass implements ``compute_loss(z_a, z_b)``."""

    def call(self, y_true, y_pred):
        z_a, z_b = _views(y_true, y_pred)
        if self.cross_replica:
            z_a, z_b = _backend.gather_replicas([z_a, z_b])
        return _utils.nan_unless(_utils.all_finite(z_a, z_b), self.compute_loss(z_a, z_b))

    def compute_loss(self, z_a, z_b):
        raise NotImplementedError

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            return super().__call__(y_true, y_pred, sample_weight)  # raises the clear error
        # The value keeps the compute dtype (float64 views give a float64 loss).
        return _backend.scale_loss_for_replicas(self.call(y_true, y_pred))


@keras.saving.register_keras_serializable(package=PACKAGE)
class VICRegLoss(TwoViewLoss):
    """VICReg's two-view loss, called as ``loss(z_a, z_b)``.

    See :func:`vicreg_loss` for the formula. Defaults reproduce the official code
    (``25 * mse + 25 * (v(Z_a)/2 + v(Z_b)/2) + 1 * (c(Z_a) + c(Z_b))``). The loss is a
    batch statistic: ``sample_weight`` and any ``reduction`` but Keras's default are
    refused with a clear error (:class:`~keras_featreg.losses.BatchLoss`).

    Args:
        invariance_factor: lambda (>= 0).
        variance_factor: mu (>= 0), applied to the mean of both branches' variance terms.
        covariance_factor: nu (>= 0).
        gamma: target standard deviation (> 0).
        epsilon: variance epsilon (> 0).
        covariance_method: ``"auto"``, ``"covariance"`` or ``"gram"``.
        **kwargs: ``cross_replica`` (all-gather of both views), ``reduction``,
            ``name``, ``dtype``: see :class:`~keras_featreg.losses.BatchLoss`.

    Example (custom ``train_step``, TensorFlow backend)::

        loss_fn = VICRegLoss()
        with tf.GradientTape() as tape:
            loss = loss_fn(expander(encoder(view_a)), expander(encoder(view_b)))
    """

    config_keys = ("invariance_factor", "variance_factor", "covariance_factor", "gamma",
                   "epsilon", "covariance_method")

    def __init__(self, invariance_factor=25.0, variance_factor=25.0, covariance_factor=1.0,
                 gamma=1.0, epsilon=1e-4, covariance_method="auto", **kwargs):
        super().__init__(**kwargs)
        self.invariance_factor = _utils.check_number("invariance_factor", invariance_factor, 0.0)
        self.variance_factor = _utils.check_number("variance_factor", variance_factor, 0.0)
        self.covariance_factor = _utils.check_number("covariance_factor", covariance_factor, 0.0)
        self.gamma = _utils.check_positive("gamma", gamma)
        self.epsilon = _utils.check_positive("epsilon", epsilon)
        self.covariance_method = _utils.check_choice(
            "covariance_method", covariance_method, moments.COVARIANCE_METHODS)

    def compute_loss(self, z_a, z_b):
        terms = _terms(z_a, z_b, self.gamma, self.epsilon, self.covariance_method)
        return (self.invariance_factor * terms["invariance"]
                + self.variance_factor * terms["variance"]
                + self.covariance_factor * terms["covariance"])
