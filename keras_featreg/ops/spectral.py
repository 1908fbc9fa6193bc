"""Spectral primitives: singular values, nuclear norm, mean singular value and its bounds.

Every SVMax quantity in the library (regularizer, metrics, callback, benchmarks) comes from
here.  Notation follows the SVMax paper (Taha et al., 2021): an embedding batch
``E`` of shape ``(b, d)``, ``k = min(b, d)``, singular values ``s_1 >= ... >= s_k``.

* ``s_mu = ||E||_* / d`` (paper eq. 1; the paper divides by ``d``).
* Scale-free bounds, valid for every ``b``, ``d`` and every ``E``:
  ``||E||_F <= ||E||_* <= sqrt(k) ||E||_F``, hence ``L = ||E||_F / d`` and
  ``U = sqrt(k) ||E||_F / d``.  With L2-normalized rows ``||E||_F = sqrt(b)`` and these are
  exactly the paper's eqs. 2-3 (``L = sqrt(b)/d``, ``U = sqrt(b d / max(b, d)) sqrt(b)/d``);
  for ``b < d`` they are the appendix B.2 bounds rescaled by ``b/d``.  Because ``s_mu``,
  ``L`` and ``U`` are divided by the same number, the ratio ``(U - s_mu)/(U - L)`` used by
  eq. 4 is the same whichever divisor (``d`` or ``k``) is used.  The official SVMax code
  mixes the two (``s_mu`` over ``k``, bounds over ``d``), which lets ``s_mu`` exceed ``U``
  for ``b < d``; this module never does.

Nuclear-norm methods (``method=``):

``"svd"``
    Exact: ``sum(s)`` from ``keras.ops.svd``, with the gradient ``U V^T`` formed from the
    singular vectors (directions with ``s <= 8 eps s_1`` masked) instead of differentiating
    the SVD: finite at every rank on every backend (JAX's SVD gradient is NaN at zero).  Fast on LAPACK (TensorFlow without XLA, JAX on CPU/GPU) for small
    matrices, but TensorFlow's XLA lowering is a slow Jacobi iteration (about 1 s for
    144 x 128 forward+backward on 2 CPU cores).
``"gram"``
    Eigen-decomposition of the ``k x k`` Gram matrix of the smaller side, then the polar
    factor ``P = E V diag(1/s) V^T``.  The value is ``<E, P>`` with the gradient ``P``
    (``d||E||_*/dE = U V^T = P``).  Directions whose singular value is below
    ``sqrt(eps) * s_1`` (float32: 3.5e-4 s_1) are dropped, which removes the squared-
    condition-number noise of the Gram matrix and keeps the gradient finite at any rank.
    Cost ``O(b d k)`` matmuls plus a ``k x k`` eigh; several times faster than the SVD for
    wide or tall matrices.  Not for TensorFlow XLA (eigh is also Jacobi there).
``"newton_schulz"``
    Matmul-only polar iteration (no decomposition at all): ``X <- X p(X^T X)`` starting
    from ``E / ||E^T E||_F^{1/2}`` (which bounds ``s_1`` from above), ``fast_iterations``
    steps of the quintic of Jordan et al. (2024, "Muon"; grows small singular values 3.44x
    per step) then ``refine_iterations`` steps of the cubic Newton-Schulz map
    ``1.5x - 0.5x^3`` that converges to exactly 1.  Value ``<E, P>``, gradient ``P``.
    The value under-estimates singular values smaller than about ``s_1 / 3.44^fast /
    1.5^refine`` (about 2e-4 s_1 with the defaults 5 + 4); see ``benchmarks/bench_spectral.py`` for
    the accuracy on healthy, half-collapsed and rank-one embeddings.  When
    ``max(b, d) >= 2 min(b, d)`` the same iteration runs on the ``k x k`` Gram matrix
    (:func:`polar_newton_schulz_gram`), several times cheaper.
``"auto"``
    ``"newton_schulz"`` while tracing a TensorFlow XLA function, otherwise ``"svd"`` when
    ``b d k <= 2**18`` (about 64 x 64: tiny, the exact SVD is as cheap as anything) and
    ``"gram"`` above.
"""

import math

from keras import ops

from keras_featreg import backend as _backend
from keras_featreg.ops import distances

NUCLEAR_NORM_METHODS = ("auto", "svd", "gram", "newton_schulz")
FEATURE_REDUCTIONS = ("flatten", "average")

# Quintic coefficients of Jordan et al. (2024), "Muon: an optimizer for hidden layers".
_FAST_COEFFS = (3.4445, -4.7750, 2.0315)
_AUTO_SVD_MAX_WORK = 2**18


def l2_normalize_rows(x, epsilon=1e-12):
    """Divides each row by its L2 norm (:func:`keras_featreg.ops.distances.l2_normalize`)."""
    return distances.l2_normalize(x, axis=-1, epsilon=epsilon)


def reduce_features(x, mode="flatten"):
    """Reduces activations of rank > 2 to a ``(batch, features)`` matrix.

    Args:
        x: tensor of rank >= 2; axis 0 is the batch.
        mode: ``"flatten"`` keeps every activation (a conv map ``(b, h, w, c)`` becomes
            ``(b, h*w*c)``); ``"average"`` averages every axis but the first and the last
            (global average pooling of a channels-last map or a sequence: ``(b, c)``).
    """
    if len(x.shape) == 2:
        return x
    if mode == "average":
        return ops.mean(x, axis=tuple(range(1, len(x.shape) - 1)))
    feature_shape = x.shape[1:]
    if all(dim is not None for dim in feature_shape):
        return ops.reshape(x, (-1, int(math.prod(feature_shape))))
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _dims(x):
    b, d = x.shape[0], x.shape[1]
    return (None if b is None else int(b)), (None if d is None else int(d))


def _eps(dtype):
    return 2.0**-52 if str(dtype).endswith("float64") else 2.0**-23


def _wide(x):
    """True when the Gram of the rows (b x b) is the small one. Static when possible."""
    b, d = _dims(x)
    if b is not None and d is not None:
        return b < d
    return None


def frobenius_norm(x):
    """``||x||_F``, with a zero (not NaN) gradient at ``x = 0``."""
    sq = ops.sum(ops.square(x))
    return ops.where(sq > 1e-30, ops.sqrt(ops.maximum(sq, 1e-30)), ops.zeros_like(sq))


def singular_values(x):
    """Singular values of a ``(b, d)`` matrix (``k = min(b, d)`` of them), descending."""
    return ops.svd(x, compute_uv=False)


def _straight_through(value, surrogate):
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass."""
    return ops.stop_gradient(value - surrogate) + surrogate


def _polar_gram(x):
    """Polar factor ``U V^T`` of ``x`` from an eigh of the smaller Gram matrix."""
    wide = _wide(x)
    if wide is None:  # dynamic batch: decide at run time
        b = ops.shape(x)[0]
        d = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        return ops.cond(b < d, lambda: _polar_gram_side(x, True), lambda: _polar_gram_side(x, False))
    return _polar_gram_side(x, wide)


def _polar_gram_side(x, wide):
    x = ops.stop_gradient(x)
    gram = ops.matmul(x, ops.transpose(x)) if wide else ops.matmul(ops.transpose(x), x)
    eigvals, eigvecs = ops.eigh(gram)
    s = ops.sqrt(ops.maximum(eigvals, 0.0))
    tol = ops.max(s) * math.sqrt(_eps(x.dtype))
    keep = s > tol
    inv = ops.where(keep, 1.0 / ops.where(keep, s, ops.ones_like(s)), ops.zeros_like(s))
    m = ops.matmul(eigvecs * inv[None, :], ops.transpose(eigvecs))
    return ops.matmul(m, x) if wide else ops.matmul(x, m)


def polar_newton_schulz(x, fast_iterations=5, refine_iterations=4):
    """Polar factor ``U V^T`` of ``x`` by matmul-only Newton-Schulz iterations.

    Args:
        x: ``(b, d)`` matrix.
        fast_iterations: quintic steps (each grows small singular values 3.44x).
        refine_iterations: cubic steps ``1.5x - 0.5x^3`` (quadratic convergence to 1).
    """
    x = ops.stop_gradient(x)
    wide = _wide(x)
    if wide is None:
        wide = False  # dynamic batch: iterate on the d x d side (always valid)
    if wide:
        x = ops.transpose(x)
    k = x.shape[1]
    eye = ops.eye(k, dtype=x.dtype)
    a0 = ops.matmul(ops.transpose(x), x)
    # ||X^T X||_F^{1/2} = (sum s^4)^{1/4} >= s_1: every scaled singular value is <= 1.
    scale = ops.sqrt(ops.sqrt(ops.sum(ops.square(a0))))
    scale = ops.maximum(scale, 1e-18)  # 1e-36 still a normal float32
    y = x / scale
    a = a0 / ops.square(scale)
    ca, cb, cc = _FAST_COEFFS
    for i in range(fast_iterations + refine_iterations):
        if i > 0:
            a = ops.matmul(ops.transpose(y), y)
        if i < fast_iterations:
            m = ca * eye + cb * a + cc * ops.matmul(a, a)
        else:
            m = 1.5 * eye - 0.5 * a
        y = ops.matmul(y, m)
    return ops.transpose(y) if wide else y


def polar_newton_schulz_gram(x, fast_iterations=5, refine_iterations=4, shift=1e-6):
    """Polar factor by Newton-Schulz iterations on the ``k x k`` Gram matrix (``k = min(b, d)``).

    Same polynomials as :func:`polar_newton_schulz`, but every step is a ``k x k`` matmul:
    with ``G`` the Gram matrix of the smaller side, ``Y <- T Y T``, ``M <- M T`` where
    ``T = p(Y)``, and finally ``P = E M / sqrt(||G||_F)``.  Iterating on ``G`` squares the
    condition number: rounding leaves eigenvalues of order ``-eps`` that the iteration
    would amplify, so ``Y`` starts at ``G / ||G||_F + shift * I``.  The shift biases a
    singular value ``s`` by a relative ``shift ||G||_F / (2 s^2)`` (1e-6 relative to the
    largest eigenvalue scale: below 1e-4 for singular values above 1 % of ``s_1``); true
    null directions of ``E`` contribute nothing because ``P = E M``.  Several times cheaper
    than the direct iteration when ``max(b, d) >= 2 min(b, d)``.
    """
    x = ops.stop_gradient(x)
    wide = _wide(x)
    if wide is None:
        wide = False
    gram = ops.matmul(x, ops.transpose(x)) if wide else ops.matmul(ops.transpose(x), x)
    k = gram.shape[0]
    eye = ops.eye(k, dtype=x.dtype)
    c2 = ops.maximum(ops.sqrt(ops.sum(ops.square(gram))), 1e-36)
    y = gram / c2 + shift * eye
    m = eye
    ca, cb, cc = _FAST_COEFFS
    for i in range(fast_iterations + refine_iterations):
        if i < fast_iterations:
            t = ca * eye + cb * y + cc * ops.matmul(y, y)
        else:
            t = 1.5 * eye - 0.5 * y
        m = ops.matmul(m, t)
        y = ops.matmul(t, ops.matmul(y, t))
        y = 0.5 * (y + ops.transpose(y))
    m = m / ops.sqrt(c2)
    return ops.matmul(m, x) if wide else ops.matmul(x, m)


def _rectangular(x, ratio=2):
    b, d = _dims(x)
    return b is not None and d is not None and max(b, d) >= ratio * min(b, d)


def resolve_method(x, method="auto"):
    """The nuclear-norm method ``"auto"`` resolves to for ``x`` in the current context."""
    if method != "auto":
        return method
    if _backend.in_xla_context():
        return "newton_schulz"
    b, d = _dims(x)
    if b is None or d is None:
        return "gram"
    return "svd" if b * d * min(b, d) <= _AUTO_SVD_MAX_WORK else "gram"


def nuclear_norm(x, method="auto", fast_iterations=5, refine_iterations=4):
    """Nuclear norm ``||E||_* = sum_i s_i`` of a ``(b, d)`` matrix, with its gradient ``U V^T``.

    Args:
        x: float ``(b, d)`` tensor.
        method: ``"auto"``, ``"svd"``, ``"gram"`` or ``"newton_schulz"`` (module docstring).
        fast_iterations, refine_iterations: Newton-Schulz steps (``"newton_schulz"`` only).

    Returns:
        Scalar tensor.
    """
    method = resolve_method(x, method)
    if method == "svd":
        u, s, vh = ops.svd(ops.stop_gradient(x), full_matrices=False, compute_uv=True)
        keep = ops.cast(s > ops.max(s) * 8.0 * _eps(x.dtype), x.dtype)
        polar = ops.matmul(u * keep[None, :], vh)
        return _straight_through(ops.sum(s), ops.sum(x * ops.stop_gradient(polar)))
    if method == "gram":
        polar = _polar_gram(x)
    elif method == "newton_schulz":
        if _rectangular(x):
            polar = polar_newton_schulz_gram(x, fast_iterations, refine_iterations)
        else:
            polar = polar_newton_schulz(x, fast_iterations, refine_iterations)
    else:
        raise ValueError(
            f"`method` must be one of {list(NUCLEAR_NORM_METHODS)}. Received: method={method!r}"
        )
    return ops.sum(x * ops.stop_gradient(polar))


def _num_features(x):
    d = x.shape[1]
    return float(d) if d is not None else ops.cast(ops.shape(x)[1], x.dtype)


def mean_singular_value(x, method="auto", **kwargs):
    """``s_mu = ||E||_* / d`` (SVMax paper, eq. 1) of a ``(b, d)`` matrix."""
    return nuclear_norm(x, method=method, **kwargs) / _num_features(x)


def mean_singular_value_bounds(x):
    """Scale-free bounds ``(L, U) = (||E||_F / d, sqrt(min(b, d)) ||E||_F / d)`` of ``s_mu``.

    For L2-normalized rows these equal :func:`singular_value_bounds` (paper eqs. 2-3).
    """
    fro = frobenius_norm(x)
    b = ops.cast(ops.shape(x)[0], x.dtype)
    d = _num_features(x)
    k = ops.minimum(b, ops.cast(d, x.dtype))
    lower = fro / d
    return lower, lower * ops.sqrt(k)


def singular_value_bounds(batch_size, dim):
    """Paper eqs. 2-3: ``(L, U)`` of ``s_mu`` for a ``(batch_size, dim)`` matrix of unit rows.

    ``L = sqrt(b) / d`` (rank one) and ``U = sqrt(b d / max(b, d)) sqrt(b) / d`` (all
    singular values equal).  Valid for ``b < d`` too (then ``U = b / d``).

    Example:
        >>> singular_value_bounds(144, 128)
        (0.09375, 1.0606601717798212)
    """
    b, d = int(batch_size), int(dim)
    if b < 1 or d < 1:
        raise ValueError(
            f"`batch_size` and `dim` must be >= 1. Received: batch_size={batch_size}, dim={dim}"
        )
    lower = math.sqrt(b) / d
    return lower, math.sqrt(b * d / max(b, d)) * lower


def bounded_position(s_mu, lower, upper):
    """``(U - s_mu) / (U - L)``, 0 when ``U == L`` (rank one by construction: b = 1 or d = 1).

    Safe for gradients: the denominator is never zero in either branch of the ``where``.
    """
    span = upper - lower
    ok = span > 1e-6 * ops.maximum(ops.abs(upper), 1e-30)
    safe_span = ops.where(ok, span, ops.ones_like(span))
    return ops.where(ok, (upper - s_mu) / safe_span, ops.zeros_like(span))
