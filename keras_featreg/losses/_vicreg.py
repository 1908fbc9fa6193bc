"""VICReg's two-view loss (Bardes, Ponce & LeCun, ICLR 2022)."""

import keras
import numpy as np

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg.losses._base import BatchLoss
from keras_featreg.ops import moments

_PACKAGE = "keras_featreg"


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
    terms = {
        "invariance": moments.invariance_penalty(z_a, z_b),
        "variance": 0.5 * moments.variance_penalty(z_a, gamma, epsilon)
        + 0.5 * moments.variance_penalty(z_b, gamma, epsilon),
        "covariance": moments.covariance_penalty(z_a, covariance_method)
        + moments.covariance_penalty(z_b, covariance_method),
    }
    finite = _utils.all_finite(z_a, z_b)
    return {name: _utils.nan_unless(finite, term) for name, term in terms.items()}


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


def vicreg_loss(z_a, z_b, invariance_factor=25.0, variance_factor=25.0,
                covariance_factor=1.0, gamma=1.0, epsilon=1e-4, covariance_method="auto",
                cross_replica=False):
    """VICReg loss of two batches of embeddings, as the official code computes it.

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
    terms = vicreg_terms(z_a, z_b, gamma, epsilon, covariance_method, cross_replica)
    return (invariance_factor * terms["invariance"] + variance_factor * terms["variance"]
            + covariance_factor * terms["covariance"])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class VICRegLoss(BatchLoss):
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
        cross_replica: compute the loss on the global batch under a ``tf.distribute``
            strategy (all-gather of both views).  Either way, like every Keras loss, the
            value returned inside a replica of a ``tf.distribute`` strategy is divided by
            the number of replicas (Keras sums the replicas' gradients).  No-op on JAX.

    Example (custom ``train_step``, TensorFlow backend)::

        loss_fn = VICRegLoss()
        with tf.GradientTape() as tape:
            loss = loss_fn(expander(encoder(view_a)), expander(encoder(view_b)))
    """

    def __init__(self, invariance_factor=25.0, variance_factor=25.0, covariance_factor=1.0,
                 gamma=1.0, epsilon=1e-4, covariance_method="auto", name="vicreg_loss",
                 reduction="sum_over_batch_size", dtype=None, cross_replica=False):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.invariance_factor = _utils.check_number("invariance_factor", invariance_factor, 0.0)
        self.variance_factor = _utils.check_number("variance_factor", variance_factor, 0.0)
        self.covariance_factor = _utils.check_number("covariance_factor", covariance_factor, 0.0)
        self.gamma = _utils.check_number("gamma", gamma, 0.0, strict=True)
        self.epsilon = _utils.check_number("epsilon", epsilon, 0.0, strict=True)
        self.covariance_method = _utils.check_choice(
            "covariance_method", covariance_method, moments.COVARIANCE_METHODS)
        self.cross_replica = bool(cross_replica)

    def call(self, y_true, y_pred):
        return vicreg_loss(y_true, y_pred, self.invariance_factor, self.variance_factor,
                           self.covariance_factor, self.gamma, self.epsilon,
                           self.covariance_method, self.cross_replica)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            return super().__call__(y_true, y_pred, sample_weight)  # raises the clear error
        return _backend.scale_loss_for_replicas(self.call(y_true, y_pred))

    def get_config(self):
        return {
            "name": self.name,
            "invariance_factor": self.invariance_factor,
            "variance_factor": self.variance_factor,
            "covariance_factor": self.covariance_factor,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "covariance_method": self.covariance_method,
            "cross_replica": self.cross_replica,
        }
