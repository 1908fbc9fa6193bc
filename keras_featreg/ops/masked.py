"""Masked reductions: min, max, mean and log-sum-exp over the True entries of a mask.

The reductions every loss and miner needs over pair masks, in ``keras.ops``. An empty
selection never produces NaN or infinity, in values or gradients: it returns 0 (and says
so where that matters), and the masked-out entries get zero gradient even where they
hold ``inf``.
"""

from keras import ops


def masked_min(x, mask, axis=-1):
    """Minimum of `x` over the True entries of `mask` along `axis`.

    Returns:
        ``(values, has_any)``: `values` is 0 where the selection is empty; `has_any`
        says whether it was. Gradients flow only to the selected minimum (split evenly
        between exact ties, as ``ops.min``), never NaN.
    """
    x = ops.convert_to_tensor(x)
    inf = ops.cast(float("inf"), x.dtype)
    filled = ops.where(mask, x, inf)
    values = ops.min(filled, axis=axis)
    has_any = ops.any(ops.logical_and(mask, ops.ones_like(filled, dtype="bool")), axis=axis)
    return ops.where(has_any, values, ops.zeros_like(values)), has_any


def masked_max(x, mask, axis=-1):
    """Maximum of `x` over the True entries of `mask` along `axis`.

    Returns:
        ``(values, has_any)``, `values` 0 where the selection is empty (see
        :func:`masked_min`).
    """
    x = ops.convert_to_tensor(x)
    inf = ops.cast(float("inf"), x.dtype)
    filled = ops.where(mask, x, -inf)
    values = ops.max(filled, axis=axis)
    has_any = ops.any(ops.logical_and(mask, ops.ones_like(filled, dtype="bool")), axis=axis)
    return ops.where(has_any, values, ops.zeros_like(values)), has_any


def masked_logsumexp(x, mask, axis=-1, include_zero=False):
    """``log(sum_{mask} exp(x))`` along `axis`, stable, with finite gradients.

    Args:
        x: float tensor.
        mask: boolean tensor broadcastable to `x`.
        axis: reduction axis.
        include_zero: if True, adds an implicit extra term ``exp(0) = 1`` inside the sum,
            i.e. computes ``log(1 + sum exp(x))``; the result is then >= 0 and defined
            for empty selections (0).

    Returns:
        The reduction; 0 where the selection is empty (and `include_zero` is False).
    """
    x = ops.convert_to_tensor(x)
    masked = ops.where(mask, x, ops.cast(float("-inf"), x.dtype))
    shift = ops.max(masked, axis=axis, keepdims=True)
    if include_zero:
        shift = ops.maximum(shift, 0.0)
    shift = ops.where(ops.isfinite(shift), shift, ops.zeros_like(shift))
    shift = ops.stop_gradient(shift)
    # Mask *before* exp: exp of an unselected entry could overflow, and inf * 0 = NaN in
    # the backward pass of a where() applied afterwards.
    terms = ops.where(mask, ops.exp(ops.where(mask, x - shift, ops.zeros_like(x))), 0.0)
    total = ops.sum(terms, axis=axis, keepdims=True)
    if include_zero:
        # log(exp(-shift) + total) + shift, accurate when the sum is tiny next to 1.
        return ops.squeeze(ops.log1p(ops.expm1(-shift) + total) + shift, axis=axis)
    nonempty = total > 0
    total = ops.where(nonempty, total, ops.ones_like(total))
    out = ops.where(nonempty, ops.log(total) + shift, ops.zeros_like(total))
    return ops.squeeze(out, axis=axis)


def masked_mean(values, mask):
    """Mean of `values` over the True entries of `mask` (broadcast), 0 when there are none.

    Example:

    >>> import numpy as np
    >>> from keras_featreg.ops.masked import masked_mean
    >>> float(masked_mean(np.array([1.0, 2.0, 6.0]), np.array([True, False, True])))
    3.5
    """
    values = ops.convert_to_tensor(values)
    weights = ops.cast(mask, values.dtype) * ops.ones_like(values)
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)
