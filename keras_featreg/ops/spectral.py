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
    144 x 128 forward+backward on 2 CPU cores).  Where LAPACK fails to converge on a
    finite matrix (rare and CPU-dependent; JAX then returns NaN), the value and gradient
    come from ``"newton_schulz"`` instead; the same guard covers ``"gram"``'s ``eigh``.
``"gram"``
    Eigen-decomposition of the ``k x k`` Gram matrix of the smaller side, then the polar
    factor ``P = E V diag(1/s) V^T``.  The value is ``<E, P>`` with the gradient ``P``
    (``d||E||_*/dE = U V^T = P``).  Directions whose singular value is below
    ``sqrt(eps) * s_1`` (eps of the input's dtype; float32: 3.5e-4 s_1, float64: 1.5e-8 s_1)
    are dropped, which removes the squared-condition-number noise of the Gram matrix and
    keeps the gradient finite at any rank.
    Cost ``O(b d k)`` matmuls plus a ``k x k`` eigh; several times faster than the SVD for
    wide or tall matrices.  Not for TensorFlow XLA (eigh is also Jacobi there).
``"newton_schulz"``
    Matmul-only polar iteration (no decomposition at all): ``X <- X p_t(X^T X)`` starting
    from ``E / (sum s^8)^{1/8}`` (an upper bound of ``s_1``, at most ``k^{1/8} s_1``), with
    per-step optimal quintics (greedy minimax on ``[5e-3, 1]``: Chen & Chow, 2014; Amsel et
    al., 2025, "The Polar Express"; ``tools/make_polar_coefficients.py``).  Each step costs
    three matmuls; the default 6 steps (18 matmuls) bring every scaled singular value in
    ``[5e-3, 1]`` to 1 within 1e-10, where the fixed Muon quintic plus cubic refinement
    needed 9 steps (23 matmuls).  Value ``<E, P>``, gradient ``P``.  Singular values below
    about ``5e-3 (sum s^8)^{1/8}`` (typically 6e-3 to 9e-3 ``s_1``) are under-counted: a
    scaled singular value ``x < 1e-3`` ends at about ``800 x`` instead of 1 (``x = 5e-4``:
    0.4), so near collapse the value misses part of the tiny singular values and the
    gradient pushes those directions with a weight below 1;
    see ``benchmarks/bench_spectral.py`` for the accuracy on healthy, half-collapsed and
    rank-one embeddings.  When ``max(b, d) >= 2 min(b, d)`` the same iteration runs on the
    ``k x k`` Gram matrix (:func:`polar_newton_schulz_gram`), several times cheaper.
``"auto"``
    ``"newton_schulz"`` while tracing a TensorFlow XLA function; otherwise ``"svd"`` when
    ``b d k <= 2**18`` (about 64 x 64: tiny, the exact SVD is as cheap as anything), and
    above that ``"newton_schulz"`` on JAX with a CPU device (LAPACK's OpenBLAS threads
    compete with the rest of the step there, see
    :func:`keras_featreg.backend.lapack_threads_compete`) and ``"gram"`` elsewhere.
"""

import math

import keras
from keras import ops

from keras_featreg import _utils
from keras_featreg import backend as _backend
from keras_featreg.ops import pairwise

NUCLEAR_NORM_METHODS = ("auto", "svd", "gram", "newton_schulz")
FEATURE_REDUCTIONS = ("flatten", "average")

# Per-step odd quintics a x + b x^3 + c x^5 of the polar iteration: greedy minimax on the
# interval [5e-3, 1] and its images (Chen & Chow, 2014; Amsel et al., 2025, "The Polar
# Express"), from `python tools/make_polar_coefficients.py --lower 5e-3 --steps 6`.
# sup |1 - f| on [5e-3, 1] after each step: 0.98, 0.91, 0.66, 0.15, 7.1e-4, 7.5e-11.
_POLAR_COEFFS = (
    (4.23725454, -12.47402522, 9.23677053),
    (4.17246018, -11.94093340, 8.76847323),
    (3.90226332, -9.88240792, 6.98014459),
    (3.02296900, -4.83673805, 2.81376896),
    (2.03749559, -1.59679842, 0.55930283),
    (1.87563562, -1.25127153, 0.37563591),
)
# The classical quintic Newton-Schulz map (15 x - 10 x^3 + 3 x^5) / 8: cubic convergence to 1.
_NS_QUINTIC = (1.875, -1.25, 0.375)
DEFAULT_POLAR_ITERATIONS = len(_POLAR_COEFFS)
_AUTO_SVD_MAX_WORK = 2**18


def l2_normalize_rows(x, epsilon=1e-12):
    """Divides each row by its L2 norm (:func:`keras_featreg.ops.pairwise.l2_normalize`)."""
    return pairwise.l2_normalize(x, axis=-1, epsilon=epsilon)


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
        return _utils.mean(x, axis=tuple(range(1, len(x.shape) - 1)))
    feature_shape = [_utils.static_size(dim) for dim in x.shape[1:]]
    if all(dim is not None for dim in feature_shape):
        return ops.reshape(x, (-1, int(math.prod(feature_shape))))
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _dims(x):
    """``(b, d)`` as Python ints, each None when unknown at trace time.

    Unknown is a ``None`` dimension or a symbolic one (JAX ``model.export()``, see
    :func:`keras_featreg._utils.static_size`); every caller then takes its dynamic-shape
    path, so no computation here needs a static batch size.
    """
    return _utils.static_dim(x, 0), _utils.static_dim(x, 1)


def _eps(dtype):
    """Machine epsilon of the compute dtype: float64's for float64, float32's otherwise.

    ``keras.backend.standardize_dtype`` maps every backend's dtype object (``tf.float64``,
    ``jnp.float64``, ``torch.float64``, numpy) to the string ``"float64"``; ``str(dtype)``
    does not (``"<dtype: 'float64'>"`` on TensorFlow).
    """
    return 2.0**-52 if keras.backend.standardize_dtype(dtype) == "float64" else 2.0**-23


def _finite_or_zero(x):
    """``x`` with NaN/inf entries replaced by 0, for the input of a decomposition.

    TensorFlow's ``eigh`` raises on a non-finite matrix and LAPACK may iterate on one for
    long; the nuclear norm still comes out NaN, through ``<E, P>`` (``0 * inf = NaN``).
    """
    return ops.where(ops.isfinite(x), x, ops.zeros_like(x))


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
    if wide is None:  # dynamic batch: decide at run time, on tensors (a symbolic JAX
        # dimension cannot be compared with `<`)
        b = ops.cast(ops.shape(x)[0], "int32")
        d = ops.cast(ops.shape(x)[1], "int32")
        return ops.cond(ops.less(b, d), lambda: _polar_gram_side(x, True),
                        lambda: _polar_gram_side(x, False))
    return _polar_gram_side(x, wide)


def _gram_eigh(x, wide):
    """Eigenvalues (ascending) and eigenvectors of the Gram matrix of the rows (``wide``) or
    of the columns of ``x``, without gradient; the one Gram eigendecomposition of the module."""
    x = ops.stop_gradient(x)
    gram = ops.matmul(x, ops.transpose(x)) if wide else ops.matmul(ops.transpose(x), x)
    return ops.eigh(_finite_or_zero(gram))


def _polar_gram_side(x, wide):
    x = ops.stop_gradient(x)
    eigvals, eigvecs = _gram_eigh(x, wide)
    s = ops.sqrt(ops.maximum(eigvals, 0.0))
    tol = ops.max(s) * math.sqrt(_eps(x.dtype))
    keep = s > tol
    inv = ops.where(keep, 1.0 / ops.where(keep, s, ops.ones_like(s)), ops.zeros_like(s))
    m = ops.matmul(eigvecs * inv[None, :], ops.transpose(eigvecs))
    return ops.matmul(m, x) if wide else ops.matmul(x, m)


def _step_coeffs(iterations):
    """Coefficients of each of ``iterations`` quintic steps (schedule, then the converged map)."""
    return [_POLAR_COEFFS[i] if i < len(_POLAR_COEFFS) else _NS_QUINTIC for i in range(iterations)]


def _scaled_gram(x):
    """Shared start of both Newton-Schulz forms.

    Returns ``(x, wide, G / c, G^2 / c^2, c)``: ``x`` divided by ``||x||_F`` (the polar factor
    is unchanged, and the fourth powers below cannot overflow float32 for large activations;
    zero stays zero), ``wide`` (the Gram matrix is of the rows; False for a dynamic batch, the
    d x d side is always valid), ``G`` that Gram matrix of the smaller side, and
    ``c = ||G^2||_F^{1/2} = (sum s^8)^{1/4} >= s_1^2``, so the eigenvalues of ``G / c`` are in
    ``[0, 1]``.
    """
    x = ops.stop_gradient(x)
    wide = bool(_wide(x))
    x = x / ops.maximum(frobenius_norm(x), 1e-18)
    gram = ops.matmul(x, ops.transpose(x)) if wide else ops.matmul(ops.transpose(x), x)
    gram2 = ops.matmul(gram, gram)
    c = ops.sqrt(ops.maximum(ops.sqrt(ops.sum(ops.square(gram2))), 1e-36))
    return x, wide, gram / c, gram2 / ops.square(c), c


def polar_newton_schulz(x, iterations=DEFAULT_POLAR_ITERATIONS):
    """Polar factor ``U V^T`` of ``x`` by matmul-only Newton-Schulz iterations.

    ``X <- a X + b (X X^T) X + c (X X^T)^2 X`` with the per-step coefficients of
    ``_POLAR_COEFFS`` (greedy minimax quintics on ``[5e-3, 1]``, ``tools/
    make_polar_coefficients.py``), starting from ``E / ||(E^T E)^2||_F^{1/4}``: that divisor
    is ``(sum s^8)^{1/8} >= s_1`` (at most ``k^{1/8} s_1``), so every scaled singular value is
    in ``[0, 1]``, and it costs nothing, since the first step needs ``(E^T E)^2`` anyway.

    Args:
        x: ``(b, d)`` matrix.
        iterations: quintic steps; 6 (the default) converge to 1 within 1e-10 for scaled
            singular values in ``[5e-3, 1]``; fewer are faster and less accurate; more repeat
            the classical quintic ``(15 x - 10 x^3 + 3 x^5) / 8``.
    """
    x, wide, a, a2, c2 = _scaled_gram(x)
    if wide:
        x = ops.transpose(x)
    k = x.shape[1]
    eye = ops.eye(k, dtype=x.dtype)
    y = x / ops.sqrt(c2)
    for i, (ca, cb, cc) in enumerate(_step_coeffs(iterations)):
        if i > 0:
            a = ops.matmul(ops.transpose(y), y)
            a2 = ops.matmul(a, a)
        y = ops.matmul(y, ca * eye + cb * a + cc * a2)
    return ops.transpose(y) if wide else y


def polar_newton_schulz_gram(x, iterations=DEFAULT_POLAR_ITERATIONS, shift=1e-6):
    """Polar factor by Newton-Schulz iterations on the ``k x k`` Gram matrix (``k = min(b, d)``).

    Same polynomials as :func:`polar_newton_schulz`, but every step is a ``k x k`` matmul:
    with ``G`` the Gram matrix of the smaller side, ``Y <- T Y T``, ``M <- M T`` where
    ``T = p(Y)``, and finally ``P = E M / sqrt(||G^2||_F^{1/2})``.  Iterating on ``G``
    squares the condition number: rounding leaves eigenvalues of order ``-eps`` that the
    iteration would amplify, so ``Y`` starts at ``G / ||G^2||_F^{1/2} + shift * I``.  The
    shift biases a singular value ``s`` by a relative ``shift s_1^2 / (2 s^2)`` at most (below
    1e-4 for singular values above 1 % of ``s_1``); true null directions of ``E`` contribute
    nothing because ``P = E M``.  Several times cheaper than the direct iteration when
    ``max(b, d) >= 2 min(b, d)``.
    """
    x, wide, g, g2, c2 = _scaled_gram(x)
    k = g.shape[0]
    eye = ops.eye(k, dtype=x.dtype)
    y = g + shift * eye
    y2 = g2 + (2.0 * shift) * g + (shift * shift) * eye
    m = None
    for i, (ca, cb, cc) in enumerate(_step_coeffs(iterations)):
        if i > 0:
            y2 = ops.matmul(y, y)
        t = ca * eye + cb * y + cc * y2
        m = t if m is None else ops.matmul(m, t)
        y = ops.matmul(t, ops.matmul(y, t))
        y = 0.5 * (y + ops.transpose(y))
    m = m / ops.sqrt(c2)
    return ops.matmul(m, x) if wide else ops.matmul(x, m)


def _matmul_polar(x, iterations=DEFAULT_POLAR_ITERATIONS):
    """The Newton-Schulz polar factor, in the cheaper of its two forms for this shape."""
    if _rectangular(x):
        return polar_newton_schulz_gram(x, iterations)
    return polar_newton_schulz(x, iterations)


def _or_matmul_polar(polar, clean, iterations, also=None):
    """``polar`` from a LAPACK path, or the Newton-Schulz polar factor of ``clean`` where it failed.

    LAPACK's divide-and-conquer SVD (``gesdd``) and ``syevd`` can fail to converge on a
    finite matrix -- rarely, depending on the CPU's kernels and the thread count
    (OpenMathLib/OpenBLAS#3044, jax-ml/jax#22809) -- and JAX then returns NaN for every
    output. ``clean`` is finite (non-finite inputs were zeroed), so a non-finite ``polar``
    (or ``also``, another output of the same decomposition) can only be such a failure: the
    matmul-only iteration then recomputes it, inside a ``cond`` (run only after a failure).
    A non-finite *input* still gives NaN, through ``<x, P>`` with the original ``x``.
    Without a static number of features (a tensor of unknown shape) the iteration cannot be
    built and ``polar`` is returned as it is.
    """
    if _dims(clean)[1] is None:
        return polar
    ok = ops.all(ops.isfinite(polar))
    if also is not None:
        ok = ops.logical_and(ok, ops.all(ops.isfinite(also)))
    return ops.cond(ok, lambda: polar, lambda: _matmul_polar(clean, iterations))


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
    if b is not None and d is not None and b * d * min(b, d) <= _AUTO_SVD_MAX_WORK:
        return "svd"
    return "newton_schulz" if _backend.lapack_threads_compete() else "gram"


def nuclear_norm(x, method="auto", iterations=DEFAULT_POLAR_ITERATIONS):
    """Nuclear norm ``||E||_* = sum_i s_i`` of a ``(b, d)`` matrix, with its gradient ``U V^T``.

    Args:
        x: float ``(b, d)`` tensor.
        method: ``"auto"``, ``"svd"``, ``"gram"`` or ``"newton_schulz"`` (module docstring).
        iterations: Newton-Schulz steps (``"newton_schulz"`` only; see
            :func:`polar_newton_schulz`).

    Returns:
        Scalar tensor.
    """
    method = resolve_method(x, method)
    if method == "svd":
        clean = _finite_or_zero(ops.stop_gradient(x))
        u, s, vh = ops.svd(clean, full_matrices=False, compute_uv=True)
        keep = ops.cast(s > ops.max(s) * 8.0 * _eps(x.dtype), x.dtype)
        polar = _or_matmul_polar(ops.matmul(u * keep[None, :], vh), clean, iterations, also=s)
        surrogate = ops.sum(x * ops.stop_gradient(polar))
        # sum(s) is exact; after a LAPACK failure <x, P> is the value (x == clean then).
        value = ops.where(ops.all(ops.isfinite(s)), ops.sum(s), surrogate)
        return _straight_through(value, surrogate)
    if method == "gram":
        clean = _finite_or_zero(ops.stop_gradient(x))
        polar = _or_matmul_polar(_polar_gram(clean), clean, iterations)
    elif method == "newton_schulz":
        polar = _matmul_polar(x, iterations)
    else:
        raise ValueError(
            f"`method` must be one of {list(NUCLEAR_NORM_METHODS)}. Received: method={method!r}"
        )
    return ops.sum(x * ops.stop_gradient(polar))


def _num_features(x):
    d = _utils.static_dim(x, 1)
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
        (0.09375, 1.0606601717798214)
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


SPECTRUM_METHODS = ("auto", "svd", "gram")


def resolve_spectrum_method(x, method="auto"):
    """The :func:`spectrum` method ``"auto"`` resolves to for ``x``.

    ``"svd"`` when ``b d min(b, d) <= 2**18`` (about 64 x 64) or a dimension is unknown at
    trace time, ``"gram"`` above (one ``min(b, d)``-square eigh: a 10k x 512 matrix costs a
    512 x 512 eigh and one matmul instead of a 10k x 512 SVD).
    """
    if method not in SPECTRUM_METHODS:
        raise ValueError(
            f"`method` must be one of {list(SPECTRUM_METHODS)}. Received: method={method!r}"
        )
    if method != "auto":
        return method
    b, d = _dims(x)
    if b is None or d is None or b * d * min(b, d) <= _AUTO_SVD_MAX_WORK:
        return "svd"
    return "gram"


def spectrum(x, method="auto"):
    """Singular values ``s_1 >= ... >= s_k`` of a ``(b, d)`` matrix, ``k = min(b, d)``, from
    one decomposition, with the gradient ``ds_i/dx = u_i v_i^T``.

    The spectral primitive of the collapse measures (:mod:`keras_featreg.metrics`): each
    measure decomposes its matrix once, through here.

    ``method="svd"``: ``keras.ops.svd``; exact to rounding.  ``method="gram"``: the
    eigenvalues ``s_i^2`` of the smaller Gram matrix (``x x^T`` or ``x^T x``); eigenvalues
    below ``k eps s_1^2`` (``eps`` of the compute dtype: the Gram matrix's rounding level) are
    set to 0, so singular values below ``sqrt(k eps) s_1`` (float32, ``k = 512``: 7.8e-3 s_1;
    float64: 3.4e-7 s_1) read 0.  ``"auto"``: :func:`resolve_spectrum_method`.

    The gradient is not the SVD's own (NaN for the zero matrix on JAX, repeated singular
    values elsewhere): a straight-through surrogate ``<u_i, x v_i>`` (``"svd"``) or
    ``||x v_i||^2 / (2 s_i)`` (``"gram"``) with the singular vectors held constant, and 0
    for directions whose singular value is negligible (``8 eps s_1`` for ``"svd"``,
    ``sqrt(eps) s_1`` for ``"gram"``).  Finite at every rank, including the zero matrix.
    Non-finite entries are zeroed before the decomposition; the values then carry NaN
    through the surrogate.

    Args:
        x: float ``(b, d)`` tensor.
        method: ``"auto"``, ``"svd"`` or ``"gram"``.

    Returns:
        ``(k,)`` tensor, descending.

    Example:
        >>> import numpy as np
        >>> [round(float(v), 6) for v in spectrum(np.diag([3.0, 1.0, 2.0]))]
        [3.0, 2.0, 1.0]
    """
    x = ops.convert_to_tensor(x)
    method = resolve_spectrum_method(x, method)
    eps = _eps(x.dtype)
    clean = _finite_or_zero(ops.stop_gradient(x))
    if method == "svd":
        u, s, vh = ops.svd(clean, full_matrices=False, compute_uv=True)
        keep = s > ops.max(s) * 8.0 * eps
        xv = ops.matmul(x, ops.transpose(ops.stop_gradient(vh)))  # (b, k)
        surrogate = ops.sum(ops.stop_gradient(u) * xv, axis=0)
    else:
        wide = bool(_wide(x))  # a dynamic batch takes the d x d side
        eigvals, eigvecs = _gram_eigh(clean, wide)
        eigvals = ops.flip(eigvals, axis=0)
        eigvecs = ops.stop_gradient(ops.flip(eigvecs, axis=1))
        k = eigvals.shape[0] if eigvals.shape[0] is not None else ops.shape(eigvals)[0]
        top = ops.max(eigvals)
        eigvals = ops.where(eigvals > top * (float(k) if isinstance(k, int) else
                                             ops.cast(k, x.dtype)) * eps,
                            eigvals, ops.zeros_like(eigvals))
        s = ops.sqrt(eigvals)
        keep = s > ops.max(s) * math.sqrt(eps)
        inv = ops.where(keep, 1.0 / ops.where(keep, s, ops.ones_like(s)), ops.zeros_like(s))
        proj = ops.matmul(ops.transpose(x), eigvecs) if wide else ops.matmul(x, eigvecs)
        surrogate = 0.5 * ops.sum(ops.square(proj), axis=0) * inv
    surrogate = ops.where(keep, surrogate, ops.zeros_like(surrogate))
    return _straight_through(s, surrogate)
