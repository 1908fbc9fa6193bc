"""Reducers: how a loss turns its per-element terms into one scalar.

A metric-learning loss produces a tensor of terms (per pair, per triplet or per anchor)
and a boolean ``mask`` of the terms that exist; a reducer averages them. The choice
changes what a loss value -- and a regularizer weight next to it -- means: a
contrastive loss averaged over all ``b (b - 1) / 2`` pairs of a batch is diluted by the
many inactive negative pairs; averaged over the non-zero terms it is not (see the
"Reducers" section of the losses guide).

* :class:`MeanReducer` (``"mean"``): mean over the existing terms.
* :class:`AvgNonZeroReducer` (``"mean_nonzero"``, PML's ``AvgNonZeroReducer``): mean over
  the existing terms that are > 0 (the "batch all" triplet convention).
* :class:`SumReducer` (``"sum"``): sum of the existing terms.
* :class:`PerAnchorMeanReducer` (``"per_anchor_mean"``): mean of each anchor's (row's)
  terms, then the mean over the anchors that have at least one term.

Every reducer returns 0 (with zero gradients) when no term exists. A user-defined
reducer is a subclass with ``__call__(losses, mask)``.

Example:

>>> import numpy as np
>>> from keras_featreg import reducers
>>> losses = np.array([[0.0, 2.0], [4.0, 0.0]])
>>> mask = np.array([[True, True], [True, False]])
>>> [float(reducers.get(name)(losses, mask)) for name in ("mean", "mean_nonzero", "sum")]
[2.0, 3.0, 6.0]
>>> float(reducers.PerAnchorMeanReducer()(losses, mask))  # (1 + 4) / 2
2.5
"""

import keras
from keras import ops

from keras_featreg import _parts, _utils
from keras_featreg.ops.masked import masked_mean


__all__ = ["AvgNonZeroReducer", "MeanReducer", "PerAnchorMeanReducer", "Reducer", "SumReducer",
           "get"]


def _weights(losses, mask):
    losses = ops.convert_to_tensor(losses)
    if mask is None:
        return losses, ops.ones_like(losses)
    weights = ops.cast(mask, losses.dtype) * ops.ones_like(losses)
    return losses, weights


class Reducer(_parts.Part):
    """Base class: ``reducer(losses, mask=None) -> scalar``.

    `losses` has any shape whose first axis is the anchor (batch row); `mask` is a
    boolean tensor broadcastable to it (None: every term exists). Masked-out terms
    must not influence the value or the gradient.
    """

    name = None

    def __call__(self, losses, mask=None):
        raise NotImplementedError

    def from_sums(self, total, num_terms, num_active):
        """The reduction from aggregated ``sum of terms``, ``#terms`` and ``#terms > 0``.

        Used by losses that never materialize their terms (the sorted batch-all triplet
        loss). Reducers that need the individual terms raise ``ValueError``.
        """
        raise ValueError(
            f"{type(self).__name__} needs the individual terms; this loss only provides "
            "their sum and counts. Use reducer='mean', 'mean_nonzero' or 'sum'."
        )



@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class MeanReducer(Reducer):
    """Mean over the existing terms: ``sum(losses * mask) / max(sum(mask), 1)``."""

    name = "mean"

    def __call__(self, losses, mask=None):
        return masked_mean(losses, True if mask is None else mask)

    def from_sums(self, total, num_terms, num_active):
        return total / ops.maximum(num_terms, 1.0)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class AvgNonZeroReducer(Reducer):
    """Mean over the existing terms that are > 0 (pytorch-metric-learning's AvgNonZeroReducer)."""

    name = "mean_nonzero"

    def __call__(self, losses, mask=None):
        losses = ops.convert_to_tensor(losses)
        active = ops.greater(losses, 0.0)
        return MeanReducer()(losses, active if mask is None else ops.logical_and(mask, active))

    def from_sums(self, total, num_terms, num_active):
        return total / ops.maximum(num_active, 1.0)


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class SumReducer(Reducer):
    """Sum of the existing terms."""

    name = "sum"

    def __call__(self, losses, mask=None):
        losses, weights = _weights(losses, mask)
        return ops.sum(losses * weights)

    def from_sums(self, total, num_terms, num_active):
        return total


@keras.saving.register_keras_serializable(package=_utils.PACKAGE)
class PerAnchorMeanReducer(Reducer):
    """Mean of each anchor's terms, then mean over anchors that have a term.

    The first axis of `losses` is the anchor; an anchor with no existing term is left
    out of the outer mean.
    """

    name = "per_anchor_mean"

    def __call__(self, losses, mask=None):
        losses, weights = _weights(losses, mask)
        if len(losses.shape) < 2:
            return MeanReducer()(losses, mask)
        axes = tuple(range(1, len(losses.shape)))
        per_anchor_count = ops.sum(weights, axis=axes)
        per_anchor = ops.sum(losses * weights, axis=axes) / ops.maximum(per_anchor_count, 1.0)
        has_terms = ops.cast(ops.greater(per_anchor_count, 0.0), losses.dtype)
        return ops.sum(per_anchor * has_terms) / ops.maximum(ops.sum(has_terms), 1.0)


_BY_NAME = {cls.name: cls for cls in (MeanReducer, AvgNonZeroReducer, SumReducer,
                                      PerAnchorMeanReducer)}
NAMES = tuple(_BY_NAME)


def get(identifier, arg="reducer"):
    """A :class:`Reducer` from a name (``"mean"``, ``"mean_nonzero"``, ``"sum"``,
    ``"per_anchor_mean"``), an instance, a serialized config or None (returns None)."""
    return _parts.lookup(identifier, Reducer, _BY_NAME, arg)


def name_of(reducer):
    """The name of a built-in reducer (for configs), else the object."""
    return _parts.name_of(reducer, _BY_NAME)
