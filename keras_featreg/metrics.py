"""Spectrum and collapse metrics of embedding batches.

All values come from :mod:`keras_featreg.ops` (the same primitives the regularizers use).
An embedding batch holding a NaN or an infinity gives NaN values (every entry of a vector,
every value of a dict but the shape), never finite ones.

The callback that logs them each epoch is :class:`keras_featreg.callbacks.SpectrumMonitor`.
"""

import math

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
