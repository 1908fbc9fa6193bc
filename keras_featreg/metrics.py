"""Spectrum and collapse metrics of embedding batches.

All values come from :mod:`keras_featreg.ops` (the same primitives the regularizers use).
An embedding batch holding a NaN or an infinity gives NaN values (every entry of a vector,
every value of a dict but the shape), never finite ones.

The callback that logs them each epoch is :class:`keras_featreg.callbacks.SpectrumMonitor`.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_featreg import _utils
from keras_featreg.ops import moments, spectral


def _prepared(embeddings, normalize, feature_reduction="flatten"):
    e = _utils.as_float_tensor(embeddings, name="embeddings", min_rank=2)
    e = spectral.reduce_features(e, feature_reduction)
    return spectral.l2_normalize_rows(e) if normalize else e


def _finite(e):
    """Python bool: no NaN or infinity in the (eager) tensor ``e``."""
    return bool(ops.convert_to_numpy(_utils.all_finite(e)))


def mean_singular_value(embeddings, normalize=True, method="svd"):
    """Mean singular value ``s_mu = sum_i s_i / d`` (SVMax paper, eq. 1).

    Args:
        embeddings: ``(b, d)`` array or tensor (rank > 2 is flattened).
        normalize: L2-normalize rows first (the paper's convention for the bounds).
        method: nuclear-norm method (``"svd"``, exact, by default; see
            :mod:`keras_featreg.ops.spectral`).

    Returns:
        Scalar tensor.

    Example:
        >>> import numpy as np
        >>> e = np.eye(4, dtype="float32")
        >>> float(mean_singular_value(e))  # four unit singular values / d=4
        1.0
    """
    e = _prepared(embeddings, normalize)
    return _utils.propagate_nonfinite(spectral.mean_singular_value(e, method=method), e)


def singular_value_position(embeddings, normalize=True, method="svd"):
    """Where ``s_mu`` sits between its bounds: ``(s_mu - L) / (U - L)`` in ``[0, 1]``.

    0 means rank one (total collapse), 1 means all singular values equal (uniform spread).
    Uses the scale-free bounds, so it is meaningful without normalization too.
    """
    e = _prepared(embeddings, normalize)
    s_mu = spectral.mean_singular_value(e, method=method)
    lower, upper = spectral.mean_singular_value_bounds(e)
    return _utils.propagate_nonfinite(1.0 - spectral.bounded_position(s_mu, lower, upper), e)


def dimension_std(embeddings, epsilon=0.0):
    """Per-dimension standard deviation over the batch (unbiased), shape ``(d,)``."""
    e = _utils.as_float_tensor(embeddings, name="embeddings", min_rank=2, max_rank=2)
    return _utils.propagate_nonfinite(moments.std(e, epsilon), e)


def collapse_statistics(embeddings, threshold=0.01, normalize=True):
    """Per-dimension spread summary of an embedding batch.

    A dimension counts as collapsed when its standard deviation is below ``threshold``
    times the root-mean-square standard deviation of all dimensions (so the statistic is
    scale-free); if every dimension has zero spread they all count as collapsed.

    Returns:
        dict of Python floats: ``mean_std``, ``min_std``, ``max_std``,
        ``collapsed_fraction``.
    """
    threshold = _utils.check_number("threshold", threshold, minimum=0.0)
    normalize = _utils.check_bool("normalize", normalize)
    e = _prepared(embeddings, normalize)
    if not _finite(e):
        return dict.fromkeys(("mean_std", "min_std", "max_std", "collapsed_fraction"), math.nan)
    s = np.asarray(ops.convert_to_numpy(moments.std(e, 0.0)), dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(s))))
    collapsed = s <= threshold * rms if rms > 0 else np.ones_like(s, dtype=bool)
    return {
        "mean_std": float(s.mean()),
        "min_std": float(s.min()),
        "max_std": float(s.max()),
        "collapsed_fraction": float(collapsed.mean()),
    }


def spectrum_statistics(embeddings, normalize=True, threshold=0.01):
    """Everything :class:`keras_featreg.callbacks.SpectrumMonitor` logs, as a dict of Python floats."""
    e = _prepared(embeddings, normalize)
    b, d = int(e.shape[0]), int(e.shape[1])
    if _finite(e):
        s_mu = float(spectral.mean_singular_value(e, method="svd"))
        lower, upper = (float(v) for v in spectral.mean_singular_value_bounds(e))
        position = (s_mu - lower) / (upper - lower) if upper - lower > 1e-12 else 1.0
    else:
        s_mu = lower = upper = position = math.nan
    stats = {
        "s_mu": s_mu,
        "s_mu_lower": lower,
        "s_mu_upper": upper,
        "s_mu_position": position,
    }
    stats.update(collapse_statistics(e, threshold=threshold, normalize=False))
    stats["batch_size"], stats["dim"] = b, d
    return stats


# ---- collapse measures -----------------------------------------------------------------
#
# Every measure decomposes its matrix once, through `keras_featreg.ops.spectral.spectrum`
# (the primitive behind s_mu): RankMe on the singular values of Z, the covariance measures
# (alpha-ReQ, participation ratio, collapsed dimensions, log-spectrum) on the singular values
# of the centered Z, whose squares over n - 1 are the eigenvalues of Cov(Z).

RANKME_EPSILON = 1e-7  # Garrido et al. (2023), as in reptrix's `get_rank`
LIDAR_DELTA = 1e-4  # Thilak et al. (2024); stable-pretraining's default (reptrix: 1e-6)
ALPHA_REQ_FIT_RANGE = (5, 100)  # reptrix's `np.arange(5, 100)`: ranks 6 ... 100
COLLAPSE_THRESHOLD = 1e-5
MEASURES = ("effective_rank", "alpha_req", "participation_ratio", "collapsed_dimensions",
            "lidar")
_LOG_FLOOR = 1e-30


def _matrix(embeddings, name="embeddings"):
    """A float ``(n, d)`` tensor with ``n >= 2`` (half precision promoted to float32)."""
    e = _utils.as_float_tensor(embeddings, name=name, min_rank=2, max_rank=2)
    n = _utils.static_dim(e, 0)
    if n is not None and n < 2:
        raise ValueError(
            f"`{name}` must hold at least 2 samples (a spectrum of one sample measures "
            f"nothing). Received: {name}.shape={tuple(e.shape)}"
        )
    return e


def _entropy_rank(values, epsilon):
    a = ops.abs(values)
    total = ops.sum(a)
    safe = ops.where(total > 0, total, ops.ones_like(total))
    p = a / safe + epsilon
    return ops.exp(-ops.sum(p * ops.log(p)))


def entropy_effective_rank(values, epsilon=RANKME_EPSILON):
    """Entropy effective rank ``exp(-sum_k p_k log p_k)``, ``p_k = |v_k| / ||v||_1 + eps``.

    Roy & Vetterli (2007); the ``+ eps`` form of RankMe (Garrido et al., ICML 2023) and of
    reptrix's ``get_rank`` (``eps = 1e-7``), which this equals to rounding.  An all-zero
    vector (``0 / 0`` taken as 0) gives ``exp(-k eps log eps)``, about ``1 + 1.6e-6 k``.

    Args:
        values: 1-D spectrum (singular values or eigenvalues).
        epsilon: the ``eps`` added to every ``p_k``.

    Example:
        >>> import numpy as np
        >>> round(float(entropy_effective_rank(np.ones(4, "float32"), epsilon=0.0)), 4)
        4.0
    """
    v = _utils.as_float_tensor(values, name="values", min_rank=1, max_rank=1)
    epsilon = _utils.check_number("epsilon", epsilon, minimum=0.0)
    return _utils.propagate_nonfinite(_entropy_rank(v, epsilon), v)


def effective_rank(embeddings, epsilon=RANKME_EPSILON, method="auto"):
    """RankMe: the entropy effective rank of the singular values of ``Z``.

    With ``s_1 >= ... >= s_k`` the singular values of ``Z`` (``n x d``, ``k = min(n, d)``),
    ``p_k = s_k / ||s||_1 + eps`` and ``RankMe(Z) = exp(-sum_k p_k log p_k)``
    (Garrido, Balestriero, Najman & LeCun, "RankMe: Assessing the Downstream Performance of
    Pretrained Self-Supervised Representations by Their Rank", ICML 2023, eq. 1;
    ``eps = 1e-7``).  ``Z`` is not centered (the paper's definition).  reptrix's
    ``get_rankme`` differs: it takes the PCA explained-variance ratios (eigenvalues of the
    centered covariance, ``s_k(Z_c)^2``), not ``s_k(Z)``.

    Between about 1 (rank one: identical rows) and ``k``; the zero matrix gives
    ``exp(-k eps log eps)`` (about 1).  Differentiable, with a finite gradient at every rank
    (:func:`keras_featreg.ops.spectral.spectrum`).  NaN when ``Z`` holds a NaN or an infinity.

    Args:
        embeddings: ``(n, d)`` array or tensor, ``n >= 2``; half precision runs in float32.
        epsilon: the ``eps`` of ``p_k``.
        method: spectrum method, ``"auto"``, ``"svd"`` or ``"gram"``
            (:func:`keras_featreg.ops.spectral.spectrum`).

    Returns:
        Scalar tensor.

    Example:
        >>> import numpy as np
        >>> round(float(effective_rank(np.eye(8, 4, dtype="float32"))), 3)
        4.0
    """
    e = _matrix(embeddings)
    epsilon = _utils.check_number("epsilon", epsilon, minimum=0.0)
    s = spectral.spectrum(e, method=method)
    return _utils.propagate_nonfinite(_entropy_rank(s, epsilon), e)


def _covariance_eigenvalues(e, method):
    """Eigenvalues of ``Cov(Z)`` (divisor ``n - 1``), the top ``min(n, d)``, descending."""
    s = spectral.spectrum(moments.center(e), method=method)
    n = ops.cast(ops.shape(e)[0], e.dtype)
    return ops.square(s) / (n - 1.0)


def covariance_spectrum(embeddings, method="auto"):
    """Eigenvalues ``lambda_1 >= ... >= lambda_k`` of ``Cov(Z) = Z_c^T Z_c / (n - 1)``.

    The top ``k = min(n, d)`` of the ``d`` eigenvalues (the others are 0), as the squared
    singular values of the centered ``Z`` over ``n - 1``: one decomposition.

    Example:
        >>> import numpy as np
        >>> z = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
        >>> [round(float(v), 4) for v in covariance_spectrum(z)]
        [0.6667, 0.1667]
    """
    e = _matrix(embeddings)
    return _utils.propagate_nonfinite(_covariance_eigenvalues(e, method), e)


def _floor(lam, e):
    """``lam`` floored at ``k eps lambda_1`` (and ``1e-30``): finite logarithms."""
    k = lam.shape[0] if lam.shape[0] is not None else 1
    floor = ops.maximum(ops.max(lam) * float(k) * spectral._eps(e.dtype), _LOG_FLOOR)
    return ops.maximum(lam, floor)


def log_spectrum(embeddings, method="auto"):
    """Sorted log-spectrum ``log lambda_i`` of ``Cov(Z)`` (Jing et al., ICLR 2022, Fig. 2).

    Descending, ``min(n, d)`` values; eigenvalues are floored at ``k eps lambda_1`` (``eps``
    of the compute dtype; the rounding level of the decomposition) and at ``1e-30``, so a
    collapsed direction reads ``log(k eps lambda_1)`` and a constant ``Z`` reads
    ``log(1e-30) = -69.08`` everywhere, never ``-inf``.

    Example:
        >>> import numpy as np
        >>> z = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> [round(float(v), 4) for v in log_spectrum(z)]
        [-0.4055, -0.4055]
    """
    e = _matrix(embeddings)
    lam = _covariance_eigenvalues(e, method)
    return _utils.propagate_nonfinite(ops.log(_floor(lam, e)), e)


def _fit_mask(k, fit_range):
    start, stop = fit_range
    stop = min(stop, k)
    if stop - start < 3:
        start, stop = 0, k
    idx = np.arange(k)
    return ((idx >= start) & (idx < stop)).astype("float64")


def _alpha(lam, e, fit_range, weighted):
    k = lam.shape[0]
    if k is None:
        raise ValueError(
            "`embeddings` must have a static shape for `alpha_req` (the fit range is set "
            f"at trace time). Received: embeddings.shape={tuple(e.shape)}"
        )
    if k < 2:
        return ops.zeros((), dtype=e.dtype)
    ranks = np.arange(1, k + 1, dtype="float64")
    w = _fit_mask(k, fit_range) * (1.0 / ranks if weighted else 1.0)
    w = ops.convert_to_tensor(w / w.sum(), dtype=e.dtype)
    u = ops.convert_to_tensor(-np.log(ranks), dtype=e.dtype)
    y = ops.log(_floor(lam, e))
    du = u - ops.sum(w * u)
    return ops.sum(w * du * (y - ops.sum(w * y))) / ops.sum(w * du * du)


def _check_fit_range(fit_range):
    ok = (isinstance(fit_range, (tuple, list)) and len(fit_range) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in fit_range)
          and 0 <= fit_range[0] < fit_range[1])
    if not ok:
        raise ValueError(
            "`fit_range` must be a pair of ints (start, stop) with 0 <= start < stop. "
            f"Received: fit_range={fit_range!r}"
        )
    return tuple(fit_range)


def alpha_req(embeddings, fit_range=ALPHA_REQ_FIT_RANGE, weighted=True, method="auto"):
    """alpha-ReQ: the power-law decay ``alpha`` of the eigenspectrum of ``Cov(Z)``.

    The eigenvalues ``lambda_1 >= ... >= lambda_k`` of ``Cov(Z)`` are fitted as
    ``lambda_i ∝ i^(-alpha)`` by least squares of ``log lambda_i`` on ``-log i`` over the
    0-based indices ``start <= i - 1 < stop`` (Agrawal, Mondal, Ghosh & Richards, "alpha-ReQ:
    Assessing Representation Quality in Self-Supervised Learning by measuring eigenspectrum
    decay", NeurIPS 2022).  As in reptrix's ``get_powerlaw`` (after Stringer et al., 2019):
    ``fit_range = (5, 100)`` (``np.arange(5, 100)``) and weights ``1 / i`` (``weighted``);
    ``alpha`` is the slope.  The range is clipped to ``k = min(n, d)``; when fewer than 3
    eigenvalues remain in it the whole spectrum is fitted.  Eigenvalues are floored as in
    :func:`log_spectrum`, so a rank-deficient ``Z`` gives a large finite ``alpha`` (steep
    decay), a constant ``Z`` gives 0 (a flat floor), and ``k = 1`` gives 0.  Small
    ``alpha`` (below about 1) means a flat, high-rank spectrum; large means collapse.

    Args:
        embeddings: ``(n, d)`` array or tensor, ``n >= 2``.
        fit_range: ``(start, stop)`` 0-based indices of the fitted eigenvalues.
        weighted: weights ``1 / i`` (reptrix); False: ordinary least squares.
        method: spectrum method (:func:`keras_featreg.ops.spectral.spectrum`).

    Example:
        >>> import numpy as np
        >>> z = np.diag(np.arange(1, 9, dtype="float64") ** -1.0)  # lambda_i ~ i^-2 / (n-1)
        >>> round(float(alpha_req(z, fit_range=(0, 4))), 1)
        2.0
    """
    e = _matrix(embeddings)
    fit_range = _check_fit_range(fit_range)
    weighted = _utils.check_bool("weighted", weighted)
    lam = _covariance_eigenvalues(e, method)
    return _utils.propagate_nonfinite(_alpha(lam, e, fit_range, weighted), e)


def _participation(lam):
    total = ops.sum(lam)
    sq = ops.sum(ops.square(lam))
    ok = sq > 0
    return ops.where(ok, ops.square(total) / ops.where(ok, sq, ops.ones_like(sq)),
                     ops.zeros_like(sq))


def participation_ratio(embeddings, method="auto"):
    """Participation ratio ``(tr C)^2 / tr(C^2) = (sum lambda_i)^2 / sum lambda_i^2``.

    ``C = Cov(Z)`` (Gao et al., 2017, "A theory of multineuronal dimensionality"; Recanatesi
    et al., 2019).  Between 1 (one direction of variance) and ``rank C``; a constant ``Z``
    (``C = 0``) gives 0.

    Example:
        >>> import numpy as np
        >>> z = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> round(float(participation_ratio(z)), 6)
        2.0
    """
    e = _matrix(embeddings)
    return _utils.propagate_nonfinite(_participation(_covariance_eigenvalues(e, method)), e)


def _collapsed(lam, e, threshold):
    d = ops.cast(ops.shape(e)[1], e.dtype)
    alive = ops.sum(ops.cast(lam > ops.max(lam) * threshold, e.dtype))
    return d - alive


def collapsed_dimensions(embeddings, threshold=COLLAPSE_THRESHOLD, method="auto"):
    """Number of collapsed dimensions: eigenvalues of ``Cov(Z)`` negligible next to the largest.

    ``d - #{i : lambda_i > threshold * lambda_1}``, counted over all ``d`` eigenvalues of
    the ``d x d`` covariance (``d - min(n, d)`` of them are 0 by construction), after
    Jing, Vincent, LeCun & Tian, "Understanding Dimensional Collapse in Contrastive
    Self-supervised Learning", ICLR 2022 (Sec. 3: the singular values of the embedding
    covariance that drop to zero; :func:`log_spectrum` is their Fig. 2 curve).  The default
    ``threshold = 1e-5`` (singular values of ``Z_c`` below 3.2e-3 of the largest) sits above
    float32's rounding level.  A constant ``Z`` gives ``d``.

    Args:
        embeddings: ``(n, d)`` array or tensor, ``n >= 2``.
        threshold: relative eigenvalue threshold, in ``[0, 1)``.
        method: spectrum method (:func:`keras_featreg.ops.spectral.spectrum`).

    Returns:
        Scalar float tensor (a whole number, or NaN for a non-finite ``Z``).

    Example:
        >>> import numpy as np
        >>> z = np.random.default_rng(0).normal(size=(64, 8))
        >>> z[:, 5:] = 0.0  # three dead dimensions
        >>> float(collapsed_dimensions(z))
        3.0
    """
    e = _matrix(embeddings)
    threshold = _utils.check_number("threshold", threshold, minimum=0.0, maximum=1.0)
    lam = _covariance_eigenvalues(e, method)
    return _utils.propagate_nonfinite(_collapsed(lam, e, threshold), e)


def _views(views, name="views"):
    """``(n, q, d)`` float tensor from a rank-3 tensor or a sequence of ``q`` ``(n, d)`` views."""
    if isinstance(views, (list, tuple)):
        if len(views) < 2:
            raise ValueError(
                f"`{name}` must hold at least 2 views of the same samples. Received: "
                f"{name} with {len(views)} view(s)"
            )
        mats = [_utils.as_float_tensor(v, name=f"{name}[{i}]", min_rank=2, max_rank=2)
                for i, v in enumerate(views)]
        for i, m in enumerate(mats[1:], 1):
            _utils.check_same_shape(f"{name}[0]", mats[0], f"{name}[{i}]", m)
        dtype = "float64" if all(m.dtype == mats[0].dtype for m in mats) and \
            _utils.standardize_dtype(mats[0]) == "float64" else "float32"
        v = ops.stack([ops.cast(m, dtype) for m in mats], axis=1)
    else:
        v = _utils.as_float_tensor(views, name=name, min_rank=3, max_rank=3)
        q = _utils.static_dim(v, 1)
        if q is not None and q < 2:
            raise ValueError(
                f"`{name}` must hold at least 2 views per sample (shape (n, q, d), q >= 2). "
                f"Received: {name}.shape={tuple(v.shape)}"
            )
    n = _utils.static_dim(v, 0)
    if n is not None and n < 2:
        raise ValueError(
            f"`{name}` must hold at least 2 samples. Received: {name}.shape={tuple(v.shape)}"
        )
    return v


def lidar(views, delta=LIDAR_DELTA, epsilon=RANKME_EPSILON):
    """LiDAR: the entropy effective rank of the LDA matrix of samples against their views.

    ``views`` holds ``q`` augmented views of ``n`` samples, ``e_ij`` (``(n, q, d)``).  With
    ``mu_i`` the mean of sample ``i``'s views and ``mu`` the mean of the ``mu_i``:
    ``Sigma_b = sum_i (mu_i - mu)(mu_i - mu)^T / (n - 1)``,
    ``Sigma_w = sum_ij (e_ij - mu_i)(e_ij - mu_i)^T / (n (q - 1)) + delta I``,
    ``lambda = eig(Sigma_w^(-1/2) Sigma_b Sigma_w^(-1/2))`` and LiDAR is the entropy
    effective rank of ``lambda`` with RankMe's ``p_k = lambda_k / ||lambda||_1 + eps``
    (Thilak, Huang, Saremi, Dinh, Goh, Susskind & Littwin, "LiDAR: Sensing Linear Probing
    Performance in Joint Embedding SSL Architectures", ICLR 2024, Sec. 3).  ``delta = 1e-4``
    as stable-pretraining's ``LiDAR`` callback (which normalizes ``(lambda + eps)/sum``
    instead); reptrix's ``get_lidar`` uses ``delta = 1e-6``, unnormalized scatter matrices
    and the PCA of the LiDAR matrix rather than its eigenvalues.  Two eigendecompositions
    of ``d x d`` matrices; no gradient (a monitor).  Identical views (``Sigma_w = delta I``)
    are fine; constant views give about 1.

    Args:
        views: ``(n, q, d)`` tensor, or a list/tuple of ``q >= 2`` ``(n, d)`` views of the
            same ``n >= 2`` samples (the two-view SSL batch: ``[z_a, z_b]``).
        delta: ridge added to ``Sigma_w``, ``> 0``.
        epsilon: the ``eps`` of ``p_k``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(256, 4))
        >>> views = [z + 0.1 * rng.normal(size=z.shape) for _ in range(2)]
        >>> round(float(lidar(views)), 1)  # at most d = 4
        3.9
    """
    v = _views(views)
    delta = _utils.check_positive("delta", delta)
    epsilon = _utils.check_number("epsilon", epsilon, minimum=0.0)
    value = _lidar(ops.stop_gradient(v), delta, epsilon)
    return _utils.propagate_nonfinite(value, v)


def _lidar(v, delta, epsilon):
    v = spectral._finite_or_zero(v)
    dtype = v.dtype
    n = ops.cast(ops.shape(v)[0], dtype)
    q = ops.cast(ops.shape(v)[1], dtype)
    d = _utils.static_dim(v, 2)
    mu_i = _utils.mean(v, axis=1)  # (n, d)
    mb = moments.center(mu_i)
    sigma_b = ops.matmul(ops.transpose(mb), mb) / (n - 1.0)
    w = ops.reshape(v - mu_i[:, None, :], (-1, d if d is not None else ops.shape(v)[2]))
    sigma_w = ops.matmul(ops.transpose(w), w) / (n * (q - 1.0))
    dim = d if d is not None else ops.shape(v)[2]
    sigma_w = sigma_w + delta * ops.eye(dim, dtype=dtype)
    lam_w, vec_w = ops.eigh(sigma_w)
    inv_sqrt = 1.0 / ops.sqrt(ops.maximum(lam_w, delta))
    whiten = ops.matmul(vec_w * inv_sqrt[None, :], ops.transpose(vec_w))
    m = ops.matmul(whiten, ops.matmul(sigma_b, whiten))
    m = 0.5 * (m + ops.transpose(m))
    lam, _ = ops.eigh(m)
    return _entropy_rank(ops.maximum(lam, 0.0), epsilon)


def collapse_measures(embeddings=None, measures=MEASURES[:4], views=None, *,
                      epsilon=RANKME_EPSILON, fit_range=ALPHA_REQ_FIT_RANGE, weighted=True,
                      threshold=COLLAPSE_THRESHOLD, delta=LIDAR_DELTA, method="auto"):
    """Several collapse measures at once, each spectrum computed once.

    ``effective_rank`` decomposes ``Z``; ``alpha_req``, ``participation_ratio`` and
    ``collapsed_dimensions`` share one decomposition of the centered ``Z``; ``lidar`` uses
    ``views``.  When only ``views`` is given, the other measures use its first view.

    Args:
        embeddings: ``(n, d)`` embeddings, or None when ``views`` is given.
        measures: names from :data:`MEASURES`.
        views: the views of :func:`lidar` (needed for ``"lidar"``).
        epsilon, fit_range, weighted, threshold, delta, method: as in the single functions.

    Returns:
        dict ``{name: scalar tensor}`` in the order of ``measures``.

    Example:
        >>> import numpy as np
        >>> z = np.eye(6, 3)
        >>> out = collapse_measures(z, ("participation_ratio", "collapsed_dimensions"))
        >>> {k: round(float(v), 3) for k, v in out.items()}
        {'participation_ratio': 2.778, 'collapsed_dimensions': 0.0}
    """
    measures = _check_measures(measures)
    v = None
    if views is not None:
        v = _views(views)
    elif "lidar" in measures:
        raise ValueError("`views` is required for the 'lidar' measure. Received: views=None")
    if embeddings is None:
        if v is None:
            raise ValueError(
                "`embeddings` (or `views`) must be given. Received: embeddings=None, views=None"
            )
        e = v[:, 0, :]
    else:
        e = _matrix(embeddings)
    out, lam = {}, None
    for name in measures:
        if name == "effective_rank":
            value = _entropy_rank(spectral.spectrum(e, method=method), epsilon)
        elif name == "lidar":
            value = _lidar(ops.stop_gradient(v), _utils.check_positive("delta", delta), epsilon)
            out[name] = _utils.propagate_nonfinite(value, v)
            continue
        else:
            if lam is None:
                lam = _covariance_eigenvalues(e, method)
            if name == "alpha_req":
                value = _alpha(lam, e, _check_fit_range(fit_range), weighted)
            elif name == "participation_ratio":
                value = _participation(lam)
            else:
                value = _collapsed(lam, e, threshold)
        out[name] = _utils.propagate_nonfinite(value, e)
    return out


def _check_measures(measures):
    if isinstance(measures, str):
        measures = (measures,)
    measures = tuple(measures)
    if not measures:
        raise ValueError(f"`measures` must name at least one measure. Received: measures={measures!r}")
    for m in measures:
        _utils.check_choice("measures", m, MEASURES)
    return measures


_MEASURE_FUNCTIONS = {
    "effective_rank": effective_rank,
    "alpha_req": alpha_req,
    "participation_ratio": participation_ratio,
    "collapsed_dimensions": collapsed_dimensions,
    "lidar": lidar,
}


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class CollapseMeasure(keras.metrics.Metric):
    """A collapse measure of ``y_pred`` (the embeddings of each batch) as a Keras metric.

    ``y_true`` is ignored.  Each batch's ``y_pred`` is measured on its own (the measures are
    not additive over batches); ``result()`` is the mean over the batches since the last
    reset (``average=True``, what an epoch's log shows) or the last batch's value
    (``average=False``, what ``CollapseMonitor(every_steps=...)`` and a per-batch
    TensorBoard want).  For ``"lidar"``, ``y_pred`` has shape ``(n, q, d)`` (a model whose
    output stacks the views).

    Args:
        measure: one of :data:`MEASURES`.
        average: mean over batches (True) or the last batch (False).
        name: metric name (default: ``measure``).
        dtype: metric dtype.
        **kwargs: keyword arguments of the measure function (``epsilon``, ``threshold``, ...).

    Example:
        >>> import numpy as np
        >>> m = CollapseMeasure("participation_ratio")
        >>> m.update_state(None, np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        >>> round(float(m.result()), 4)
        2.0
    """

    def __init__(self, measure="effective_rank", average=True, name=None, dtype=None,
                 **kwargs):
        _utils.check_choice("measure", measure, MEASURES)
        super().__init__(name=name or measure, dtype=dtype)
        self.measure = measure
        self.average = _utils.check_bool("average", average)
        self.measure_kwargs = dict(kwargs)
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")
        self.last = self.add_variable((), initializer="zeros", name="last")

    def update_state(self, y_true, y_pred, sample_weight=None):
        value = _MEASURE_FUNCTIONS[self.measure](y_pred, **self.measure_kwargs)
        value = ops.cast(value, self.dtype)
        self.total.assign(self.total + value)
        self.count.assign(self.count + 1.0)
        self.last.assign(value)

    def result(self):
        if not self.average:
            return ops.convert_to_tensor(self.last)
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        for v in (self.total, self.count, self.last):
            v.assign(ops.zeros((), dtype=v.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(measure=self.measure, average=self.average, **self.measure_kwargs)
        return config


class _OneMeasure(CollapseMeasure):
    MEASURE = None

    def __init__(self, average=True, name=None, dtype=None, **kwargs):
        kwargs.pop("measure", None)  # present in get_config()
        super().__init__(self.MEASURE, average=average, name=name, dtype=dtype, **kwargs)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class EffectiveRank(_OneMeasure):
    """RankMe (:func:`effective_rank`) of each batch's ``y_pred``: a :class:`CollapseMeasure`."""

    MEASURE = "effective_rank"


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class AlphaReQ(_OneMeasure):
    """alpha-ReQ (:func:`alpha_req`) of each batch's ``y_pred``: a :class:`CollapseMeasure`."""

    MEASURE = "alpha_req"


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class ParticipationRatio(_OneMeasure):
    """:func:`participation_ratio` of each batch's ``y_pred``: a :class:`CollapseMeasure`."""

    MEASURE = "participation_ratio"


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class CollapsedDimensions(_OneMeasure):
    """:func:`collapsed_dimensions` of each batch's ``y_pred``: a :class:`CollapseMeasure`."""

    MEASURE = "collapsed_dimensions"


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class LiDAR(_OneMeasure):
    """:func:`lidar` of each batch's ``y_pred``, shape ``(n, q, d)``: a :class:`CollapseMeasure`."""

    MEASURE = "lidar"
