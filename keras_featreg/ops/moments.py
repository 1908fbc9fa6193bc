"""Moment primitives: per-dimension standard deviation and VICReg's variance/covariance terms.

VICReg (Bardes, Ponce & LeCun, ICLR 2022), on a batch ``Z`` of shape ``(n, d)``:

* variance ``v(Z) = (1/d) sum_j max(0, gamma - sqrt(Var(z_j) + eps))`` with the unbiased
  variance (divisor ``n - 1``); official constants ``gamma = 1``, ``eps = 1e-4``;
* covariance ``C = (Z - mean)^T (Z - mean) / (n - 1)`` and
  ``c(Z) = (1/d) sum_{i != j} C_ij^2`` (divided by ``d``, not ``d (d - 1)``).

For ``n = 1`` the unbiased variance is undefined; the divisor is clamped to
``max(n - 1, 1)`` so a batch of one gives variance 0 (the variance term is then ``gamma``,
its maximum, with a finite gradient) instead of NaN.

Covariance methods (``method=``): ``"covariance"`` forms the ``d x d`` matrix as the
official code does; ``"gram"`` uses ``||Zc^T Zc||_F = ||Zc Zc^T||_F`` and the ``n x n``
Gram matrix, with the diagonal ``sum_j C_jj^2`` from the per-dimension variances; both are
exact.  ``"auto"`` picks ``"gram"`` when ``n < d``.
"""

from keras import ops

from keras_featreg import _utils

COVARIANCE_METHODS = ("auto", "covariance", "gram")


def _n_minus_one(z):
    n = ops.cast(ops.shape(z)[0], z.dtype)
    return ops.maximum(n - 1.0, 1.0)


def center(z):
    z = ops.convert_to_tensor(z)
    return z - _utils.mean(z, axis=0, keepdims=True)


def variance(z):
    """Unbiased per-dimension variance (divisor ``max(n - 1, 1)``), shape ``(d,)``."""
    z = ops.convert_to_tensor(z)
    zc = center(z)
    return ops.sum(ops.square(zc), axis=0) / _n_minus_one(z)


def std(z, epsilon=1e-4):
    """VICReg's ``S(z_j, eps) = sqrt(Var(z_j) + eps)`` per dimension, shape ``(d,)``."""
    return ops.sqrt(variance(z) + epsilon)


def variance_penalty(z, gamma=1.0, epsilon=1e-4):
    """VICReg variance term ``(1/d) sum_j max(0, gamma - sqrt(Var(z_j) + eps))``."""
    return _utils.mean(ops.relu(gamma - std(z, epsilon)))


def resolve_covariance_method(z, method="auto"):
    if method != "auto":
        return method
    n, d = _utils.static_dim(z, 0), _utils.static_dim(z, 1)
    if n is not None and d is not None and n < d:
        return "gram"
    return "covariance"


def covariance_penalty(z, method="auto"):
    """VICReg covariance term ``(1/d) sum_{i != j} C_ij^2``.

    Args:
        z: ``(n, d)`` float tensor.
        method: ``"auto"``, ``"covariance"`` (the ``d x d`` matrix) or ``"gram"`` (the
            ``n x n`` Gram matrix; ``O(n^2 d)`` instead of ``O(n d^2)``).
    """
    method = resolve_covariance_method(z, method)
    zc = center(z)
    denom = _n_minus_one(z)
    d = ops.cast(ops.shape(z)[1], z.dtype)
    if method == "covariance":
        cov = ops.matmul(ops.transpose(zc), zc) / denom
        dim = cov.shape[0] if cov.shape[0] is not None else ops.shape(cov)[0]
        off = cov * (1.0 - ops.eye(dim, dtype=cov.dtype))
        return ops.sum(ops.square(off)) / d
    if method == "gram":
        gram = ops.matmul(zc, ops.transpose(zc)) / denom
        diag = ops.sum(ops.square(zc), axis=0) / denom
        if _utils.static_dim(z, 1) == 1:
            return ops.zeros((), dtype=z.dtype)  # no off-diagonal entry
        # ||C||_F^2 - sum_j C_jj^2: a difference of sums, clamped against rounding below 0.
        return ops.relu(ops.sum(ops.square(gram)) - ops.sum(ops.square(diag))) / d
    raise ValueError(
        f"`method` must be one of {list(COVARIANCE_METHODS)}. Received: method={method!r}"
    )


def invariance_penalty(z_a, z_b):
    """VICReg invariance term as the official code computes it: MSE over ``n d`` elements."""
    return _utils.mean(ops.square(z_a - z_b))


def standardize(z, epsilon=1e-5):
    """Batch standardization ``(z - mean) / sqrt(Var_biased(z) + eps)`` per dimension.

    ``torch.nn.BatchNorm1d(d, affine=False)`` in training mode, as the official Barlow
    Twins code (Zbontar et al., ICML 2021) applies to each view: the biased variance
    (divisor ``n``), ``eps = 1e-5``. A constant column (``n = 1``, identical rows) maps to
    0 with a finite gradient.
    """
    z = ops.convert_to_tensor(z)
    zc = center(z)
    var = _utils.mean(ops.square(zc), axis=0, keepdims=True)
    return zc / ops.sqrt(var + epsilon)


def cross_correlation(z_a, z_b, epsilon=1e-5):
    """Barlow Twins' ``C = bn(z_a)^T bn(z_b) / n``, shape ``(d, d)`` (see :func:`standardize`)."""
    n = ops.cast(ops.shape(z_a)[0], z_a.dtype)
    return ops.matmul(ops.transpose(standardize(z_a, epsilon)), standardize(z_b, epsilon)) / n
