"""Feature-embedding (activity) regularizers: SVMax, VICReg and spread-out.

Each class is a ``keras.regularizers.Regularizer`` that works as ``activity_regularizer=`` on
any layer, or through :class:`keras_featreg.layers.EmbeddingRegularization`.  The math lives
in :mod:`keras_featreg.ops`; these classes only hold configuration.

**Strength is exact.**  Keras >= 3.14 divides whatever an activity regularizer returns by the
batch size (``Layer.__call__``); Keras 3.0-3.13 does not.  These penalties are batch-level
statistics whose formula already has the strength it should have, so ``__call__`` returns
``penalty(x) * batch_size`` on Keras >= 3.14 and ``penalty(x)`` before: the value that reaches
``model.losses`` (and the training loss) is ``penalty(x)`` on every Keras version.  Call
:meth:`FeatureRegularizer.penalty` for the value of the formula; calling the regularizer
object directly gives what Keras expects from an activity regularizer (hence ``b`` times the
penalty on Keras >= 3.14).  They are meant for activations: used as ``kernel_regularizer``
they would be scaled by the kernel's first dimension on Keras >= 3.14 (Keras does not divide
weight regularizers, so there ``__call__``'s factor would be wrong).

All computations run in float32 when the layer computes in float16/bfloat16 (mixed
precision): no backend has a half-precision SVD, and batch statistics overflow in float16.
float64 activations are computed in float64.  A batch holding a NaN or an infinity gives a
NaN penalty (never a finite one), so a diverging model is not hidden.

**No static batch size needed (``model.export()``).**  The batch size is read as a tensor
(``ops.shape(x)[0]``, cast to float) wherever a Python int is not required, and a batch
dimension that is ``None`` (a ``tf.function`` signature) or *symbolic* is treated as unknown
(:func:`keras_featreg._utils.static_size`): shape-dependent choices (the Gram side, the
``"auto"`` methods) then take their dynamic-shape paths.  Symbolic dimensions are what
``model.export()`` traces with on JAX (``jax2tf`` with a ``"batch"`` dimension); before,
SVMax, VICReg and SpreadOut called ``int()`` or ``<`` on it and the export failed with
``InconclusiveDimensionOperation``.  Skipping the penalty at inference instead was
rejected: Keras 3 computes activity regularizers on every call, ``training=False``
included, and ``model.evaluate`` adds them to its loss, so that would change evaluation
numbers.  In an exported model the penalty is traced but is not an output of the serving
function, so it changes nothing that is served.
"""

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg.ops import moments, spectral



class FeatureRegularizer(keras.regularizers.Regularizer):
    """Base class: input checks, rank reduction, float32 math and the batch-size factor.

    Subclasses implement ``_penalty(e)`` on a float ``(b, d)`` tensor.

    Args:
        feature_reduction: how activations of rank > 2 become ``(b, d)``: ``"flatten"``
            (default; every activation is a feature) or ``"average"`` (global average over
            every axis but the batch and the last one: channels-last conv maps, sequences).
        cross_replica: under a ``tf.distribute`` strategy, compute the statistic on the
            global batch (all replicas' rows, all-gathered) instead of each replica's slice;
            gradients reach every replica's own rows.  A no-op on one device and on JAX
            (``keras.distribution.DataParallel`` already sees the global batch).
    """

    def __init__(self, feature_reduction="flatten", cross_replica=False):
        self.feature_reduction = _utils.check_choice(
            "feature_reduction", feature_reduction, spectral.FEATURE_REDUCTIONS
        )
        self.cross_replica = _utils.check_bool("cross_replica", cross_replica)

    def _prepare(self, x):
        x = _utils.as_float_tensor(x, name="x", min_rank=2)
        x = spectral.reduce_features(x, self.feature_reduction)
        return _backend.gather_replicas(x) if self.cross_replica else x

    def penalty(self, x):
        """The value of the regularizer's formula on a batch of activations ``x``.

        NaN when ``x`` holds a NaN or an infinity
        (:func:`keras_featreg._utils.propagate_nonfinite`).
        """
        return self._statistic(self._penalty, x)

    def _statistic(self, fn, x):
        """``fn`` of the prepared ``(b, d)`` batch, NaN when the batch is not finite."""
        e = self._prepare(x)
        return _utils.propagate_nonfinite(fn(e), e)

    def _penalty(self, e):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x):
        value = self.penalty(x)
        if _backend.keras_divides_activity_regularizers():
            value = value * ops.cast(ops.shape(x)[0], value.dtype)
        return value

    def get_config(self):
        return {"feature_reduction": self.feature_reduction, "cross_replica": self.cross_replica}


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class SVMax(FeatureRegularizer):
    """Singular value maximization (Taha et al., "SVMax", 2021).

    Bounded form (paper eq. 4, ``bounded=True``)::

        penalty = factor * exp((U - s_mu) / (U - L)),   in [factor, factor * e]

    Vanilla form (paper eq. 1, ``bounded=False``)::

        penalty = -factor * s_mu

    where ``s_mu = ||E||_* / d`` is the mean singular value of the embedding batch ``E``
    (``b x d``, rows L2-normalized when ``normalize=True``) and ``L = ||E||_F / d``,
    ``U = sqrt(min(b, d)) ||E||_F / d`` are its scale-free bounds (paper eqs. 2-3 for unit
    rows; correct for ``b < d`` too).  When ``min(b, d) = 1`` every matrix is rank one,
    ``s_mu = L = U`` and the bounded penalty is ``factor`` with zero gradient.

    Args:
        factor: the paper's lambda (>= 0). Paper: 1 (contrastive, N-pair), 0.1 (triplet),
            2 (angular) bounded; 0.01 vanilla for the GAN.
        bounded: eq. 4 (True) or eq. 1 (False).
        normalize: L2-normalize each row first (the paper's retrieval setting).
        method: nuclear-norm method, see :mod:`keras_featreg.ops.spectral` (``"auto"``
            picks matmul-only Newton-Schulz under TensorFlow XLA, the exact SVD for small
            matrices and the Gram path for large ones).
        feature_reduction: ``"flatten"`` or ``"average"`` for activations of rank > 2.
        iterations: Newton-Schulz steps (``method="newton_schulz"``, and ``"auto"`` under
            TensorFlow XLA); 6 by default, see :func:`keras_featreg.ops.spectral.polar_newton_schulz`.
        cross_replica: statistics over the global batch under ``tf.distribute`` (see
            :class:`FeatureRegularizer`).

    Example:

    >>> import keras, numpy as np
    >>> from keras_featreg.regularizers import SVMax
    >>> layer = keras.layers.Dense(16, activity_regularizer=SVMax(factor=1.0))
    >>> _ = layer(np.random.rand(32, 8).astype("float32"))
    >>> penalty = float(layer.losses[0])  # in [1, e]
    """

    def __init__(
        self,
        factor=1.0,
        bounded=True,
        normalize=True,
        method="auto",
        feature_reduction="flatten",
        iterations=spectral.DEFAULT_POLAR_ITERATIONS,
        cross_replica=False,
    ):
        super().__init__(feature_reduction, cross_replica)
        self.factor = _utils.check_number("factor", factor, minimum=0.0)
        self.bounded = _utils.check_bool("bounded", bounded)
        self.normalize = _utils.check_bool("normalize", normalize)
        self.method = _utils.check_choice("method", method, spectral.NUCLEAR_NORM_METHODS)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"`iterations` must be an integer >= 1. Received: iterations={iterations!r}")
        self.iterations = iterations

    def mean_singular_value(self, x):
        """``s_mu`` of ``x`` as this regularizer sees it (reduced, normalized)."""
        return self._statistic(
            lambda e: self._s_mu(spectral.l2_normalize_rows(e) if self.normalize else e), x
        )

    def _s_mu(self, e):
        return spectral.mean_singular_value(
            e,
            method=self.method,
            iterations=self.iterations,
        )

    def _penalty(self, e):
        if self.normalize:
            e = spectral.l2_normalize_rows(e)
        s_mu = self._s_mu(e)
        if not self.bounded:
            return -self.factor * s_mu
        lower, upper = spectral.mean_singular_value_bounds(e)
        return self.factor * ops.exp(spectral.bounded_position(s_mu, lower, upper))

    def get_config(self):
        return {
            **super().get_config(),
            "factor": self.factor,
            "bounded": self.bounded,
            "normalize": self.normalize,
            "method": self.method,
            "iterations": self.iterations,
        }


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class VICReg(FeatureRegularizer):
    """VICReg's single-view terms: variance and covariance (Bardes et al., ICLR 2022).

    ::

        penalty = variance_factor * v(Z) + covariance_factor * c(Z)
        v(Z) = (1/d) sum_j max(0, gamma - sqrt(Var(z_j) + epsilon))
        c(Z) = (1/d) sum_{i != j} Cov(Z)_ij^2

    with unbiased (co)variances.  Each term is usable alone: a factor of 0 skips its
    computation.  The official two-view loss weights the variance of each branch by
    ``25 / 2``; with this regularizer on a layer shared by both branches, pass
    ``variance_factor=12.5`` to reproduce it (or use :class:`keras_featreg.losses.VICRegLoss`).

    Args:
        variance_factor: weight of ``v`` (>= 0; official 25).
        covariance_factor: weight of ``c`` (>= 0; official 1).
        gamma: target standard deviation (> 0; official 1).
        epsilon: added to the variance under the square root (> 0; official 1e-4).
        covariance_method: ``"auto"``, ``"covariance"`` (d x d) or ``"gram"`` (n x n).
        feature_reduction: ``"flatten"`` or ``"average"`` for activations of rank > 2.
        cross_replica: statistics over the global batch under ``tf.distribute`` (the
            official code's ``FullGatherLayer``; see :class:`FeatureRegularizer`).

    Example:

    >>> import keras
    >>> from keras_featreg.regularizers import VICReg
    >>> layer = keras.layers.Dense(64, activity_regularizer=VICReg())
    """

    def __init__(
        self,
        variance_factor=25.0,
        covariance_factor=1.0,
        gamma=1.0,
        epsilon=1e-4,
        covariance_method="auto",
        feature_reduction="flatten",
        cross_replica=False,
    ):
        super().__init__(feature_reduction, cross_replica)
        self.variance_factor = _utils.check_number("variance_factor", variance_factor, minimum=0.0)
        self.covariance_factor = _utils.check_number(
            "covariance_factor", covariance_factor, minimum=0.0
        )
        self.gamma = _utils.check_number("gamma", gamma, minimum=0.0, strict=True)
        self.epsilon = _utils.check_number("epsilon", epsilon, minimum=0.0, strict=True)
        self.covariance_method = _utils.check_choice(
            "covariance_method", covariance_method, moments.COVARIANCE_METHODS
        )

    def variance_term(self, x):
        """``v(Z)`` of a batch of activations ``x`` (unweighted)."""
        return self._statistic(
            lambda z: moments.variance_penalty(z, self.gamma, self.epsilon), x
        )

    def covariance_term(self, x):
        """``c(Z)`` of a batch of activations ``x`` (unweighted)."""
        return self._statistic(
            lambda z: moments.covariance_penalty(z, self.covariance_method), x
        )

    def _penalty(self, z):
        total = ops.zeros((), dtype=z.dtype)
        if self.variance_factor:
            total = total + self.variance_factor * moments.variance_penalty(
                z, self.gamma, self.epsilon
            )
        if self.covariance_factor:
            total = total + self.covariance_factor * moments.covariance_penalty(
                z, self.covariance_method
            )
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "variance_factor": self.variance_factor,
            "covariance_factor": self.covariance_factor,
            "gamma": self.gamma,
            "epsilon": self.epsilon,
            "covariance_method": self.covariance_method,
        }


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class SpreadOut(FeatureRegularizer):
    """Spread-out / global orthogonal regularization (Zhang et al., ICCV 2017), label-free.

    ::

        penalty = factor * [ M1^2 + max(0, M2 - 1/d) ]
        M1 = mean_{i != j} e_i . e_j,   M2 = mean_{i != j} (e_i . e_j)^2

    over all ``b (b - 1)`` ordered pairs of distinct rows (L2-normalized when
    ``normalize=True``).  The original pairs each anchor with a negative of another class;
    without labels every other sample of the batch stands in for the negative.  For
    ``b d``-dimensional uniformly spread unit vectors ``M1 = 0`` and ``M2 = 1/d``, so the
    penalty is 0.  A batch of one row has no pair: the penalty is 0.  Computed from
    ``||sum_i e_i||^2`` and ``||E^T E||_F^2`` (or ``||E E^T||_F^2``, whichever side is smaller).

    Args:
        factor: the weight alpha (>= 0; 1 in the SVMax paper's baseline).
        normalize: L2-normalize rows first (the formulation assumes unit vectors).
        feature_reduction: ``"flatten"`` or ``"average"`` for activations of rank > 2.
        cross_replica: statistics over the global batch under ``tf.distribute`` (see
            :class:`FeatureRegularizer`).

    Example:

    >>> import keras
    >>> from keras_featreg.regularizers import SpreadOut
    >>> layer = keras.layers.Dense(128, activity_regularizer=SpreadOut(1.0))
    """

    def __init__(self, factor=1.0, normalize=True, feature_reduction="flatten",
                 cross_replica=False):
        super().__init__(feature_reduction, cross_replica)
        self.factor = _utils.check_number("factor", factor, minimum=0.0)
        self.normalize = _utils.check_bool("normalize", normalize)

    def _penalty(self, e):
        if self.normalize:
            e = spectral.l2_normalize_rows(e)
        b = ops.cast(ops.shape(e)[0], e.dtype)
        d = ops.cast(ops.shape(e)[1], e.dtype)
        sq_norms = ops.sum(ops.square(e), axis=1)
        total = ops.sum(e, axis=0)
        pairs = ops.maximum(b * (b - 1.0), 1.0)
        m1 = (ops.sum(ops.square(total)) - ops.sum(sq_norms)) / pairs
        b_static, d_static = _utils.static_dim(e, 0), _utils.static_dim(e, 1)
        wide = b_static is not None and d_static is not None and b_static < d_static
        gram = ops.matmul(e, ops.transpose(e)) if wide else ops.matmul(ops.transpose(e), e)
        m2 = (ops.sum(ops.square(gram)) - ops.sum(ops.square(sq_norms))) / pairs
        has_pairs = ops.cast(b > 1.0, e.dtype)
        return has_pairs * self.factor * (ops.square(m1) + ops.relu(m2 - 1.0 / d))

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "normalize": self.normalize}
